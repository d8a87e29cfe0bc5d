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
    stop_after_steps: Annotated[
        Optional[int], typer.Option(help="Stop early after this many optimizer steps, as Ctrl-C would "
                                    "(the schedule still spans all epochs; --resume continues).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Threads decoding images of a --data folder.")] = 2,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")] = False,
) -> None:
    """Train a ViT and write best/ and last/ model bundles.

    Example: vitdeploy train --epochs 30 --out models/digits
    """
    import vitdeploy

    result = vitdeploy.train(
        preset, data=data, out=out, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, image_size=image_size,
        device=device, resume=resume, stop_after_steps=stop_after_steps, workers=workers, console=console,
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


# Commands of the later stages (export, verify, predict, bench) are registered below this line.


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


def main() -> None:
    try:
        app()
    except SystemExit:
        raise
    except Exception:  # a bug: show the traceback, exit with the documented internal-error code
        import traceback

        traceback.print_exc()
        sys.exit(EXIT_INTERNAL)
