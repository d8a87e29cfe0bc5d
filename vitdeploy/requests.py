"""What each command is asked to do: one dataclass per command, the one place every option's default lives.

The CLI reads its option defaults from these classes, the Python API builds them from keyword arguments, and each
stage receives the object whole:

    request = PredictRequest(inputs=["samples/"], model="models/digits/best/model.onnx", batch_size=8)
    vitdeploy.predict(request)          # or vitdeploy.predict(["samples/"], model=..., batch_size=8)

Paths may be given as strings; they are held as Path. Standard library only: `vitdeploy --help` imports this.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_TRITON_DIR = Path("triton")
DEFAULT_EXPLAIN_DIR = Path("explain")
DEFAULT_GUIDE_FILE = Path("guide.png")
# The accuracy gate's defaults (export --max-accuracy-drop; the agreement has no option): what a faster variant may
# lose against PyTorch fp32 on the held-out images before it is refused.
MAX_ACCURACY_DROP = 0.5  # percentage points
MIN_TOP1_AGREEMENT = 0.99  # share of images with PyTorch's top-1 class
# Dynamic batching's defaults, the same for `vitdeploy serve` and the Triton repository it mirrors.
TRITON_MAX_BATCH = 32
MAX_QUEUE_DELAY_MS = 2.0
ENGINES = ("local", "ray")  # where predict runs: this process, or Ray Data (vitdeploy.prediction.ray)


class _Request:
    """Holds str and os.PathLike values of Path fields as Path, and sequences of the tuple fields as tuples."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if "Path" in str(f.type) and isinstance(value, (str, os.PathLike)) and not isinstance(value, Path):
                object.__setattr__(self, f.name, Path(value))
            elif str(f.type).startswith("tuple") and isinstance(value, (list, tuple)):
                object.__setattr__(self, f.name, tuple(value))


R = TypeVar("R")


def build(kind: type[R], request: R | None, options: dict[str, Any]) -> R:
    """`request` with `options` applied, or a new `kind` from `options`: what every API function accepts."""
    if request is None:
        return kind(**options)
    return dataclasses.replace(request, **options) if options else request  # type: ignore[type-var]


@dataclass
class TrainRequest(_Request):
    """`vitdeploy train`. None means "the preset's default" (or, with resume, "the bundle's")."""

    preset: str | None = None  # digits (default), vit-ti16, vit-s16, vit-b16
    data: Path | None = None  # an image folder, one subfolder per class; None: the embedded digits
    out: Path | None = None  # run folder for best/ and last/; None: models/<preset or data folder name>
    epochs: int | None = None
    batch_size: int | None = None  # global, over every process
    lr: float | None = None  # peak learning rate
    seed: int | None = None
    image_size: int | None = None
    device: str = "auto"  # auto | cpu | cuda
    resume: Path | None = None  # continue a run from this bundle (its last/)
    init: Path | None = None  # fine-tune from this bundle's weights (finetune.py)
    stop_after_steps: int | None = None  # stop like Ctrl-C after this many steps in this invocation
    workers: int = 2  # threads decoding the images of a data folder
    force: bool = False  # write into an output folder that holds files vitdeploy did not write (outputs.py)
    tome_r: int | None = None  # train (and evaluate) with token merging on, r tokens per block (model/tome.py)


@dataclass
class SamplesRequest(_Request):
    """`vitdeploy samples`: held-out images of a bundle's dataset as PNG files, to try predict and explain on."""

    out: Path = Path("samples")
    bundle: Path | None = None  # None: the latest bundle under models/
    count: int = 8
    force: bool = False  # write into an output folder that holds files vitdeploy did not write (outputs.py)


@dataclass
class ImportRequest(_Request):
    """`vitdeploy import`: a timm or Hugging Face ViT checkpoint becomes a bundle."""

    source: Path  # a Hugging Face model folder, or a timm state dict
    out: Path | None = None  # the bundle folder; None: models/<its name>
    timm_model: str | None = None  # the timm name of a state dict without timm's config.json beside it
    labels: Path | None = None  # class names, one per line
    force: bool = False  # write into an output folder that holds files vitdeploy did not write (outputs.py)


