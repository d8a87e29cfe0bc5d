"""The Python API: one function per CLI command. Each takes its request object (vitdeploy.requests), or the same
fields as keyword arguments; the defaults live in the request classes only.

    import vitdeploy
    result = vitdeploy.train(preset="digits")                      # -> TrainResult
    imported = vitdeploy.import_model("vit-hf/", out="models/vit")  # -> ImportResult (a timm or HF checkpoint)
    exported = vitdeploy.export(result.best, opset=17)             # -> ExportResult
    report = vitdeploy.verify(exported.path, batch_sizes=(1, 7))   # -> ParityReport (report.passed)
    summary = vitdeploy.predict(["samples/"], model=exported.path) # -> PredictSummary (summary.rows)
    repo = vitdeploy.triton(exported.path, out="triton")           # -> TritonRepository (Triton model repository)
    vitdeploy.serve(exported.path, port=8000)                      # serves until Ctrl-C -> ServeSummary
    figures = vitdeploy.bench(exported.path, batch_sizes=(1, 32))  # -> BenchReport (figures.passed)
    maps = vitdeploy.explain(["samples/"], bundle=result.best)     # -> ExplainResult (PNGs + maps)
    folder = vitdeploy.web(exported.path, out="web")               # -> WebFolder (a static page + onnxruntime-web)

Each function imports its stage only when called, so `import vitdeploy` stays light and needs no torch; train,
import, export and verify raise errors.MissingExtra (exit code 2 in the CLI) without the [train] extra. Bad input
raises an errors.VitDeployError subclass carrying its documented exit code; a check that ran and failed does not
raise: the result says so in `.passed` (the CLI turns it into exit code 3). Notes go to the `vitdeploy` logger.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitdeploy.core.extras import require
from vitdeploy.requests import (
    DEFAULT_GUIDE_FILE,
    DEFAULT_TRITON_DIR,
    BenchRequest,
    ExplainRequest,
    ExportRequest,
    ImportRequest,
    PredictRequest,
    SamplesRequest,
    ServeSettings,
    TrainRequest,
    TritonOptions,
    VerifyRequest,
    WebRequest,
    build,
)

if TYPE_CHECKING:
    from vitdeploy.benchmark import BenchReport
    from vitdeploy.explanation import ExplainResult, GuideResult
    from vitdeploy.exporting.capabilities import MachineReport
    from vitdeploy.exporting.exporter import ExportResult
    from vitdeploy.prediction.local import PredictSummary
    from vitdeploy.pretrained import ImportResult
    from vitdeploy.serving.server import ServeSummary
    from vitdeploy.serving.triton import TritonRepository
    from vitdeploy.serving.web_folder import WebFolder
    from vitdeploy.training.run import TrainResult
    from vitdeploy.verification.parity import ParityReport

PathLike = str | os.PathLike[str]


def _first(kind: type, value: Any, name: str, options: dict[str, Any]) -> Any:
    """A request given whole, or one built from the command's first argument (`name`) and keyword options."""
    if isinstance(value, kind):
        return build(kind, value, options)
    return build(kind, None, {name: value, **options} if value is not None else options)


def train(request: TrainRequest | None = None, /, **options: Any) -> TrainResult:
    """Train a ViT (default: the `digits` preset on the embedded scikit-learn digits, or `data`, an image folder
    with one subfolder per class) and write best/ and last/ bundles into `out` (default models/<name>).

    `init`: fine-tune from a bundle's weights (e.g. one made by import_model) with fine-tuning defaults; a new head
    when the data's classes differ, position embeddings interpolated when `image_size` differs.
    `out` must be new, empty or a run folder vitdeploy wrote, unless `force` (outputs.py)."""
    require("train", "vitdeploy.training.run")
    from vitdeploy.training.run import train as run_training

    return run_training(build(TrainRequest, request, options))


def samples(out: PathLike | SamplesRequest | None = None, /, **options: Any) -> list[Path]:
    """Write the first `count` held-out images of a bundle's dataset (default: the latest bundle under models/) as
    PNG files named with their true label into `out` (default samples/), and return their paths. `out` must be new,
    empty or a samples folder vitdeploy wrote, unless `force` (outputs.py)."""
    require("train", "vitdeploy samples")
    from vitdeploy.training.data import write_samples

    return write_samples(_first(SamplesRequest, out, "out", options))


