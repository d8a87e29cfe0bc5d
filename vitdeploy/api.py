"""The Python API: one function per CLI command, with the same options as keyword arguments.

    import vitdeploy
    result = vitdeploy.train(preset="digits")                      # -> TrainResult
    imported = vitdeploy.import_model("vit-hf/", "models/vit")      # -> ImportResult (a timm or HF checkpoint)
    exported = vitdeploy.export(result.best, opset=17)             # -> ExportResult
    report = vitdeploy.verify(exported.path, batch_sizes=(1, 7))   # -> ParityReport (report.passed)
    summary = vitdeploy.predict(["samples/"], model=exported.path) # -> PredictSummary (summary.rows)
    repo = vitdeploy.triton(exported.path, out="triton")           # -> TritonRepository (Triton model repository)
    vitdeploy.serve(exported.path, port=8000)                      # serves until Ctrl-C -> ServeSummary
    figures = vitdeploy.bench(exported.path, batch_sizes=(1, 32))  # -> BenchReport
    maps = vitdeploy.explain(["samples/"], bundle=result.best)     # -> ExplainResult (PNGs + maps)

The CLI commands call these functions. Each imports its stage only when called, so `import vitdeploy` stays light
and needs no torch; train, import, export and verify raise extras.MissingExtra (exit code 2 in the CLI) without the
[train] extra. Failures raise errors.VitDeployError subclasses, each carrying its documented exit code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vitdeploy.extras import require
from vitdeploy.progress import to_stderr

if TYPE_CHECKING:
    from rich.console import Console

    from vitdeploy.benchmark import BenchReport
    from vitdeploy.explanation import ExplainResult, GuideResult
    from vitdeploy.onnx_export import ExportResult
    from vitdeploy.parity import ParityReport
    from vitdeploy.prediction import PredictSummary
    from vitdeploy.serving.server import ServeSummary
    from vitdeploy.serving.triton import TritonRepository
    from vitdeploy.pretrained import ImportResult
    from vitdeploy.training import TrainResult

PathLike = str | os.PathLike[str]


def _path(value: PathLike | None) -> Path | None:
    return Path(value) if value is not None else None


def _runtimes(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """"ort,openvino" or ["ort", "openvino"] -> ("ort", "openvino"); None -> None (the default set)."""
    from vitdeploy.runtimes import parse_runtimes

    return parse_runtimes(value if value is None or isinstance(value, str) else ",".join(value))


def train(
    preset: str | None = None,
    *,
    data: PathLike | None = None,
    out: PathLike | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    image_size: int | None = None,
    device: str = "auto",
    resume: PathLike | None = None,
    init: PathLike | None = None,
    stop_after_steps: int | None = None,
    workers: int = 2,
    console: Console | None = None,
    force: bool = False,
) -> TrainResult:
    """Train a ViT (default: the `digits` preset on the embedded scikit-learn digits, or `data`, an image folder
    with one subfolder per class) and write best/ and last/ bundles into `out` (default models/<name>).

    `init`: fine-tune from a bundle's weights (e.g. one made by import_model) with fine-tuning defaults; a new head
    when the data's classes differ, position embeddings interpolated when `image_size` differs.
    `out` must be new, empty or a run folder vitdeploy wrote, unless `force` (outputs.py)."""
    require("train", "vitdeploy.training")
    from vitdeploy.training import TrainRequest, train as run_training

    request = TrainRequest(
        preset=preset, data=_path(data), out=_path(out), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        image_size=image_size, device=device, resume=_path(resume), init=_path(init),
        stop_after_steps=stop_after_steps, workers=workers, force=force,
    )
    return run_training(request, console=console)


def import_model(
    source: PathLike,
    out: PathLike | None = None,
    *,
    timm_model: str | None = None,
    labels: PathLike | None = None,
    notify: Callable[[str], None] = to_stderr,
    force: bool = False,
) -> ImportResult:
    """Import a timm or Hugging Face ViT checkpoint you already have (`vitdeploy import`) as a bundle (default
    models/<its name>): a Hugging Face model folder, or a timm state dict with `timm_model` (its timm name) or timm's
    config.json beside it. Needs neither timm nor transformers. Raises errors.CheckpointError (exit code 2) for what
    is not a plain ViT or does not fit its config; errors.InputError (exit code 2) for an `out` that is not new,
    empty or a bundle, unless `force`."""
    require("train", "vitdeploy import")
    from vitdeploy.pretrained import import_checkpoint

    return import_checkpoint(source, out, timm_model=timm_model, labels=labels, notify=notify, force=force)


def export(
    bundle: PathLike | None = None,
    out: PathLike | None = None,
    *,
    opset: int = 17,
    verify: bool = True,
    optimize: bool = False,
    precision: Sequence[str] = ("fp32",),
    max_accuracy_drop: float = 0.5,
    int8_method: str = "static",
    exporter: str | None = None,
    notify: Callable[[str], None] = to_stderr,
) -> ExportResult:
    """Export a bundle (default: the latest under models/) to one self-describing .onnx (default BUNDLE/model.onnx),
    parity-checked before it is written; `optimize` / `precision` ("fp16", "int8") add gated faster variants beside
    it. Raises parity.ParityError or precision.AccuracyGateFailed (exit code 3) when a check fails."""
    require("train", "vitdeploy.export")
    from vitdeploy.accuracy_gate import AccuracyGate
    from vitdeploy.onnx_export import export_onnx
    from vitdeploy.precision import parse_precisions, requested_variants

    variants = requested_variants(parse_precisions(precision), optimize)
    return export_onnx(bundle, out, opset=opset, verify=verify, variants=variants,
                       gate=AccuracyGate(max_accuracy_drop=max_accuracy_drop), int8_method=int8_method,
                       exporter=exporter, notify=notify)


def verify(
    model: PathLike | None = None,
    *,
    bundle: PathLike | None = None,
    images: PathLike | None = None,
    batch_sizes: Sequence[int] = (1, 7, 32),
    atol: float | None = None,
    rtol: float | None = None,
    runtime: str | Sequence[str] | None = None,
    notify: Callable[[str], None] = to_stderr,
) -> ParityReport:
    """Compare an .onnx file (default: model.onnx of the latest bundle) with its bundle's PyTorch model on real and
    random inputs at every batch size, on every runtime asked for ("ort,openvino,reference"; default: every one
    installed and usable here) on every device it really has, and the runtimes with each other. Returns the report
    whether or not parity holds: check `report.passed`. A runtime named but not usable raises (exit code 2)."""
    require("train", "vitdeploy.verify")
    from vitdeploy.verification import verify as run_verify

    return run_verify(model, bundle, images, tuple(batch_sizes), atol, rtol, runtimes=_runtimes(runtime),
                      notify=notify)


def predict(
    inputs: Sequence[PathLike],
    *,
    model: PathLike | None = None,
    batch_size: int = 32,
    workers: int = 2,
    runtime: str | None = None,
    device: str = "auto",
    threads: int | None = None,
    top_k: int = 5,
    output_format: str = "table",
    output: PathLike | None = None,
    recursive: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = to_stderr,
) -> PredictSummary:
    """Classify image files, folders or glob patterns with an exported model (no torch) on `runtime`: "ort",
    "openvino" or "reference" (None: the runtime the file was made for, else ONNX Runtime).

    With the default output_format "table" and no `output`, the rows come back in `summary.rows`; otherwise they
    are written (json, jsonl, csv) to `output` or stdout as each batch ends.
    """
    from vitdeploy.prediction import PredictRequest, predict as run_predict

    request = PredictRequest(
        inputs=[os.fspath(i) for i in inputs], model=_path(model), batch_size=batch_size, workers=workers,
        runtime=runtime, device=device, threads=threads, top_k=top_k, output_format=output_format, output=_path(output),
        recursive=recursive, progress=progress,
    )
    return run_predict(request, log=log)


def bench(
    model: PathLike | None = None,
    *,
    bundle: PathLike | None = None,
    preset: str | None = None,
    variants: str | Sequence[str] | None = None,
    runtimes: str | Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (1, 8, 32),
    warmup_iters: int = 3,
    warmup_seconds: float = 1.0,
    min_iters: int = 10,
    min_seconds: float = 2.0,
    threads: int | None = None,
    end_to_end: Sequence[str] | None = None,
    p99_budget: float | None = None,
    baseline: PathLike | None = None,
    max_regress: float = 5.0,
    output: PathLike | None = None,
    plot: PathLike | None = None,
    progress: bool = False,
    log: Callable[[str], None] = to_stderr,
) -> BenchReport:
    """Benchmark an exported model (default: the newest .onnx under models/) and the variant files export wrote
    beside it, or a `preset` with random weights, against PyTorch eager, interleaved, with the fair protocol, on
    every runtime (or `runtimes`: "ort,openvino"); report.best_variant names the fastest variant per batch size
    that passed its accuracy check on its runtime.

    `p99_budget` adds report.recommendation; `baseline` (an earlier `output`) adds report.regression, whose
    "regressed" list names every variant slower than the baseline by more than `max_regress` percent (the CLI
    exits 3 on it). `output` saves the JSON report, `plot` a PNG. `progress` shows what is being measured and the
    time left on stderr, when it is a terminal. Needs torch only for the PyTorch variants and presets.
    """
    from rich.console import Console

    from vitdeploy import benchmark
    from vitdeploy.atomic import atomic_write_json
    from vitdeploy.outputs import check_output_file

    for path, option in ((output, "--output"), (plot, "--plot")):
        if path:
            check_output_file(path, option)  # before minutes of measuring
    names = variants.split(",") if isinstance(variants, str) else variants
    settings = benchmark.BenchSettings(
        batch_sizes=tuple(batch_sizes), variants=tuple(n.strip() for n in names if n.strip()) if names else None,
        warmup_iters=warmup_iters, warmup_seconds=warmup_seconds, min_iters=min_iters, min_seconds=min_seconds,
        threads=threads, runtimes=_runtimes(runtimes),
    )
    baseline_report = benchmark.load_report(Path(baseline)) if baseline else None  # before minutes of measuring
    with benchmark.progress_display(Console(stderr=True), settings, json_output=not progress) as on_point:
        report = benchmark.run_bench(_path(model), _path(bundle), preset, settings, list(end_to_end or []) or None,
                                     log=log, on_point=on_point)
    if p99_budget is not None:
        report.recommendation = benchmark.recommend_batch_size(report, p99_budget)
    if baseline_report is not None:
        report.regression = benchmark.compare_to_baseline(report, baseline_report, max_regress)
    if output:
        atomic_write_json(output, report.to_dict())
    if plot:
        benchmark.plot_report(report, Path(plot))
    return report


def explain(
    inputs: Sequence[PathLike] = (),
    *,
    bundle: PathLike | None = None,
    out: PathLike | None = None,
    method: str = "rollout",
    class_label: str | None = None,
    top_k: int = 5,
    recursive: bool = False,
    guide: bool = False,
    log: Callable[[str], None] = to_stderr,
    force: bool = False,
) -> ExplainResult | GuideResult:
    """What the model looks at: for each image, one PNG in `out` (default explain/) with the input as the model saw
    it, its top-k labels and an attention map (`method`: rollout, cls, grad-rollout for `class_label`); the
    result's rows hold each map as numbers. With `guide`, one PNG at `out` (default guide.png) of the mechanism on
    the bundle's own weights and held-out images. Needs the [train] and [plot] extras."""
    require("train", "vitdeploy.explain")
    from vitdeploy.errors import ConfigError
    from vitdeploy.explanation import explain as explain_images, guide as draw_guide

    if guide:
        if inputs:
            raise ConfigError("--guide draws from the bundle's held-out images; give no IMAGES with it")
        return draw_guide(_path(bundle), _path(out) or Path("guide.png"))
    return explain_images([os.fspath(i) for i in inputs], _path(bundle), _path(out) or Path("explain"), method,
                         class_label, top_k, recursive, log=log, force=force)