@dataclass
class ExportRequest(_Request):
    """`vitdeploy export`."""

    bundle: Path | None = None  # None: the latest bundle under models/
    out: Path | None = None  # None: BUNDLE/model.onnx
    opset: int = 17
    verify: bool = True  # parity with PyTorch before the file is moved into place
    optimize: bool = False  # also the fused fp32 variant
    image_input: bool = False  # also model.image.onnx: the decoded image as input, THE preprocessing in the graph
    image_layout: str = "nhwc"  # model.image.onnx's input: nhwc (uint8 [batch, H, W, C]) | nchw ([batch, C, H, W])
    precision: tuple[str, ...] = ("fp32",)  # variants to build beside the file, each gated (variants.py lists them)
    max_accuracy_drop: float = MAX_ACCURACY_DROP  # accuracy gate: percentage points of held-out accuracy to lose
    int8_method: str = "static"  # static (QDQ, calibrated) | dynamic
    exporter: str | None = None  # torchscript | dynamo; None: torchscript where torch has it
    tome_r: int | None = None  # token merging variants (tome, tome-int8): tokens merged per block; None: searched


@dataclass
class VerifyRequest(_Request):
    """`vitdeploy verify`."""

    model: Path | None = None  # None: model.onnx of the latest bundle
    bundle: Path | None = None  # None: the file's folder, else the one recorded at export
    images: Path | None = None  # None: the bundle's held-out split
    batch_sizes: tuple[int, ...] = (1, 7, 32)
    atol: float | None = None  # None: the precision's tolerance (parity.TOLERANCES)
    rtol: float | None = None
    runtime: tuple[str, ...] | None = None  # None: every runtime installed and usable here


@dataclass
class PredictRequest(_Request):
    """`vitdeploy predict`."""

    inputs: list[str] = field(default_factory=list)  # files, folders or glob patterns
    model: Path | None = None  # an .onnx file or a folder to search; None: the newest .onnx under models/
    batch_size: int = 32
    workers: int = 2  # decoding threads
    runtime: str | None = None  # ort | openvino | reference; None: the one the file was made for, else ort
    device: str = "auto"
    threads: int | None = None  # the runtime's threads (None: its default, one per core)
    top_k: int = 5
    output_format: str = "table"  # table | json | jsonl | csv | parquet
    output: Path | None = None  # None: stdout
    recursive: bool = False
    progress: bool = False  # live progress on stderr, when it is a terminal
    engine: str = "local"  # local: this process; ray: Ray Data (vitdeploy.prediction.ray)
    address: str | None = None  # ray: an existing cluster's address; None: start Ray on this machine
    resume: bool = False  # keep the rows already in `output` (jsonl, parquet) and skip their inputs

    def __post_init__(self) -> None:
        super().__post_init__()
        self.inputs = [os.fspath(i) for i in self.inputs]


@dataclass
class BenchRequest(_Request):
    """`vitdeploy bench`; benchmark.BenchSettings takes its timing defaults from here."""

    model: Path | None = None  # None: the newest .onnx under models/
    bundle: Path | None = None  # for the PyTorch variants; None: the one recorded at export
    preset: str | None = None  # benchmark a preset with random weights instead of a file
    variants: tuple[str, ...] | None = None  # None: every variant that can run here
    runtimes: tuple[str, ...] | None = None  # only these runtimes' variants (PyTorch eager stays)
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    warmup_iters: int = 3  # warm-up runs per variant and batch size (at least)
    warmup_seconds: float = 1.0
    min_iters: int = 10  # timed runs per variant and batch size (at least)
    min_seconds: float = 2.0
    # Seconds nothing runs before each timed block, so that the previous block's thread pool has stopped spinning
    # (ONNX Runtime's spins 40-60 ms after a call, numpy's GEMM 100 ms).
    block_idle: float = 0.2
    threads: int | None = None  # for torch and every runtime alike; None: one per CPU core
    end_to_end: tuple[str, ...] = ()  # images to time from file to logits
    recursive: bool = False  # end_to_end folders searched recursively (globs may use **)
    p99_budget: float | None = None  # ms: recommend the largest batch size whose p99 meets it
    baseline: Path | None = None  # an earlier report to compare median latencies with
    max_regress: float = 5.0  # percent slower than the baseline that counts as a regression
    output: Path | None = None  # the JSON report
    plot: Path | None = None  # a PNG of latency and throughput against batch size
    progress: bool = False  # what is being measured and the time left, on stderr when it is a terminal