def import_model(source: PathLike | ImportRequest, out: PathLike | None = None, /, **options: Any) -> ImportResult:
    """Import a timm or Hugging Face ViT checkpoint you already have (`vitdeploy import`) as a bundle (default
    models/<its name>): a Hugging Face model folder, or a timm state dict with `timm_model` (its timm name) or timm's
    config.json beside it. Needs neither timm nor transformers. Raises errors.CheckpointError (exit code 2) for what
    is not a plain ViT or does not fit its config; errors.InputError (exit code 2) for an `out` that is not new,
    empty or a bundle, unless `force`."""
    require("train", "vitdeploy import")
    from vitdeploy.pretrained import import_checkpoint

    request = _first(ImportRequest, source, "source", {"out": out, **options} if out is not None else options)
    return import_checkpoint(request.source, request.out, timm_model=request.timm_model, labels=request.labels,
                             force=request.force)


def export(bundle: PathLike | ExportRequest | None = None, /, **options: Any) -> ExportResult:
    """Export a bundle (default: the latest under models/) to one self-describing .onnx (default BUNDLE/model.onnx),
    parity-checked before it is written; `optimize` / `precision` ("fp16", "int8", ...) add gated faster variants
    beside it. A failed parity check raises errors.ParityError (exit code 3) since no file exists then; variants
    that fail their gate are not written and the result's `passed` is False."""
    require("train", "vitdeploy.export")
    from vitdeploy.exporting.exporter import export as run_export

    return run_export(_first(ExportRequest, bundle, "bundle", options))


def verify(model: PathLike | VerifyRequest | None = None, /, **options: Any) -> ParityReport:
    """Compare an .onnx file (default: model.onnx of the latest bundle) with its bundle's PyTorch model on real and
    random inputs at every batch size, on every runtime asked for (`runtime`: "ort,openvino,reference"; default:
    every one installed and usable here), and the runtimes with each other; a variant gated on another CPU class
    (its metadata says which) has its accuracy gate run again here (`report.regate`). Returns the report whether or
    not parity holds: check `report.passed`. A runtime named but not usable raises (exit code 2)."""
    require("train", "vitdeploy.verify")
    from vitdeploy.exporting.gate import regate
    from vitdeploy.runtimes import parse_runtimes
    from vitdeploy.verification.run import verify as run_verify

    if "runtime" in options:
        options["runtime"] = parse_runtimes(options["runtime"])
    report = run_verify(_first(VerifyRequest, model, "model", options))
    regate(report)  # a variant gated on another CPU class is judged again here, on the bundle's held-out images
    return report


def predict(inputs: Sequence[PathLike] | PredictRequest, /, **options: Any) -> PredictSummary:
    """Classify image files, folders or glob patterns with an exported model (no torch) on `runtime`: "ort",
    "openvino" or "reference" (None: the runtime the file was made for, else ONNX Runtime).

    With the default output_format "table" and no `output`, the rows come back in `summary.rows`; otherwise they
    are written (json, jsonl, csv; parquet to a file) to `output` or stdout as each batch ends. engine "ray" runs
    on Ray Data (a local Ray, or the cluster at `address`); `resume` keeps the rows already in `output` and skips
    their inputs. `summary.passed`: no input failed.
    """
    request = _first(PredictRequest, inputs, "inputs", options)
    if request.engine == "ray":
        from vitdeploy.prediction.ray import predict_on_ray  # says how to install Ray when it is missing

        return predict_on_ray(request)
    from vitdeploy.prediction.local import predict as run_locally

    return run_locally(request)


def bench(model: PathLike | BenchRequest | None = None, /, **options: Any) -> BenchReport:
    """Benchmark an exported model (default: the newest .onnx under models/) and the variant files export wrote
    beside it, or a `preset` with random weights, against PyTorch eager, interleaved, with the fair protocol, on
    every runtime (or `runtimes`: "ort,openvino"); report.best_variant names the fastest variant per batch size
    that passed its accuracy check on its runtime.

    `p99_budget` adds report.recommendation; `baseline` (an earlier `output`) adds report.regression, whose
    "regressed" list names every variant slower than the baseline by more than `max_regress` percent
    (report.passed is then False). `output` saves the JSON report, `plot` a PNG. Needs torch only for the PyTorch
    variants and presets.
    """
    from vitdeploy.benchmark import parse_variants, run_request
    from vitdeploy.files.outputs import check_output_file
    from vitdeploy.runtimes import parse_runtimes

    if "variants" in options:
        options["variants"] = parse_variants(options["variants"])
    if "runtimes" in options:
        options["runtimes"] = parse_runtimes(options["runtimes"])
    request = _first(BenchRequest, model, "model", options)
    for path, option in ((request.output, "--output"), (request.plot, "--plot")):
        if path is not None:
            check_output_file(path, option)  # before minutes of measuring
    return run_request(request)


