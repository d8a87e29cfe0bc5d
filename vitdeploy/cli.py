"""The `vitdeploy` command line: a thin Typer layer over the Python API.

Each command body parses options, calls one library function and prints its result. Torch-side modules are
imported inside the commands that need them, so `vitdeploy --help` and `vitdeploy predict` start fast and
work without torch.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from vitdeploy import strict_json
from vitdeploy.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, ConfigError, VitDeployError
from vitdeploy.config import parse_batch_sizes
from vitdeploy.extras import require

app = typer.Typer(
    name="vitdeploy",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Human-facing output goes to stderr so that --json leaves stdout clean for scripts.
console = Console(stderr=True)


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one clear line and their documented exit code (see errors.py)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except VitDeployError as e:
            # escape(): messages quote shapes like [batch, 3, H, W], which Rich would eat as markup.
            console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            # `vitdeploy predict ... | head`: the reader left, which is not an error. Point stdout at devnull so
            # the interpreter's final flush does not raise again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None

    return wrapper


def _print_version(value: bool) -> None:
    if value:
        from vitdeploy import __version__

        typer.echo(f"vitdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train a Vision Transformer, export it to ONNX with verified parity, run it and benchmark it.

    Exit codes: 0 ok, 1 internal error, 2 bad input, 3 a check failed, 4 some inputs failed, 130 interrupted.
    """


def print_json(obj: Any) -> None:
    sys.stdout.write(strict_json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_note(line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True)


@app.command()
@handle_errors
def train(
    preset: Annotated[Optional[str], typer.Option(help="Model preset: digits (default), vit-ti16, vit-s16, vit-b16.")] = None,
    data: Annotated[
        Optional[Path],
        typer.Option(help="Image folder, one subfolder per class (train/ and val/ inside when split). "
                     "Default: the embedded scikit-learn digits."),
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder; best/ and last/ bundles go inside. "
                                                "Default: models/<preset or data folder name>.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (default: the preset's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Global batch size (default: the preset's).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the preset's).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for init, split, order and augmentation.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Override the preset's input size (pixels).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (cuda fails clearly when not usable).")] = "auto",
    resume: Annotated[Optional[Path], typer.Option(help="Continue a run from its last/ bundle (or any bundle).")] = None,
    init: Annotated[
        Optional[Path], typer.Option(help="Fine-tune from this bundle's weights (e.g. from vitdeploy import): new head "
                                     "when the data's classes differ, position embeddings interpolated for another "
                                     "--image-size, fine-tuning defaults (fewer epochs, lower learning rate).")
    ] = None,
    stop_after_steps: Annotated[
        Optional[int], typer.Option(help="Stop early after this many optimizer steps, as Ctrl-C would "
                                    "(the schedule still spans all epochs; --resume continues).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Threads decoding images of a --data folder.")] = 2,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")] = False,
) -> None:
    """Train a ViT and write best/ and last/ model bundles.

    Example: vitdeploy train --epochs 30 --out models/digits
    Fine-tuning: vitdeploy train --init models/vit_tiny_patch16_224 --data photos/
    """
    import vitdeploy

    result = vitdeploy.train(
        preset, data=data, out=out, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, image_size=image_size,
        device=device, resume=resume, init=init, stop_after_steps=stop_after_steps, workers=workers,
        console=console,
    )
    if json_output and result.main_process:
        print_json(result.to_dict())
    if result.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)


@app.command()
@handle_errors
def samples(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the PNG files into.")] = Path("samples"),
    bundle: Annotated[Optional[Path], typer.Option(help="Bundle whose held-out split to use (default: latest).")] = None,
    count: Annotated[int, typer.Option(help="How many held-out images to write.")] = 8,
) -> None:
    """Write held-out images of a bundle's dataset as PNG files, named with their true label.

    Example: vitdeploy samples samples/ && vitdeploy predict samples/*.png
    """
    require("train", "vitdeploy samples")
    from vitdeploy.bundle import find_latest_bundle, read_bundle_info
    from vitdeploy.data import write_heldout_samples

    info = read_bundle_info(bundle or find_latest_bundle())
    written = write_heldout_samples(info.dataset, info.labels, out_dir, count)
    console.print(f"wrote {len(written)} held-out images to {out_dir}/ (never seen in training)")