def triton(
    model: PathLike | None = None,
    *,
    out: PathLike = "triton",
    name: str | None = None,
    device: str = "cpu",
    instances: int = 1,
    max_batch_size: int | None = None,
    max_queue_delay_ms: float | None = None,
    preferred_batch_sizes: Sequence[int] = (),
    dynamic_batching: bool = True,
    from_bench: PathLike | None = None,
    tensorrt: str | None = None,
    cuda_graphs: bool = False,
    force: bool = False,
) -> TritonRepository:
    """Write a Triton Inference Server model repository for an exported .onnx (default: the newest under models/):
    OUT/<name>/config.pbtxt, OUT/<name>/1/model.onnx (the file, byte for byte), OUT/<name>/labels.txt and
    OUT/README.md. Batch sizes and queue delay come from the arguments, else from a `bench --p99-budget` report
    (`from_bench`), else defaults (32, 2 ms). Core install only: no torch, no onnx, no tritonclient."""
    from vitdeploy.serving.triton import TritonOptions, write_triton_repository

    options = TritonOptions(
        name=name, device=device, instances=instances, max_batch_size=max_batch_size,
        max_queue_delay_ms=max_queue_delay_ms, preferred_batch_sizes=tuple(preferred_batch_sizes),
        dynamic_batching=dynamic_batching, from_bench=_path(from_bench), tensorrt=tensorrt, cuda_graphs=cuda_graphs,
    )
    return write_triton_repository(_path(model), Path(out), options, force=force)


def serve(
    model: PathLike | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    runtime: str = "ort",
    device: str = "auto",
    threads: int | None = None,
    name: str | None = None,
    max_batch_size: int = 32,
    max_queue_delay_ms: float = 2.0,
    max_body_mb: float = 64.0,
    decode_threads: int = 2,
    top_k: int = 5,
    log: Callable[[str], None] = to_stderr,
) -> ServeSummary:
    """Serve an exported .onnx (default: the newest under models/) over HTTP with the Open Inference Protocol (v2,
    as Triton and KServe) and an image endpoint, /classify, batching concurrent requests dynamically. Blocks until
    Ctrl-C or SIGTERM, drains the requests in flight, and returns what was served. Needs the [serve] extra."""
    require("serve", "vitdeploy serve")
    from vitdeploy.serving.server import ServeSettings, serve as run_server

    settings = ServeSettings(
        host=host, port=port, runtime=runtime, device=device, threads=threads, name=name,
        max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms, max_body_mb=max_body_mb,
        decode_threads=decode_threads, top_k=top_k,
    )
    return run_server(_path(model), settings, log=log)


__all__ = ["bench", "explain", "export", "import_model", "predict", "serve", "train", "triton", "verify"]