@dataclass
class ExplainRequest(_Request):
    """`vitdeploy explain`."""

    inputs: list[str] = field(default_factory=list)
    bundle: Path | None = None  # None: the latest bundle under models/
    out: Path | None = None  # None: explain/ (with guide: guide.png)
    method: str = "rollout"  # rollout | cls | grad-rollout
    class_label: str | None = None  # grad-rollout: the label to explain (None: the predicted one)
    top_k: int = 5
    recursive: bool = False
    guide: bool = False  # instead: one PNG of the mechanism on this model
    force: bool = False  # write into an output folder that holds files vitdeploy did not write (outputs.py)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.inputs = [os.fspath(i) for i in self.inputs]


@dataclass
class TritonOptions(_Request):
    """`vitdeploy triton`: the repository's batching and instances (the model and folder are arguments)."""

    name: str | None = None  # default: the file name without .onnx
    backend: str = "onnxruntime"  # onnxruntime (Triton runs the .onnx) | python (model.py runs it through vitdeploy)
    device: str = "cpu"  # cpu | gpu: instance_group kind
    instances: int = 1  # model instances (per GPU with --device gpu)
    max_batch_size: int | None = None  # default TRITON_MAX_BATCH, or the bench recommendation
    max_queue_delay_ms: float | None = None  # default MAX_QUEUE_DELAY_MS, or the p99 budget the bench batch leaves
    preferred_batch_sizes: tuple[int, ...] = ()  # default none (Triton forms the largest batch it can)
    dynamic_batching: bool = True
    from_bench: Path | None = None  # a `vitdeploy bench --p99-budget` report
    tensorrt: str | None = None  # fp32 | fp16: ONNX Runtime's TensorRT accelerator (GPU only)
    cuda_graphs: bool = False  # GPU only; needs one input shape per call, so no dynamic batching
    storage_uri: str | None = None  # KServe: where the repository is uploaded (default: a placeholder to replace)
    force: bool = False  # write into an output folder that holds files vitdeploy did not write (outputs.py)


@dataclass
class WebRequest(_Request):
    """`vitdeploy web`: a static folder that runs the model in a browser."""

    model: Path | None = None  # None: the newest .onnx under models/
    out: Path = Path("web")
    force: bool = False  # write into an output folder that holds files vitdeploy did not write (outputs.py)


# serve's largest batch by device. CPU: ViT-Ti/16 on ONNX Runtime gains next to nothing past 8 (AMD EPYC, quiet: batch
# 32 at 1.03x batch 8's images/s, at 4x its latency) and loses past it on a busy machine (Intel Xeon Ice Lake, load
# 13-16: 40-46 ms of CPU per image at batch 32 against 34-36 at 8; the server at saturation 8.8 requests/s with 8
# against 7.4 with 32); benchmarks/results/serve-ceiling-vit-ti16.json. GPU: large batches are what it is fast at.
SERVE_MAX_BATCH = {"cpu": 8, "gpu": 32}


@dataclass
class ServeSettings(_Request):
    """`vitdeploy serve` (the model is an argument)."""

    host: str = "127.0.0.1"
    port: int = 8000
    runtime: str | None = None  # None: the one the file was made for, else ort (predict's rule: runtime_for_file)
    device: str = "auto"
    threads: int | None = None
    name: str | None = None  # the model's name in the protocol; default: the file name without .onnx
    max_batch_size: int | None = None  # None: SERVE_MAX_BATCH for the device the model opened on
    max_queue_delay_ms: float = MAX_QUEUE_DELAY_MS
    max_body_mb: float = 64.0
    decode_threads: int | None = None  # threads decoding /classify images; None: one per core
    top_k: int = 5