@app.command("import")
@handle_errors
def import_(
    source: Annotated[
        Path, typer.Argument(help="A Hugging Face model folder (config.json + model.safetensors or pytorch_model.bin), "
                             "or a timm state dict (.safetensors, .pth, .bin).")
    ],
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Bundle folder to write. Default: models/<its name>.")
    ] = None,
    timm_model: Annotated[
        Optional[str], typer.Option(help="The timm model name of a state dict (e.g. vit_tiny_patch16_224) when "
                                    "timm's config.json is not beside it.")
    ] = None,
    labels: Annotated[
        Optional[Path], typer.Option(help="Class names, one per line (default: the checkpoint's own, else class_N).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")] = False,
) -> None:
    """Import a timm or Hugging Face ViT checkpoint you already have as a bundle (no download, no timm or
    transformers needed); export, verify, predict, bench and train --init then work on it.

    Refused, naming what was found: what is not a plain ViT (register tokens, layer scale, q/k norm, average or
    attention pooling, fc_norm, distillation tokens, a non-square patch grid, relative position bias), tensors
    missing, extra or misshapen, and pickles holding anything but tensors. Exit codes: 0 imported; 2 bad input.

    Example: vitdeploy import vit_tiny.safetensors --timm-model vit_tiny_patch16_224 -o models/vit-ti
    """
    import vitdeploy

    result = vitdeploy.import_model(source, out, timm_model=timm_model, labels=labels, notify=print_note)
    spec = result.preprocess
    console.print(
        f"imported {result.format} {result.architecture}: {result.parameters / 1e6:.1f}M parameters, "
        f"{len(result.labels)} classes, {spec.image_size} px ({spec.resize_mode} resize to {spec.resize_size}, "
        f"crop fraction {spec.crop_fraction:.3g}, {spec.interpolation}, mean {spec.mean}, std {spec.std}) "
        f"-> {result.bundle}",
        highlight=False, soft_wrap=True,
    )
    if json_output:
        print_json(result.to_dict())


# Commands of the later stages (export, verify, predict, bench, triton, serve) are registered below this line.


@app.command()
@handle_errors
def predict(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns (quote globs).")],
    model: Annotated[
        Optional[Path],
        typer.Option(help="The .onnx to run, or a folder to search. Default: the most recently modified "
                     "*.onnx anywhere under models/, skipping hidden folders and precision variants "
                     "(model.int8.onnx beside model.onnx)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per inference call.")] = 32,
    workers: Annotated[int, typer.Option(help="Threads decoding images while the model runs.")] = 2,
    runtime: Annotated[
        Optional[str], typer.Option(help="ort | openvino | reference. Default: the runtime the file was made for "
                                    "(an OpenVINO variant records it), else ort.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto (ort: CUDA only if a session really gets it; openvino: CPU) | cpu "
                                        "| cuda | tensorrt (ort) | gpu | npu (openvino).")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="The runtime's threads (default: one per core).")] = None,
    top_k: Annotated[int, typer.Option(help="Best labels listed per image.")] = 5,
    output_format: Annotated[
        str, typer.Option("--format", help="table | json | jsonl | csv (rows are written as each batch ends).")
    ] = "table",
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Write rows to this file instead of stdout.")
    ] = None,
    recursive: Annotated[bool, typer.Option(help="Search folders recursively; lets globs use **.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
) -> None:
    """Classify images with an exported model on ONNX Runtime (no torch needed), OpenVINO or the ONNX reference.

    Every input gets one row: its top-k labels, or an error (path, error type, message) for a file that could not
    be decoded, with the runtime and provider that ran it. Exit code 0: all succeeded; 4: some inputs failed; 2: no
    input matched, or the model, the runtime, its device or the output file is unusable; 130: interrupted
    (finished rows are kept).

    Example: vitdeploy predict samples/ --model models/digits/best/model.onnx --format csv -o predictions.csv
    """
    import vitdeploy
    from vitdeploy.errors import EXIT_PARTIAL

    if json_output:
        if output_format not in ("table", "json"):
            raise ConfigError(f"--json means --format json; it contradicts --format {output_format}")
        output_format = "json"
    summary = vitdeploy.predict(
        inputs, model=model, batch_size=batch_size, workers=workers, runtime=runtime, device=device, threads=threads,
        top_k=top_k,
        output_format=output_format, output=output, recursive=recursive, progress=output_format != "json",
        log=print_note,
    )
    if summary.rows:
        print_prediction_table(summary.rows)
    console.print(
        f"{summary.images_ok} images ok, {summary.images_failed} failed, {summary.images_per_second:.1f} images/s "
        f"on {summary.runtime.get('runtime', 'ort')} {summary.provider} ({summary.model})"
        + (f"; rows in {summary.output}" if summary.output else ""),
        highlight=False, soft_wrap=True,
    )
    if summary.interrupted:
        console.print("[yellow]interrupted[/]: every finished row was written")
        raise typer.Exit(EXIT_INTERRUPTED)
    if summary.images_failed:
        raise typer.Exit(EXIT_PARTIAL)


def print_prediction_table(rows: list[dict[str, Any]]) -> None:
    from rich.table import Column, Table

    # Paths fold onto several lines rather than being cut short: a row must name its file.
    table = Table(Column("path", overflow="fold"), "label", "probability", "top-k", show_edge=False)
    for row in rows:
        if row["ok"]:
            others = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in row["top_k"][1:])
            table.add_row(row["path"], row["label"], f"{row['probability']:.3f}", others)
        else:
            table.add_row(row["path"], f"[red]{row['error']}[/]", "", row["message"])
    Console().print(table)


