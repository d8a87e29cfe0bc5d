"""The Python API: one function per CLI command, with the same options as keyword arguments.

    import vitdeploy
    result = vitdeploy.training(preset="digits")                      # -> TrainResult
    imported = vitdeploy.import_model("vit-hf/", "models/vit")      # -> ImportResult (a timm or HF checkpoint)
    exported = vitdeploy.export(result.best, opset=17)             # -> ExportResult
    report = vitdeploy.verify(exported.path, batch_sizes=(1, 7))   # -> ParityReport (report.passed)
    summary = vitdeploy.predict(["samples/"], model=exported.path) # -> PredictSummary (summary.rows)
    figures = vitdeploy.bench(exported.path, batch_sizes=(1, 32))  # -> BenchReport

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

    from vitdeploy.onnx_export import ExportResult
    from vitdeploy.parity import ParityReport
    from vitdeploy.prediction import PredictSummary
    from vitdeploy.pretrained import ImportResult
    from vitdeploy.training import TrainResult

PathLike = str | os.PathLike[str]


def _path(value: PathLike | None) -> Path | None:
    return Path(value) if value is not None else None


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
) -> TrainResult:
    """Train a ViT (default: the `digits` preset on the embedded scikit-learn digits, or `data`, an image folder
    with one subfolder per class) and write best/ and last/ bundles into `out` (default models/<name>).

    `init`: fine-tune from a bundle's weights (e.g. one made by import_model) with fine-tuning defaults; a new head
    when the data's classes differ, position embeddings interpolated when `image_size` differs."""
    require("train", "vitdeploy.training")
    from vitdeploy.training import TrainRequest, train as run_training

    request = TrainRequest(
        preset=preset, data=_path(data), out=_path(out), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        image_size=image_size, device=device, resume=_path(resume), init=_path(init),
        stop_after_steps=stop_after_steps, workers=workers,
    )
    return run_training(request, console=console)


def import_model(
    source: PathLike,
    out: PathLike | None = None,
    *,
    timm_model: str | None = None,
    labels: PathLike | None = None,
    notify: Callable[[str], None] = to_stderr,
) -> ImportResult:
    """Import a timm or Hugging Face ViT checkpoint you already have (`vitdeploy import`) as a bundle (default
    models/<its name>): a Hugging Face model folder, or a timm state dict with `timm_model` (its timm name) or timm's
    config.json beside it. Needs neither timm nor transformers. Raises errors.CheckpointError (exit code 2) for what
    is not a plain ViT or does not fit its config."""
    require("train", "vitdeploy import")
    from vitdeploy.pretrained import import_checkpoint

    return import_checkpoint(source, out, timm_model=timm_model, labels=labels, notify=notify)


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
) -> ParityReport:
    """Compare an .onnx file (default: model.onnx of the latest bundle) with its bundle's PyTorch model on real and
    random inputs at every batch size, on every provider that really works here. Returns the report whether or not
    parity holds: check `report.passed`."""
    require("train", "vitdeploy.verify")
    from vitdeploy.verification import verify as run_verify

    return run_verify(model, bundle, images, tuple(batch_sizes), atol, rtol)


def predict(
    inputs: Sequence[PathLike],
    *,
    model: PathLike | None = None,
    batch_size: int = 32,
    workers: int = 2,
    device: str = "auto",
    threads: int | None = None,
    top_k: int = 5,
    output_format: str = "table",
    output: PathLike | None = None,
    recursive: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = to_stderr,
) -> PredictSummary:
    """Classify image files, folders or glob patterns with an exported model (ONNX Runtime only: no torch).

    With the default output_format "table" and no `output`, the rows come back in `summary.rows`; otherwise they
    are written (json, jsonl, csv) to `output` or stdout as each batch ends.
    """
    from vitdeploy.prediction import PredictRequest, predict as run_predict

    request = PredictRequest(
        inputs=[os.fspath(i) for i in inputs], model=_path(model), batch_size=batch_size, workers=workers,
        device=device, threads=threads, top_k=top_k, output_format=output_format, output=_path(output),
        recursive=recursive, progress=progress,
    )
    return run_predict(request, log=log)


__all__ = ["export", "import_model", "predict", "train", "verify"]
