"""`vitdeploy export` and `verify`: the .onnx file and its proof."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vitdeploy.cli.app import app, console, finish, handle_errors, print_json
from vitdeploy.cli.options import BatchSizes, JsonFlag, RuntimeList
from vitdeploy.core.config import parse_batch_sizes
from vitdeploy.files.variants import precision_help
from vitdeploy.requests import ExportRequest, VerifyRequest


@app.command()
@handle_errors
def export(
    bundle: Annotated[
        Optional[Path], typer.Argument(help="Model bundle folder. Default: the latest bundle under models/.")
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset; an unsupported one is refused, naming the range.")] = ExportRequest.opset,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output file. Default: BUNDLE/model.onnx.")] = None,
    verify: Annotated[bool, typer.Option(help="Check parity with PyTorch before the file is moved into place.")] = ExportRequest.verify,
    optimize: Annotated[
        bool, typer.Option(help="Also write MODEL.fp32-opt.onnx: ONNX Runtime's transformer fusions applied offline "
                           "(Attention, SkipLayerNormalization, BiasGelu), with the fusion counts reported.")
    ] = ExportRequest.optimize,
    image_input: Annotated[
        bool, typer.Option(help="Also write MODEL.image.onnx: input the decoded image itself (uint8 [batch, height, "
                           "width, channels], or channels first with --image-layout nchw; any size, 1-4 channels), "
                           "THE preprocessing inside the graph, for "
                           "clients that cannot reproduce Pillow (Triton, KServe, Java, C++, phones); gated on "
                           "held-out images at many sizes.")
    ] = ExportRequest.image_input,
    image_layout: Annotated[
        str, typer.Option(help="--image-input's input: nhwc (uint8 [batch, height, width, channels], as Pillow, "
                          "OpenCV and sharp decode) or nchw (uint8 [batch, channels, height, width], planar).")
    ] = ExportRequest.image_layout,
    precision: Annotated[
        Optional[list[str]],
        typer.Option(help=precision_help()),
    ] = None,
    max_accuracy_drop: Annotated[
        float, typer.Option(help="Accuracy gate: percentage points of held-out accuracy a variant may lose against "
                            "PyTorch fp32 (it must also agree on top-1 for at least 99% of the images).")
    ] = ExportRequest.max_accuracy_drop,
    int8_method: Annotated[
        str, typer.Option(help="static: QDQ, per-channel weights, activation ranges calibrated on the bundle's "
                          "training images (faster here, batch-independent); dynamic: activations scaled per batch.")
    ] = ExportRequest.int8_method,
    exporter: Annotated[
        Optional[str], typer.Option(help="torchscript (default; falls back to dynamo where torch no longer has it) "
                                    "or dynamo. Both give the same file contract, parity check and per-block report.")
    ] = None,
    tome_r: Annotated[
        Optional[int], typer.Option(help="Token merging variants (--precision tome, tome-int8): tokens merged per "
                                    "block. Default: searched, the fastest setting that keeps the answers.")
    ] = ExportRequest.tome_r,
    json_output: JsonFlag = False,
) -> None:
    """Export a bundle to one self-describing ONNX file (dynamic batch), parity-checked before it is written.

    With --optimize / --precision, faster variants are written beside it (model.onnx -> model.fp32-opt.onnx,
    model.fp16.onnx, model.int8.onnx), each only after the accuracy gate on the bundle's held-out images passed;
    each file records its precision, fusions and measured accuracy, so predict, verify and bench run it alone.

    Exit codes: 0 exported (and parity held, and every variant passed the gate); 2 bad input (no bundle,
    unsupported opset or precision); 3 parity failed (nothing written), or a variant failed the accuracy gate
    (that variant not written; the fp32 file and the variants that passed were).

    --precision auto builds every variant this machine computes natively and can gate, and names the others with
    what would build them (vitdeploy doctor lists them too).

    Example: vitdeploy export models/digits/best --optimize --precision fp16,int8,ov-bf16,ov-int8
    Example: vitdeploy export models/digits/best --precision auto
    """
    import vitdeploy
    from vitdeploy.cli.tables import parity_tables, print_table, variants_table
    from vitdeploy.errors import ParityError

    request = ExportRequest(bundle=bundle, out=out, opset=opset, verify=verify, optimize=optimize,
                            image_input=image_input, image_layout=image_layout,
                            precision=tuple(precision or ExportRequest.precision),
                            max_accuracy_drop=max_accuracy_drop, int8_method=int8_method, exporter=exporter,
                            tome_r=tome_r)
    try:
        result = vitdeploy.export(request)
    except ParityError as e:  # nothing was written: an error, with the report that shows where
        for table in parity_tables(e.report):
            print_table(console, table)
        if json_output:
            print_json({"error": str(e), "parity": e.report.to_dict()})
        raise
    size = f"{result.size_bytes / 1e6:.2f} MB"
    if result.external_data:
        size += f", weights in {result.external_data.name}"
    console.print(
        f"exported {result.path} ({result.exporter} exporter, opset {result.opset}, {result.num_nodes} nodes, {size}) "
        f"in {result.export_seconds:.1f} s",
        highlight=False, soft_wrap=True,
    )
    if result.parity:
        s = result.parity.summary()
        console.print(
            f"parity ok on {', '.join(s['providers'])} at batch sizes {s['batch_sizes']}: max |diff| "
            f"{s['max_abs']:.2e}, top-1 agreement {s['top1_agreement']:.0%} ({result.verify_seconds:.1f} s)",
            highlight=False, soft_wrap=True,
        )
    if result.variants:
        print_table(console, variants_table(result.variants))
    for name, why in result.skipped.items():
        console.print(f"not built here: {name}: {why}", highlight=False, soft_wrap=True)
    for line in result.auto_not_written():
        console.print(f"--precision auto: {line}", highlight=False, soft_wrap=True)
    if json_output:
        print_json(result.to_dict())
    finish(result)


@app.command()
@handle_errors
def verify(
    model: Annotated[
        Optional[Path], typer.Argument(help="The .onnx file. Default: model.onnx in the latest bundle under models/.")
    ] = None,
    bundle: Annotated[
        Optional[Path], typer.Option(help="The bundle it came from. Default: the file's folder, else the one "
                                     "recorded at export.")
    ] = None,
    images: Annotated[
        Optional[Path], typer.Option(help="Real images to compare on. Default: the bundle's held-out split.")
    ] = None,
    batch_sizes: BatchSizes = ",".join(map(str, VerifyRequest.batch_sizes)),
    atol: Annotated[Optional[float], typer.Option(help="Max absolute logit difference (fp32 default 1e-4).")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Relative tolerance added to atol (fp32 default 0).")] = None,
    runtime: RuntimeList = None,
    json_output: JsonFlag = False,
) -> None:
    """Compare PyTorch with every runtime (ONNX Runtime on every provider that really works, OpenVINO, the ONNX
    reference) on real and random inputs at several batch sizes, and the runtimes with each other on the same file;
    when parity fails, name the first block whose output diverges.

    Exit codes: 0 every check passed; 2 bad input (missing bundle or file, not ONNX, truncated, file and bundle
    do not match, external data outside the model's folder, a runtime named that is not installed or usable, an
    op a runtime cannot run); 3 a parity check failed.

    Example: vitdeploy verify models/digits/best/model.onnx --runtime ort,openvino,reference --batch-sizes 1,7,32
    """
    import vitdeploy
    from vitdeploy.cli.tables import parity_tables, print_table
    from vitdeploy.runtimes import parse_runtimes

    report = vitdeploy.verify(VerifyRequest(model, bundle=bundle, images=images, atol=atol, rtol=rtol,
                                            batch_sizes=parse_batch_sizes(batch_sizes), runtime=parse_runtimes(runtime)))

    n = report.inputs
    console.print(f"inputs: {n['real']} real images ({n['real_source']}) + {n['random']} random", highlight=False)
    for table in parity_tables(report):
        print_table(console, table)
    if report.accuracy:
        scores = ", ".join(f"{name} {value:.1%}" for name, value in report.accuracy.items())
        console.print(f"top-1 accuracy on the {n['real']} labelled held-out images: {scores}", highlight=False)
    if report.passed:
        console.print(f"[green]parity ok[/] on {', '.join(report.providers)}", highlight=False)
    if json_output:
        print_json(report.to_dict())
    finish(report)
