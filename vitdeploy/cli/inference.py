"""`vitdeploy predict`, `bench` and `explain`: running an exported model, timing it, seeing what it looks at."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from vitdeploy.cli.app import app, console, finish, handle_errors, print_json, print_note
from vitdeploy.cli.options import (
    BatchSizes,
    BundleOption,
    Force,
    InputsArgument,
    JsonFlag,
    ModelArgument,
    OptionalInputsArgument,
    Recursive,
    Threads,
    TopK,
)
from vitdeploy.core.config import PRESETS, parse_batch_sizes
from vitdeploy.errors import ConfigError
from vitdeploy.files.variants import VARIANTS as BENCH_VARIANTS
from vitdeploy.requests import BenchRequest, ExplainRequest, PredictRequest
from vitdeploy.runtimes import RUNTIMES


@app.command()
@handle_errors
def predict(
    inputs: InputsArgument,
    model: Annotated[
        Optional[Path],
        typer.Option(help="The .onnx to run, or a folder to search. Default: the most recently modified "
                     "*.onnx anywhere under models/, skipping hidden folders and precision variants "
                     "(model.int8.onnx beside model.onnx)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per inference call.")] = PredictRequest.batch_size,
    workers: Annotated[int, typer.Option(help="Threads decoding images while the model runs (--engine ray: Ray "
                                         "actors, each decoding and holding one model session).")] = PredictRequest.workers,
    runtime: Annotated[
        Optional[str], typer.Option(help=f"{' | '.join(RUNTIMES)} (web: onnxruntime-web in headless Chromium). Default: the runtime the file was made for "
                                    "(an OpenVINO variant records it), else ort.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto (ort: CUDA only if a session really gets it; openvino: CPU) | cpu "
                                        "| cuda | tensorrt (ort) | gpu | npu (openvino) | wasm | webgpu (web).")] = PredictRequest.device,
    threads: Annotated[Optional[int], typer.Option(help="The runtime's threads (default: one per core; --engine ray: "
                                                   "per actor, default 1, and the CPUs each reserves).")] = None,
    top_k: TopK = PredictRequest.top_k,
    output_format: Annotated[
        str, typer.Option("--format", help="table | json | jsonl | csv | parquet (rows are written as each batch "
                          "ends; a Parquet file is renamed into place when complete).")
    ] = PredictRequest.output_format,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Write rows to this file instead of stdout.")
    ] = None,
    recursive: Recursive = PredictRequest.recursive,
    json_output: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    engine: Annotated[str, typer.Option(help="local (this process) | ray (Ray Data: local Ray, or --address; "
                                        "--format parquet or jsonl).")] = PredictRequest.engine,
    address: Annotated[
        Optional[str], typer.Option(help="--engine ray: an existing Ray cluster (e.g. ray://head:10001 or auto). "
                                    "Default: start Ray on this machine.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Keep the rows already in --output (jsonl, parquet) and skip their "
                                         "inputs: rerun an interrupted run.")] = PredictRequest.resume,
) -> None:
    """Classify images with an exported model on ONNX Runtime (no torch needed), OpenVINO or the ONNX reference.

    Every input gets one row: its top-k labels, or an error (path, error type, message) for a file that could not
    be decoded, with the runtime and provider that ran it. Exit code 0: all succeeded; 4: some inputs failed; 2: no
    input matched, or the model, the runtime, its device or the output file is unusable; 130: interrupted
    (finished rows are kept).

    Example: vitdeploy predict samples/ --model models/digits/best/model.onnx --format csv -o predictions.csv

    On a cluster: vitdeploy predict images/ --engine ray --workers 8 --format parquet -o predictions.parquet
    (needs pip install "vitdeploy\\[ray]"; docs/scale.md).
    """
    import vitdeploy

    if json_output:
        if output_format not in ("table", "json"):
            raise ConfigError(f"--json means --format json; it contradicts --format {output_format}")
        output_format = "json"
    summary = vitdeploy.predict(PredictRequest(
        inputs, model=model, batch_size=batch_size, workers=workers, runtime=runtime, device=device, threads=threads,
        top_k=top_k, output_format=output_format, output=output, recursive=recursive,
        progress=output_format != "json", engine=engine, address=address, resume=resume,
    ))
    if summary.rows:
        from vitdeploy.cli.tables import prediction_table, print_table

        print_table(Console(), prediction_table(summary.rows))  # on stdout: the table is the table format's data
    print_note(
        f"{summary.images_ok} images ok, {summary.images_failed} failed, {summary.images_per_second:.1f} images/s "
        f"on {summary.runtime.get('runtime', 'ort')} {summary.provider} ({summary.model})"
        + (f"; rows in {summary.output}" if summary.output else "")
    )
    finish(summary, partial=True)


@app.command()
@handle_errors
def bench(
    model: ModelArgument = None,
    bundle: Annotated[
        Optional[Path], typer.Option(help="Its bundle, for the PyTorch variants. Default: the one recorded at export.")
    ] = None,
    preset: Annotated[
        Optional[str], typer.Option(help=f"Benchmark a preset ({', '.join(PRESETS)}) with random weights "
                                    "instead of a file, to compare with published figures.")
    ] = None,
    variants: Annotated[
        Optional[str], typer.Option(help=f"Comma-separated: {', '.join(BENCH_VARIANTS)}. Default: all that can run "
                                    "here.")
    ] = None,
    runtimes: Annotated[
        Optional[str], typer.Option(help=f"Only these runtimes' variants, comma-separated: {', '.join(RUNTIMES)} (PyTorch "
                                    "eager stays as the baseline). Default: every runtime.")
    ] = None,
    batch_sizes: BatchSizes = ",".join(map(str, BenchRequest.batch_sizes)),
    warmup_iters: Annotated[
        int, typer.Option(help="Warm-up runs per variant and batch size (at least).")
    ] = BenchRequest.warmup_iters,
    warmup_seconds: Annotated[
        float, typer.Option(help="Warm-up time per variant and batch size (at least).")
    ] = BenchRequest.warmup_seconds,
    min_iters: Annotated[int, typer.Option(help="Timed runs per variant and batch size (at least).")] = BenchRequest.min_iters,
    min_seconds: Annotated[
        float, typer.Option(help="Timed seconds per variant and batch size (at least).")
    ] = BenchRequest.min_seconds,
    block_idle: Annotated[
        float, typer.Option(help="Seconds nothing runs before each timed block, so that the previous variant's "
                            "thread pool has stopped spinning (ONNX Runtime's spins 40-60 ms after a call). 0 for a "
                            "quick check where that does not matter.")
    ] = BenchRequest.block_idle,
    threads: Threads = None,
    end_to_end: Annotated[
        Optional[list[str]], typer.Option(help="Images (files, folders, globs; repeatable) to time decode / "
                                          "preprocess / model from file to logits.")
    ] = None,
    recursive: Recursive = BenchRequest.recursive,
    p99_budget: Annotated[
        Optional[float], typer.Option(help="Recommend the largest batch size whose p99 latency (ms) meets this.")
    ] = None,
    baseline: Annotated[
        Optional[Path], typer.Option(help="An earlier --output JSON to compare median latencies with.")
    ] = None,
    max_regress: Annotated[
        float, typer.Option(help="With --baseline: exit 3 when a variant's p50 got slower by more than this %.")
    ] = BenchRequest.max_regress,
    output: Annotated[Optional[Path], typer.Option(help="Save the JSON report to this file.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Save latency and throughput against batch size (PNG).")] = None,
    json_output: JsonFlag = False,
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
    from vitdeploy.benchmark.variants import parse_variants
    from vitdeploy.cli.tables import bench_table, print_table
    from vitdeploy.runtimes import parse_runtimes

    report = vitdeploy.bench(BenchRequest(
        model, bundle=bundle, preset=preset, variants=parse_variants(variants), runtimes=parse_runtimes(runtimes),
        batch_sizes=parse_batch_sizes(batch_sizes), warmup_iters=warmup_iters, warmup_seconds=warmup_seconds,
        min_iters=min_iters, min_seconds=min_seconds, block_idle=block_idle, threads=threads,
        end_to_end=tuple(end_to_end or ()), recursive=recursive,
        p99_budget=p99_budget, baseline=baseline, max_regress=max_regress, output=output, plot=plot,
        progress=not json_output,
    ))
    print_table(console, bench_table(report))
    for line in bench_module.summary_lines(report):
        print_note(line)
    if json_output:
        print_json(report.to_dict())
    finish(report)


@app.command()
@handle_errors
def explain(
    inputs: OptionalInputsArgument = None,
    bundle: BundleOption = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Folder for the PNGs (default: explain/); with --guide, "
                                     "the PNG file (default: guide.png).")
    ] = None,
    method: Annotated[
        str, typer.Option(help="rollout: attention rollout through all blocks; cls: the last block's cls-token "
                          "attention, per head; grad-rollout: rollout weighted by the gradient of --class.")
    ] = ExplainRequest.method,
    class_label: Annotated[
        Optional[str], typer.Option("--class", help="grad-rollout: the label to explain (default: the predicted one).")
    ] = None,
    top_k: TopK = ExplainRequest.top_k,
    recursive: Recursive = ExplainRequest.recursive,
    guide: Annotated[
        bool, typer.Option("--guide", help="Instead: draw the ViT mechanism on this model (patches, embedding "
                           "filters, position embeddings, attention distance, rollout) into one PNG.")
    ] = False,
    json_output: JsonFlag = False,
    force: Force = ExplainRequest.force,
) -> None:
    """Show what the model looks at: per image, one PNG with the input as the model saw it, the top-k labels and
    an attention heat map over its patches. With --guide, one PNG of the mechanism itself on this model.

    Needs matplotlib: pip install "vitdeploy\\[plot]". Exit codes: 0 all explained; 4 some inputs failed (one error
    row each); 2 bad input (no input matched, unknown --method or --class, no bundle, no matplotlib).

    Example: vitdeploy explain samples/*.png --method grad-rollout --class 3 -o explain/ && vitdeploy explain --guide
    """
    import vitdeploy

    result = vitdeploy.explain(ExplainRequest(
        inputs or [], bundle=bundle, out=out, method=method, class_label=class_label, top_k=top_k,
        recursive=recursive, guide=guide, force=force,
    ))
    if guide:
        print_note(f"wrote {result.path}: the mechanism on {result.bundle} ({result.seconds:.1f} s)")
        if json_output:
            print_json(result.to_dict())
        return
    explained = f", class {class_label}" if class_label is not None else ""  # not the predicted one: the one asked
    print_note(f"{result.images_ok} images explained ({method}{explained}), {result.images_failed} failed, in "
               f"{result.seconds:.1f} s; PNGs in {result.out_dir}/")
    if json_output:
        print_json(result.to_dict())
    finish(result, partial=True)