def explain(inputs: Sequence[PathLike] | ExplainRequest = (), /, **options: Any) -> ExplainResult | GuideResult:
    """What the model looks at: for each image, one PNG in `out` (default explain/) with the input as the model saw
    it, its top-k labels and an attention map (`method`: rollout, cls, grad-rollout for `class_label`); the
    result's rows hold each map as numbers. With `guide`, one PNG at `out` (default guide.png) of the mechanism on
    the bundle's own weights and held-out images. Needs the [train] and [plot] extras."""
    require("train", "vitdeploy.explain")
    from vitdeploy.errors import ConfigError
    from vitdeploy.explanation import explain as explain_images
    from vitdeploy.explanation import guide as draw_guide

    request = _first(ExplainRequest, list(inputs) if not isinstance(inputs, ExplainRequest) else inputs, "inputs",
                     options)
    if request.guide:
        if request.inputs:
            raise ConfigError("--guide draws from the bundle's held-out images; give no IMAGES with it")
        return draw_guide(request.bundle, request.out or DEFAULT_GUIDE_FILE)
    return explain_images(request)


def triton(model: PathLike | None = None, /, out: PathLike = DEFAULT_TRITON_DIR,
           options: TritonOptions | None = None, **fields: Any) -> TritonRepository:
    """Write a Triton Inference Server model repository for an exported .onnx (default: the newest under models/):
    OUT/<name>/config.pbtxt, OUT/<name>/1/model.onnx (the file, byte for byte), OUT/<name>/labels.txt and
    OUT/README.md, and KServe's OUT/inferenceservice.yaml (storageUri `storage_uri`, else a placeholder); the
    written folder is checked against its .onnx. Batch sizes and queue delay come from the options, else from a
    `bench --p99-budget` report (`from_bench`), else defaults (32, 2 ms). Core install only: no torch, no onnx,
    no tritonclient."""
    from vitdeploy.serving.triton import write_triton_repository

    return write_triton_repository(Path(model) if model is not None else None, Path(out),
                                   build(TritonOptions, options, fields))


def serve(model: PathLike | None = None, /, settings: ServeSettings | None = None, **fields: Any) -> ServeSummary:
    """Serve an exported .onnx (default: the newest under models/) over HTTP with the Open Inference Protocol (v2,
    as Triton and KServe) and an image endpoint, /classify, batching concurrent requests dynamically. Blocks until
    Ctrl-C or SIGTERM, drains the requests in flight, and returns what was served. Needs the [serve] extra."""
    require("serve", "vitdeploy serve")
    from vitdeploy.serving.server import serve as run_server

    return run_server(Path(model) if model is not None else None, build(ServeSettings, settings, fields))


def web(model: PathLike | WebRequest | None = None, /, **options: Any) -> WebFolder:
    """Write a static folder that runs an exported .onnx (default: the newest under models/) in a browser with
    onnxruntime-web: index.html, vitdeploy.js (the model's preprocessing, as predict does it), the file,
    onnxruntime-web's files, the transformers.js layout (the model with its preprocessing in the graph), serve.py
    and README.md. No torch needed (onnx builds the transformers.js file); npm installs onnxruntime-web into the
    cache the first time. `out` follows outputs.py's rule (force: write into a folder of
    other files, keeping them)."""
    from vitdeploy.serving.web_folder import write_web_folder

    request = _first(WebRequest, model, "model", options)
    return write_web_folder(request.model, request.out, request.force)


def doctor() -> MachineReport:
    """What this machine offers (CPU ISA class and flags, every runtime's devices and native precisions) and, for
    every export and bench variant, whether it can run here and, if not, why and what would (an install line or
    the hardware); report.recommendation says what to build and time. Imports no torch."""
    from vitdeploy.exporting.capabilities import machine_report

    return machine_report()


__all__ = ["bench", "doctor", "explain", "export", "import_model", "predict", "serve", "train", "triton", "verify",
           "web"]