@app.command()
@handle_errors
def export(
    bundle: Annotated[
        Optional[Path], typer.Argument(help="Model bundle folder. Default: the latest bundle under models/.")
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset; an unsupported one is refused, naming the range.")] = 17,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output file. Default: BUNDLE/model.onnx.")] = None,
    verify: Annotated[bool, typer.Option(help="Check parity with PyTorch before the file is moved into place.")] = True,
    optimize: Annotated[
        bool, typer.Option(help="Also write MODEL.fp32-opt.onnx: ONNX Runtime's transformer fusions applied offline "
                           "(Attention, SkipLayerNormalization, BiasGelu), with the fusion counts reported.")
    ] = False,
    precision: Annotated[
        Optional[list[str]],
        typer.Option(help="fp32 (default), fp16, int8, ov-bf16, ov-int8; several as fp16,int8 or repeated. fp16 "
                     "(ONNX Runtime on GPUs, built from the fused graph) goes to MODEL.fp16.onnx, int8 (ONNX Runtime "
                     "on CPUs) to MODEL.int8.onnx; ov-bf16 (OpenVINO in bf16, on CPUs with AVX512_BF16 or AMX) to "
                     "MODEL.ov-bf16.onnx and ov-int8 (NNCF INT8 for OpenVINO) to MODEL.ov-int8.onnx: each judged "
                     "on the runtime it is for."),
    ] = None,
    max_accuracy_drop: Annotated[
        float, typer.Option(help="Accuracy gate: percentage points of held-out accuracy a variant may lose against "
                            "PyTorch fp32 (it must also agree on top-1 for at least 99% of the images).")
    ] = 0.5,
    int8_method: Annotated[
        str, typer.Option(help="static: QDQ, per-channel weights, activation ranges calibrated on the bundle's "
                          "training images (faster here, batch-independent); dynamic: activations scaled per batch.")
    ] = "static",
    exporter: Annotated[
        Optional[str], typer.Option(help="torchscript (default; falls back to dynamo where torch no longer has it) "
                                    "or dynamo. Both give the same file contract, parity check and per-block report.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")] = False,
) -> None:
    """Export a bundle to one self-describing ONNX file (dynamic batch), parity-checked before it is written.

    With --optimize / --precision, faster variants are written beside it (model.onnx -> model.fp32-opt.onnx,
    model.fp16.onnx, model.int8.onnx), each only after the accuracy gate on the bundle's held-out images passed;
    each file records its precision, fusions and measured accuracy, so predict, verify and bench run it alone.

    Exit codes: 0 exported (and parity held, and every variant passed the gate); 2 bad input (no bundle,
    unsupported opset or precision); 3 parity failed (nothing written), or a variant failed the accuracy gate
    (that variant not written; the fp32 file and the variants that passed were).

    Example: vitdeploy export models/digits/best --optimize --precision fp16,int8,ov-bf16,ov-int8
    """
    import vitdeploy
    from vitdeploy.parity import ParityError
    from vitdeploy.precision import AccuracyGateFailed, variants_table
    from vitdeploy.verification import parity_tables

    try:
        result = vitdeploy.export(bundle, out, opset=opset, verify=verify, optimize=optimize,
                                  precision=precision or ["fp32"], max_accuracy_drop=max_accuracy_drop,
                                  int8_method=int8_method, exporter=exporter, notify=print_note)
    except ParityError as e:
        for table in parity_tables(e.report):
            console.print(table)
        if json_output:
            print_json({"error": str(e), "parity": e.report.to_dict()})
        raise
    except AccuracyGateFailed as e:
        console.print(variants_table(e.results))
        if json_output:
            print_json({"error": str(e), **(e.export.to_dict() if e.export else {})})
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
        console.print(variants_table(result.variants))
    if json_output:
        print_json(result.to_dict())


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
    batch_sizes: Annotated[
        str, typer.Option(help="Batch sizes to run, comma-separated (1 is always added).")
    ] = "1,7,32",
    atol: Annotated[Optional[float], typer.Option(help="Max absolute logit difference (fp32 default 1e-4).")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Relative tolerance added to atol (fp32 default 0).")] = None,
    runtime: Annotated[
        Optional[str], typer.Option(help="Runtimes, comma-separated: ort, openvino, reference. Default: every one "
                                    "installed and usable here (the slow reference only on small models).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the full report as JSON on stdout.")] = False,
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
    from vitdeploy.errors import EXIT_CHECK_FAILED
    from vitdeploy.verification import parity_tables

    report = vitdeploy.verify(model, bundle=bundle, images=images, batch_sizes=parse_batch_sizes(batch_sizes),
                              atol=atol, rtol=rtol, runtime=runtime, notify=print_note)

    n = report.inputs
    console.print(f"inputs: {n['real']} real images ({n['real_source']}) + {n['random']} random", highlight=False)
    for table in parity_tables(report):
        console.print(table)
    if report.accuracy:
        scores = ", ".join(f"{name} {value:.1%}" for name, value in report.accuracy.items())
        console.print(f"top-1 accuracy on the {n['real']} labelled held-out images: {scores}", highlight=False)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    for line in report.failures():
        console.print(f"[red]FAIL[/] {line}", highlight=False, soft_wrap=True)
    if report.passed:
        console.print(f"[green]parity ok[/] on {', '.join(report.providers)}", highlight=False)
    if json_output:
        print_json(report.to_dict())
    if not report.passed:
        raise typer.Exit(EXIT_CHECK_FAILED)

@app.command()
@handle_errors
def bench(
    model: Annotated[
        Optional[Path], typer.Argument(help="The .onnx file. Default: the newest .onnx under models/.")
    ] = None,
    bundle: Annotated[
        Optional[Path], typer.Option(help="Its bundle, for the PyTorch variants. Default: the one recorded at export.")
    ] = None,
    preset: Annotated[
        Optional[str], typer.Option(help="Benchmark a preset (vit-ti16, vit-s16, vit-b16...) with random weights "
                                    "instead of a file, to compare with published figures.")
    ] = None,
    variants: Annotated[
        Optional[str], typer.Option(help="Comma-separated: torch, ort-cpu, ort-cpu-fused, ort-cpu-int8, torch-cuda, "
                                    "ort-cuda, ort-cuda-graph, ort-cuda-fp16, ort-tensorrt, ov-cpu, ov-cpu-bf16, "
                                    "ov-cpu-int8. Default: all that can run here.")
    ] = None,
    runtimes: Annotated[
        Optional[str], typer.Option(help="Only these runtimes' variants, comma-separated: ort, openvino (PyTorch "
                                    "eager stays as the baseline). Default: every runtime.")
    ] = None,
    batch_sizes: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,8,32",
    warmup_iters: Annotated[int, typer.Option(help="Warm-up runs per variant and batch size (at least).")] = 3,
    warmup_seconds: Annotated[float, typer.Option(help="Warm-up time per variant and batch size (at least).")] = 1.0,
    min_iters: Annotated[int, typer.Option(help="Timed runs per variant and batch size (at least).")] = 10,
    min_seconds: Annotated[float, typer.Option(help="Timed seconds per variant and batch size (at least).")] = 2.0,
    threads: Annotated[
        Optional[int], typer.Option(help="Threads for torch and ONNX Runtime alike. Default: one per CPU core.")
    ] = None,
    end_to_end: Annotated[
        Optional[list[str]], typer.Option(help="Images (files, folders, globs; repeatable) to time decode / "
                                          "preprocess / model from file to logits.")
    ] = None,
    p99_budget: Annotated[
        Optional[float], typer.Option(help="Recommend the largest batch size whose p99 latency (ms) meets this.")
    ] = None,
    baseline: Annotated[
        Optional[Path], typer.Option(help="An earlier --output JSON to compare median latencies with.")
    ] = None,
    max_regress: Annotated[
        float, typer.Option(help="With --baseline: exit 3 when a variant's p50 got slower by more than this %.")
    ] = 5.0,
    output: Annotated[Optional[Path], typer.Option(help="Save the JSON report to this file.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Save latency and throughput against batch size (PNG).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the JSON report on stdout.")] = False,
) -> None:
    """Benchmark PyTorch eager against ONNX Runtime and OpenVINO in every precision (and CUDA / TensorRT variants
    where they really work), interleaved, and name the fastest variant that passed its accuracy check.

    Times the files export wrote: model.onnx, and beside it model.fp32-opt.onnx, model.int8.onnx,
    model.fp16.onnx, model.ov-bf16.onnx and model.ov-int8.onnx when they exist (a missing one is skipped, naming
    the export command that makes it). Reports p50/p90/p99/mean/std latency, images/s, speed-up against eager and
    against ONNX Runtime fp32 in the same run, cold start, model FLOPs utilisation against this machine's peak at
    the variant's precision, each file's accuracy check from export, and per batch size the fastest variant whose
    check passed on its runtime (untested variants are never recommended).
    On a terminal, stderr shows the batch size and variants being measured and the time left (not with --json).

    Exit codes: 0 done; 2 bad input (no model, unknown variant, a variant requested that cannot run here: no
    CUDA, or its file missing); 3 a variant regressed past --max-regress against --baseline.

    Example: vitdeploy bench --preset vit-ti16 --batch-sizes 1,32 --output bench.json --plot bench.png
    """
    import vitdeploy
    from vitdeploy import benchmark as bench_module

    report = vitdeploy.bench(
        model, bundle=bundle, preset=preset, variants=variants, runtimes=runtimes,
        batch_sizes=parse_batch_sizes(batch_sizes),
        warmup_iters=warmup_iters, warmup_seconds=warmup_seconds, min_iters=min_iters, min_seconds=min_seconds,
        threads=threads, end_to_end=end_to_end, p99_budget=p99_budget, baseline=baseline, max_regress=max_regress,
        output=output, plot=plot, progress=not json_output, log=print_note,
    )
    console.print(bench_module.results_table(report))
    for line in bench_module.summary_lines(report):
        print_note(line)
    if json_output:
        print_json(report.to_dict())
    if report.regression is not None:
        bench_module.check_regressions(report.regression)


@app.command()
@handle_errors
def triton(
    model: Annotated[
        Optional[Path], typer.Argument(help="The .onnx to put in the repository. Default: the newest .onnx under models/.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Repository folder; the model goes to OUT/<name>/.")] = Path("triton"),
    name: Annotated[
        Optional[str], typer.Option(help="Model name in the repository and in URLs. Default: the file name "
                                    "without .onnx.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu | gpu: the instance_group kind.")] = "cpu",
    instances: Annotated[int, typer.Option(help="Model instances (per GPU with --device gpu).")] = 1,
    max_batch_size: Annotated[
        Optional[int], typer.Option(help="Largest batch Triton forms. Default: 32, or the --from-bench recommendation.")
    ] = None,
    max_queue_delay_ms: Annotated[
        Optional[float], typer.Option(help="How long a request may wait for a batch to fill. Default: 2 ms, or what "
                                      "the p99 budget of --from-bench leaves.")
    ] = None,
    preferred_batch_sizes: Annotated[
        Optional[str], typer.Option(help="Batch sizes Triton should aim for, comma-separated. Default: none, or the "
                                    "--from-bench recommendation.")
    ] = None,
    dynamic_batching: Annotated[bool, typer.Option(help="Write a dynamic_batching block.")] = True,
    from_bench: Annotated[
        Optional[Path], typer.Option(help="A `vitdeploy bench --p99-budget MS --output F.json` report: its "
                                     "recommended batch size (ort-cpu, or ort-cuda with --device gpu) sets the "
                                     "preferred and largest batch, the budget left after its p99 the queue delay.")
    ] = None,
    tensorrt: Annotated[
        Optional[str], typer.Option(help="fp32 | fp16: run through ONNX Runtime's TensorRT accelerator "
                                    "(--device gpu), one engine profile for batch 1..max, engines cached.")
    ] = None,
    cuda_graphs: Annotated[
        bool, typer.Option(help="Replay CUDA graphs (--device gpu). A graph holds one input shape, so this needs "
                           "--no-dynamic-batching and clients that always send the same batch size.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")] = False,
) -> None:
    """Write a Triton Inference Server model repository: OUT/<name>/config.pbtxt, 1/model.onnx, labels.txt, and
    OUT/README.md with the tritonserver and client commands and the preprocessing clients must apply.

    Needs only the core install. Refuses a model whose batch axis is fixed (Triton would refuse it at load) and a
    name that is not a plain directory name (exit code 2).

    Example: vitdeploy triton models/digits/best/model.onnx --out triton --name digits --device gpu --tensorrt fp16
    """
    import vitdeploy

    repo = vitdeploy.triton(
        model, out=out, name=name, device=device, instances=instances, max_batch_size=max_batch_size,
        max_queue_delay_ms=max_queue_delay_ms,
        preferred_batch_sizes=parse_batch_sizes(preferred_batch_sizes, "--preferred-batch-sizes")
        if preferred_batch_sizes else (),
        dynamic_batching=dynamic_batching, from_bench=from_bench, tensorrt=tensorrt, cuda_graphs=cuda_graphs,
    )
    for note in repo.notes:
        print_note(note)
    console.print(f"wrote Triton model {repo.name!r} to {repo.model_dir}/ (see {repo.root / 'README.md'})",
                  highlight=False, soft_wrap=True)
    if json_output:
        print_json(repo.to_dict())


@app.command()
@handle_errors
def explain(
    inputs: Annotated[
        Optional[list[str]], typer.Argument(help="Image files, folders or glob patterns (quote globs).")
    ] = None,
    bundle: Annotated[
        Optional[Path], typer.Option(help="Model bundle folder. Default: the latest bundle under models/.")
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Folder for the PNGs (default: explain/); with --guide, "
                                     "the PNG file (default: guide.png).")
    ] = None,
    method: Annotated[
        str, typer.Option(help="rollout: attention rollout through all blocks; cls: the last block's cls-token "
                          "attention, per head; grad-rollout: rollout weighted by the gradient of --class.")
    ] = "rollout",
    class_label: Annotated[
        Optional[str], typer.Option("--class", help="grad-rollout: the label to explain (default: the predicted one).")
    ] = None,
    top_k: Annotated[int, typer.Option(help="Best labels shown per image.")] = 5,
    recursive: Annotated[bool, typer.Option(help="Search folders recursively; lets globs use **.")] = False,
    guide: Annotated[
        bool, typer.Option("--guide", help="Instead: draw the ViT mechanism on this model (patches, embedding "
                           "filters, position embeddings, attention distance, rollout) into one PNG.")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout (each image's patch map as numbers).")
    ] = False,
) -> None:
    """Show what the model looks at: per image, one PNG with the input as the model saw it, the top-k labels and
    an attention heat map over its patches. With --guide, one PNG of the mechanism itself on this model.

    Needs matplotlib: pip install "vitdeploy\\[plot]". Exit codes: 0 all explained; 4 some inputs failed (one error
    row each); 2 bad input (no input matched, unknown --method or --class, no bundle, no matplotlib).

    Example: vitdeploy explain samples/*.png --method grad-rollout --class 3 -o explain/ && vitdeploy explain --guide
    """
    import vitdeploy
    from vitdeploy.errors import EXIT_PARTIAL

    result = vitdeploy.explain(
        inputs or [], bundle=bundle, out=out, method=method, class_label=class_label, top_k=top_k,
        recursive=recursive, guide=guide, log=lambda line: console.print(escape(line), highlight=False, soft_wrap=True),
    )
    if guide:
        console.print(f"wrote {result.path}: the mechanism on {result.bundle} ({result.seconds:.1f} s)", highlight=False)
        if json_output:
            print_json(result.to_dict())
        return
    console.print(
        f"{result.images_ok} images explained ({method}), {result.images_failed} failed, in {result.seconds:.1f} s; "
        f"PNGs in {result.out_dir}/", highlight=False, soft_wrap=True,
    )
    if json_output:
        print_json(result.to_dict())
    if result.images_failed:
        raise typer.Exit(EXIT_PARTIAL)


@app.command()
@handle_errors
def serve(
    model: Annotated[
        Optional[Path], typer.Argument(help="The .onnx to serve. Default: the newest .onnx under models/.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface; think first).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free one, printed at start).")] = 8000,
    runtime: Annotated[str, typer.Option(help="What runs the model: ort (ONNX Runtime), openvino, reference (slow).")] = "ort",
    device: Annotated[str, typer.Option(help="auto (CUDA only if a session really gets it) | cpu | cuda.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="ONNX Runtime intra-op threads (default: one per core).")] = None,
    name: Annotated[
        Optional[str], typer.Option(help="Model name in URLs (/v2/models/NAME). Default: the file name without .onnx, "
                                    "as `vitdeploy triton` names it.")
    ] = None,
    max_batch_size: Annotated[int, typer.Option(help="Most images per model call (and per request).")] = 32,
    max_queue_delay_ms: Annotated[
        float, typer.Option(help="How long the oldest waiting request may wait for a batch to fill.")
    ] = 2.0,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body (MiB); larger ones get 413.")] = 64.0,
    decode_threads: Annotated[int, typer.Option(help="Threads decoding uploaded images for /classify.")] = 2,
    top_k: Annotated[int, typer.Option(help="Labels /classify returns per image (?top_k= overrides).")] = 5,
) -> None:
    """Serve a model over HTTP with the Open Inference Protocol (v2: what Triton and KServe speak) and an image
    endpoint, batching concurrent requests dynamically.

    Endpoints: /v2/health/live, /v2/health/ready, /v2/models/NAME (metadata), /v2/models/NAME/ready,
    /v2/models/NAME/infer (FP32 tensors, JSON or binary), /v2/models/NAME/stats (batch sizes run), and
    POST /classify (image bytes or multipart files -> top-k labels, preprocessed as predict does).
    Ctrl-C or SIGTERM drains the requests in flight and exits 0. Needs the serve extra: pip install "vitdeploy\\[serve]".

    Example: vitdeploy serve models/digits/best/model.onnx --port 8000 --max-batch-size 32 --max-queue-delay-ms 2
    """
    import vitdeploy

    summary = vitdeploy.serve(
        model, host=host, port=port, runtime=runtime, device=device, threads=threads, name=name,
        max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms, max_body_mb=max_body_mb,
        decode_threads=decode_threads, top_k=top_k, log=print_note,
    )
    s = summary.stats
    batches = ", ".join(f"{b['batch_size']}: {b['compute_infer']['count']}" for b in s.get("batch_stats", []))
    console.print(
        f"stopped: {s.get('inference_stats', {}).get('success', {}).get('count', 0)} requests answered, "
        f"{s.get('inference_count', 0)} images in {s.get('execution_count', 0)} model calls "
        f"(batch size: calls {{{batches}}}), {s.get('refused_requests', 0)} refused",
        highlight=False, soft_wrap=True,
    )


def main() -> None:
    try:
        app()
    except SystemExit:
        raise
    except Exception:  # a bug: show the traceback, exit with the documented internal-error code
        import traceback

        traceback.print_exc()
        sys.exit(EXIT_INTERNAL)
