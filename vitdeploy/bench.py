"""Fair latency / throughput benchmark of one ViT across runtimes: benchmark(...) -> BenchReport.

Protocol (what makes the comparison fair on a noisy machine):
  - every variant gets the identical input batch (one seeded array per batch size, staged per variant untimed);
  - warm-up by count AND by time, then at least `min_iters` timed runs AND at least `min_seconds` per point;
  - variants run round-robin, one inference each per round, so machine drift hits all of them alike;
  - CPU timings are perf_counter around one call; CUDA timings are CUDA events on the stream the work runs on
    (or wall-clock around a run that ends synchronised, when torch cannot see the GPU);
  - cold start (building the model / creating the session, then the first inference) is reported apart from
    the steady state; threads are set for torch and ONNX Runtime alike and recorded.
Figures: p50 / p90 / p99 / mean / std latency, images/s, speed-up against PyTorch eager on the same device in the
same run, and model FLOPs utilisation (analytic FLOPs from flops.py against the fp32 matmul rate measured in the
same rounds as the variants, so that a shared machine's load weighs on both sides of the ratio).
"""

from __future__ import annotations

import abc
import collections
import contextlib
import functools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitdeploy.bundle import BundleInfo, read_bundle_info
from vitdeploy.config import ModelConfig, get_preset
from vitdeploy.errors import CheckFailed, ConfigError, DeviceError, ModelFileError
from vitdeploy.flops import count_macs
from vitdeploy.onnx_file import INPUT_NAME, OUTPUT_NAME
from vitdeploy.runtime import CPU, CUDA, cuda_status, load_model_info, make_session

SCHEMA = "vitdeploy.bench/1"
DEFAULT_BATCH_SIZES = (1, 8, 32)


@dataclass(frozen=True)
class VariantSpec:
    name: str
    runtime: str  # "torch" | "onnxruntime"
    device: str  # "cpu" | "cuda"
    precision: str
    description: str


VARIANTS: dict[str, VariantSpec] = {
    v.name: v
    for v in (
        VariantSpec("torch", "torch", "cpu", "fp32", "PyTorch eager, inference_mode"),
        VariantSpec("ort-cpu", "onnxruntime", "cpu", "fp32", "ONNX Runtime CPU, graph optimisation ALL"),
        VariantSpec(
            "ort-cpu-fused", "onnxruntime", "cpu", "fp32",
            "ONNX Runtime CPU on the transformers-optimised graph (optimize_model, model_type=vit)",
        ),
        VariantSpec(
            "ort-cpu-int8", "onnxruntime", "cpu", "int8",
            "ONNX Runtime CPU, dynamic INT8 quantisation of the fused graph (speed only: accuracy not judged here)",
        ),
        VariantSpec("torch-cuda", "torch", "cuda", "fp32", "PyTorch eager on CUDA, input resident on the GPU"),
        VariantSpec("ort-cuda", "onnxruntime", "cuda", "fp32", "ONNX Runtime CUDA, IO binding (input/output on GPU)"),
        VariantSpec(
            "ort-cuda-graph", "onnxruntime", "cuda", "fp32",
            "ONNX Runtime CUDA, IO binding + CUDA graph (one captured graph per batch size)",
        ),
        VariantSpec(
            "ort-cuda-fp16", "onnxruntime", "cuda", "fp16",
            "ONNX Runtime CUDA, IO binding, fused graph converted to fp16 (fp32 input and output)",
        ),
    )
}
# The baseline every speed-up is measured against, per device.
EAGER = {"cpu": "torch", "cuda": "torch-cuda"}


@dataclass(frozen=True)
class BenchSettings:
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    variants: tuple[str, ...] | None = None  # None: every variant that can run here
    warmup_iters: int = 3
    warmup_seconds: float = 1.0
    min_iters: int = 10
    min_seconds: float = 2.0
    threads: int | None = None  # None: one per CPU core
    seed: int = 0  # of the random input batch

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}")
        if self.variants is not None:
            unknown = [v for v in self.variants if v not in VARIANTS]
            if unknown or not self.variants:
                raise ConfigError(f"unknown variant(s) {unknown}; choose from: {', '.join(VARIANTS)}")
        if self.min_iters < 1 or self.warmup_iters < 0 or self.min_seconds < 0 or self.warmup_seconds < 0:
            raise ConfigError("iteration counts and durations must not be negative (min_iters at least 1)")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")

    @property
    def thread_count(self) -> int:
        return self.threads or os.cpu_count() or 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_sizes": list(self.batch_sizes),
            "variants": list(self.variants) if self.variants else None,
            "warmup_iters": self.warmup_iters,
            "warmup_seconds": self.warmup_seconds,
            "min_iters": self.min_iters,
            "min_seconds": self.min_seconds,
            "threads": self.thread_count,
            "seed": self.seed,
        }


@dataclass
class ModelUnderTest:
    """The model both sides run: the .onnx file and, for the PyTorch variants, the weights it came from."""

    onnx_path: Path
    config: ModelConfig
    source: str  # "preset:vit-ti16", or the .onnx path
    bundle: Path | None = None
    torch_state: dict[str, Any] | None = None  # weights already in memory (preset); else read from `bundle`


# ------------------------------------------------------------------------------------------ statistics


@dataclass
class PointResult:
    """One variant at one batch size, steady state."""

    variant: str
    batch_size: int
    latencies_s: list[float]
    speedup_vs_eager: float | None = None
    peak_gflops: float | None = None  # the run's matmul peak on this device, which MFU divides by
    mfu: float | None = None

    @property
    def iterations(self) -> int:
        return len(self.latencies_s)

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) * 1e3

    @property
    def mean_s(self) -> float:
        return float(np.mean(self.latencies_s))

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.mean_s

    def to_dict(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_s)
        return {
            "variant": self.variant,
            "batch_size": self.batch_size,
            "iterations": self.iterations,
            "measured_s": round(float(lat.sum()), 4),
            "p50_ms": round(self.percentile_ms(50), 4),
            "p90_ms": round(self.percentile_ms(90), 4),
            "p99_ms": round(self.percentile_ms(99), 4),
            "mean_ms": round(self.mean_s * 1e3, 4),
            "std_ms": round(float(lat.std(ddof=1)) * 1e3 if len(lat) > 1 else 0.0, 4),
            "min_ms": round(float(lat.min()) * 1e3, 4),
            "images_per_s": round(self.images_per_s, 3),
            "speedup_vs_eager": round(self.speedup_vs_eager, 3) if self.speedup_vs_eager else None,
            "peak_gflops": round(self.peak_gflops, 2) if self.peak_gflops else None,
            "mfu": round(self.mfu, 4) if self.mfu is not None else None,
        }


@dataclass
class BenchReport:
    model: dict[str, Any]
    settings: BenchSettings
    environment: dict[str, Any]
    peak_gflops: dict[str, float]  # device -> the fastest single matmul of the run, as GFLOP/s
    # name -> runtime, device, precision, providers, cold start, and graph_ops: the op counts of the .onnx file the
    # session loads (ORT fuses further when it creates the session)
    variants: dict[str, dict[str, Any]]
    skipped: dict[str, str]  # variant -> why it did not run
    points: list[PointResult]
    end_to_end: dict[str, Any] | None = None
    created_at: str = ""
    recommendation: dict[str, Any] | None = None  # set by recommend_batch_size (--p99-budget)
    regression: dict[str, Any] | None = None  # set by compare_to_baseline (--baseline)

    def point(self, variant: str, batch_size: int) -> PointResult | None:
        return next((p for p in self.points if p.variant == variant and p.batch_size == batch_size), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "created_at": self.created_at,
            "model": self.model,
            "settings": self.settings.to_dict(),
            "environment": self.environment,
            "peak_gflops": self.peak_gflops,
            "variants": self.variants,
            "skipped": self.skipped,
            "results": [p.to_dict() for p in self.points],
            "end_to_end": self.end_to_end,
            "recommendation": self.recommendation,
            "regression": self.regression,
        }


# --------------------------------------------------------------------------------------------- runners


class Runner(abc.ABC):
    """One variant: created once (timed as cold start), staged per batch size (untimed), run many times."""

    spec: VariantSpec
    providers: list[str]

    @abc.abstractmethod
    def create(self) -> None:
        """Build the model or open the session."""

    @abc.abstractmethod
    def stage(self, batch: np.ndarray) -> None:
        """Put this batch where the variant reads it (e.g. on the GPU), so that no copy is timed."""

    @abc.abstractmethod
    def run(self) -> float:
        """One inference on the staged batch; its latency in seconds."""

    def describe(self) -> dict[str, Any]:
        return {}


class TorchRunner(Runner):
    def __init__(self, spec: VariantSpec, model: ModelUnderTest):
        self.spec = spec
        self.model_under_test = model
        self.providers = [f"torch-{spec.device}"]

    def create(self) -> None:
        import torch

        from vitdeploy.bundle import load_bundle
        from vitdeploy.model import build_model

        mut = self.model_under_test
        if mut.torch_state is not None:
            model = build_model(mut.config)
            model.load_state_dict(mut.torch_state)
        else:
            assert mut.bundle is not None  # _plan_variants only creates torch runners with weights
            model, _ = load_bundle(mut.bundle)
        self.model = model.to(self.spec.device).eval()
        self.timer = CudaEventTimer() if self.spec.device == "cuda" else None
        self.torch = torch

    def stage(self, batch: np.ndarray) -> None:
        self.input = self.torch.from_numpy(batch).to(self.spec.device)

    def run(self) -> float:
        with self.torch.inference_mode():
            if self.timer:
                return self.timer.time(lambda: self.model(self.input))
            started = time.perf_counter()
            self.model(self.input)
            return time.perf_counter() - started


class OrtCpuRunner(Runner):
    def __init__(self, spec: VariantSpec, path: Path, threads: int, graph_ops: dict[str, int] | None = None):
        self.spec = spec
        self.path = path
        self.threads = threads
        self.graph_ops = graph_ops or {}

    def create(self) -> None:
        self.session, _ = make_session(self.path, device="cpu", threads=self.threads)
        self.providers = self.session.get_providers()

    def stage(self, batch: np.ndarray) -> None:
        self.feed = {INPUT_NAME: batch}

    def run(self) -> float:
        started = time.perf_counter()
        self.session.run([OUTPUT_NAME], self.feed)
        return time.perf_counter() - started

    def describe(self) -> dict[str, Any]:
        return {"graph_ops": self.graph_ops} if self.graph_ops else {}


class OrtCudaRunner(Runner):
    """ONNX Runtime on CUDA with IO binding: input and output live on the GPU, so no host copy is timed.

    With `cuda_graph`, ORT captures the whole run as one CUDA graph; a graph fixes the shapes and addresses, so
    each batch size gets its own session and preallocated output.
    """

    def __init__(self, spec: VariantSpec, path: Path, threads: int, cuda_graph: bool,
                 graph_ops: dict[str, int] | None = None):
        self.spec = spec
        self.path = path
        self.threads = threads
        self.cuda_graph = cuda_graph
        self.graph_ops = graph_ops or {}
        self.session: Any = None
        self.graph_shape: tuple[int, ...] | None = None  # the input shape the current CUDA graph was captured for

    def _new_session(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        cuda_options: dict[str, str] = {"enable_cuda_graph": "1" if self.cuda_graph else "0"}
        self.timer = CudaEventTimer.for_onnxruntime()
        if self.timer:
            # ORT works on torch's stream, so torch's CUDA events bracket exactly the ORT kernels.
            cuda_options["user_compute_stream"] = str(self.timer.stream.cuda_stream)
        session = ort.InferenceSession(os.fspath(self.path), options, providers=[(CUDA, cuda_options), CPU])
        if session.get_providers()[0] != CUDA:
            raise DeviceError(f"{self.spec.name}: the session fell back to CPU")
        self.providers = session.get_providers()
        return session

    def create(self) -> None:
        self.session = self._new_session()

    def stage(self, batch: np.ndarray) -> None:
        import onnxruntime as ort

        if self.cuda_graph:
            if self.graph_shape not in (None, batch.shape):
                self.session = self._new_session()  # a captured graph is bound to one shape
            self.graph_shape = batch.shape
        num_classes = self.session.get_outputs()[0].shape[-1]
        self.input = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0)
        self.output = ort.OrtValue.ortvalue_from_shape_and_type((batch.shape[0], num_classes), np.float32, "cuda", 0)
        self.binding = self.session.io_binding()
        self.binding.bind_ortvalue_input(INPUT_NAME, self.input)
        self.binding.bind_ortvalue_output(OUTPUT_NAME, self.output)

    def _run_once(self) -> None:
        self.session.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()

    def run(self) -> float:
        if self.timer:
            return self.timer.time(self._run_once)
        started = time.perf_counter()
        self._run_once()
        return time.perf_counter() - started

    def describe(self) -> dict[str, Any]:
        return {"graph_ops": self.graph_ops} if self.graph_ops else {}


class CudaEventTimer:
    """Times GPU work with CUDA events recorded on the stream that runs it, then waits for the end event."""

    def __init__(self, own_stream: bool = False) -> None:
        import torch

        self.torch = torch
        # torch's default stream has handle 0, which ORT takes for "no stream": ORT needs a stream of its own.
        self.stream = torch.cuda.Stream() if own_stream else torch.cuda.current_stream()

    @classmethod
    def for_onnxruntime(cls) -> CudaEventTimer | None:
        """A timer on a new stream for ORT to run on, or None when torch cannot see the GPU."""
        import torch

        return cls(own_stream=True) if torch.cuda.is_available() else None

    def time(self, work: Callable[[], Any]) -> float:
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        start.record(self.stream)
        work()
        end.record(self.stream)
        end.synchronize()
        return start.elapsed_time(end) / 1e3


# ---------------------------------------------------------------------------------------- preparation


def model_from_preset(name: str, workdir: Path, seed: int = 0) -> ModelUnderTest:
    """Build a preset's architecture with random weights (seeded) and export it, so anyone can compare."""
    import torch

    from vitdeploy.onnx_export import export_model
    from vitdeploy.model import build_model

    preset = get_preset(name)
    torch.manual_seed(seed)
    model = build_model(preset.model).eval()
    info = BundleInfo(model=preset.model, preprocess=preset.preprocess_spec(),
                      labels=[str(i) for i in range(preset.model.num_classes)])
    # Parity is export's and verify's business; random weights need no accuracy check.
    path = export_model(model, info, workdir / f"{name}.onnx", verify=False).path
    return ModelUnderTest(path, preset.model, f"preset:{name}", torch_state=model.state_dict())


def model_from_files(onnx_path: Path | None, bundle: Path | None) -> ModelUnderTest:
    """An exported .onnx (default: the newest under models/) and its bundle (default: the one it names)."""
    from vitdeploy.onnx_file import resolve_model

    path = resolve_model(onnx_path)
    info = load_model_info(path)
    if bundle is None:
        named = info.export.get("bundle")
        bundle = Path(named) if named and Path(named).is_dir() else None
    if bundle is not None:
        bundle_info = read_bundle_info(bundle)
        if info.model_config is not None and bundle_info.model != info.model_config:
            raise ModelFileError(f"{path} and bundle {bundle} describe different model configs")
    config = info.model_config or (read_bundle_info(bundle).model if bundle else None)
    if config is None:
        raise ModelFileError(f"{path} has no model config in its metadata and no --bundle was given")
    return ModelUnderTest(path, config, str(path), bundle=bundle)


def fuse_for_cpu(path: Path, config: ModelConfig, out: Path) -> dict[str, int]:
    """The fused fp32 variant, made exactly as `export --optimize` makes it; returns graph op counts."""
    import onnx

    from vitdeploy.graph_variants import fuse_transformer

    fused, _ = fuse_transformer(path, config)
    onnx.save_model(fused, os.fspath(out))
    return graph_op_counts(out)


def quantize_int8(fused: Path, out: Path) -> dict[str, int]:
    """Dynamic INT8 (a preset has no training images to calibrate static INT8), as `export --precision int8
    --int8-method dynamic` makes it."""
    import onnx

    from vitdeploy.graph_variants import to_int8_dynamic

    with tempfile.TemporaryDirectory(dir=out.parent) as workdir:
        quantized, _ = to_int8_dynamic(onnx.load(os.fspath(fused)), Path(workdir))
    onnx.save_model(quantized, os.fspath(out))
    return graph_op_counts(out)


def convert_fp16(fused: Path, out: Path) -> dict[str, int]:
    """fp16 as `export --precision fp16` makes it: fp32 input/output, LayerNorm and Softmax kept fp32."""
    import onnx

    from vitdeploy.graph_variants import to_fp16

    onnx.save_model(to_fp16(onnx.load(os.fspath(fused))), os.fspath(out))
    return graph_op_counts(out)


def graph_op_counts(path: Path) -> dict[str, int]:
    import onnx

    ops = collections.Counter(node.op_type for node in onnx.load(os.fspath(path), load_external_data=False).graph.node)
    return dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))


def _cuda_problem(device: str) -> str | None:
    """Why variants on `device` cannot run here, or None."""
    if device != "cuda":
        return None
    return None if cuda_status().usable else cuda_status().summary or cuda_status().reason


def _torch_cuda_problem() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "torch sees no CUDA device"


def _plan_variants(settings: BenchSettings, model: ModelUnderTest) -> tuple[list[str], dict[str, str]]:
    """(variants to run, skipped variant -> reason). Explicitly requested variants that cannot run raise."""
    requested = list(settings.variants) if settings.variants else list(VARIANTS)
    chosen, skipped = [], {}
    for name in requested:
        spec = VARIANTS[name]
        if spec.runtime == "torch" and model.torch_state is None and model.bundle is None:
            reason = "no model bundle: PyTorch needs the weights (pass --bundle DIR)"
        elif spec.runtime == "torch":
            reason = _torch_cuda_problem() if spec.device == "cuda" else None
        else:
            reason = _cuda_problem(spec.device)
        if reason is None:
            chosen.append(name)
        elif settings.variants:
            error = DeviceError if spec.device == "cuda" else ConfigError
            raise error(f"variant {name} cannot run here: {reason}")
        else:
            skipped[name] = reason
    return chosen, skipped


def _make_runners(names: list[str], model: ModelUnderTest, workdir: Path, threads: int) -> list[Runner]:
    @functools.cache
    def fused() -> tuple[Path, dict[str, int]]:
        out = workdir / "fused.onnx"
        return out, fuse_for_cpu(model.onnx_path, model.config, out)

    runners: list[Runner] = []
    for name in names:
        spec = VARIANTS[name]
        if spec.runtime == "torch":
            runners.append(TorchRunner(spec, model))
        elif name == "ort-cpu":
            runners.append(OrtCpuRunner(spec, model.onnx_path, threads, graph_op_counts(model.onnx_path)))
        elif name == "ort-cpu-fused":
            path, ops = fused()
            runners.append(OrtCpuRunner(spec, path, threads, ops))
        elif name == "ort-cpu-int8":
            out = workdir / "int8.onnx"
            runners.append(OrtCpuRunner(spec, out, threads, quantize_int8(fused()[0], out)))
        elif name in ("ort-cuda", "ort-cuda-graph"):
            runners.append(OrtCudaRunner(spec, model.onnx_path, threads, cuda_graph=name == "ort-cuda-graph",
                                         graph_ops=graph_op_counts(model.onnx_path)))
        elif name == "ort-cuda-fp16":
            out = workdir / "fp16.onnx"
            runners.append(OrtCudaRunner(spec, out, threads, cuda_graph=False,
                                         graph_ops=convert_fp16(fused()[0], out)))
    return runners


# ------------------------------------------------------------------------------------------ measuring


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class MatmulPeakRunner(Runner):
    """Square fp32 matmuls timed in the same rounds as the variants, all through the run: the fastest of them is
    the machine's fp32 peak, sampled across the same stretch of time (and load) as the figures it is compared with.

    On CPU the matmul runs on one thread and the peak is that rate times the thread count: a multi-threaded BLAS
    call stalls whenever another process holds one of its cores, which would understate the peak (and put MFU
    above 100%), while one core's rate scales to N cores at best, so the peak errs on the high side.
    """

    def __init__(self, device: str, threads: int):
        self.spec = VariantSpec(f"matmul-peak-{device}", "torch", device, "fp32", "torch.mm of square fp32 matrices")
        # Large enough to reach the BLAS peak, small enough not to add much to each round.
        self.size = 4096 if device == "cuda" else 1024
        # FLOPs credited per run: on CPU, as if each of the `threads` cores had done one.
        self.flops = 2 * self.size**3 * (1 if device == "cuda" else threads)

    def create(self) -> None:
        import torch

        if self.spec.device == "cuda":
            # The fp32 peak must be real fp32: TF32 tensor cores would inflate it.
            torch.backends.cuda.matmul.allow_tf32 = False
        generator = torch.Generator().manual_seed(0)
        self.a = torch.randn(self.size, self.size, generator=generator).to(self.spec.device)
        self.b = torch.randn(self.size, self.size, generator=generator).to(self.spec.device)
        self.timer = CudaEventTimer() if self.spec.device == "cuda" else None
        self.torch = torch

    def stage(self, batch: np.ndarray) -> None:
        pass  # the same matrices at every batch size

    def run(self) -> float:
        if self.timer:
            return self.timer.time(lambda: self.torch.mm(self.a, self.b))
        with torch_threads(1):
            started = time.perf_counter()
            self.torch.mm(self.a, self.b)
            return time.perf_counter() - started


def _measure_point(
    runners: list[Runner], settings: BenchSettings, companions: Sequence[Runner] = ()
) -> dict[str, list[float]]:
    """Warm up, then time all runners round-robin until each has min_iters runs and min_seconds of runs.

    Companions (the matmul peak) run once in every round but do not decide when the point is done.
    """

    def satisfied(times: list[float], iters: int, seconds: float) -> bool:
        return len(times) >= iters and sum(times) >= seconds

    warm: dict[str, list[float]] = {r.spec.name: [] for r in [*runners, *companions]}
    timed: dict[str, list[float]] = {r.spec.name: [] for r in [*runners, *companions]}
    for log, iters, seconds in ((warm, settings.warmup_iters, settings.warmup_seconds),
                                (timed, settings.min_iters, settings.min_seconds)):
        while pending := [r for r in runners if not satisfied(log[r.spec.name], iters, seconds)]:
            for runner in [*pending, *companions]:
                log[runner.spec.name].append(runner.run())
    return timed


def benchmark(
    model: ModelUnderTest,
    settings: BenchSettings = BenchSettings(),
    log: Callable[[str], None] = lambda message: None,
    end_to_end_images: list[Path] | None = None,
) -> BenchReport:
    """Run every chosen variant on `model` at every batch size, interleaved; see the module docstring."""
    from vitdeploy.provenance import now_iso

    names, skipped = _plan_variants(settings, model)
    by_reason: dict[str, list[str]] = collections.defaultdict(list)
    for name, reason in skipped.items():
        by_reason[reason].append(name)
    for reason, skipped_names in by_reason.items():
        log(f"skipping {', '.join(skipped_names)}: {reason}")
    threads = settings.thread_count
    _warn_if_busy(log)
    macs = count_macs(model.config)
    variants: dict[str, dict[str, Any]] = {}
    points: list[PointResult] = []
    with tempfile.TemporaryDirectory(prefix="vitdeploy-bench-") as tmp, torch_threads(threads):
        env = environment(threads)  # before the run: the load average says what the figures competed with
        runners = _make_runners(names, model, Path(tmp), threads)
        first_batch = _input_batch(model.config, settings.batch_sizes[0], settings.seed)
        for runner in runners:
            variants[runner.spec.name] = _cold_start(runner, first_batch)
            log(f"{runner.spec.name}: ready on {runner.providers[0]} "
                f"(create {variants[runner.spec.name]['cold_start']['create_ms']:.0f} ms)")
        # MFU on CUDA needs torch to measure the GPU's peak; without it that MFU stays None.
        devices = {r.spec.device for r in runners} - ({"cuda"} if _torch_cuda_problem() else set())
        peak_runners = {device: MatmulPeakRunner(device, threads) for device in sorted(devices)}
        for peak_runner in peak_runners.values():
            peak_runner.create()
        peak: dict[tuple[str, int], float] = {}  # (device, batch size) -> best GFLOP/s measured with that point
        for batch_size in settings.batch_sizes:
            batch = _input_batch(model.config, batch_size, settings.seed)
            for runner in runners:
                runner.stage(batch)
            log(f"batch {batch_size}: timing {', '.join(names)} round-robin")
            timed = _measure_point(runners, settings, list(peak_runners.values()))
            for device, peak_runner in peak_runners.items():
                peak[device, batch_size] = peak_runner.flops / min(timed.pop(peak_runner.spec.name)) / 1e9
            for name, latencies in timed.items():
                points.append(PointResult(name, batch_size, latencies))
        end_to_end = (
            _end_to_end(model, end_to_end_images, max(settings.batch_sizes), threads) if end_to_end_images else None
        )
    # The peak is the fastest single matmul of the whole run: what the hardware gives one uninterrupted GEMM.
    # (A mean rate would sink with the load, and MFU above 100% would then be noise, not the model.)
    run_peak = {device: max(g for (d, _), g in peak.items() if d == device) for device in peak_runners}
    for point in points:
        spec = VARIANTS[point.variant]
        eager = next((p for p in points if p.variant == EAGER[spec.device] and p.batch_size == point.batch_size), None)
        point.speedup_vs_eager = eager.mean_s / point.mean_s if eager else None
        point.peak_gflops = run_peak.get(spec.device)
        # MFU is against the fp32 peak, so it is only stated for fp32 variants.
        if point.peak_gflops and spec.precision == "fp32":
            point.mfu = macs.flops * point.images_per_s / (point.peak_gflops * 1e9)
    return BenchReport(
        model={"source": model.source, "onnx": str(model.onnx_path), "bundle": str(model.bundle) if model.bundle else None,
               "config": model.config.to_dict(), "macs_per_image": macs.to_dict()},
        settings=settings,
        environment=env,
        peak_gflops={device: round(gflops, 2) for device, gflops in run_peak.items()},
        variants=variants,
        skipped=skipped,
        points=points,
        end_to_end=end_to_end,
        created_at=now_iso(),
    )


def run_bench(
    model: Path | None,
    bundle: Path | None,
    preset: str | None,
    settings: BenchSettings,
    end_to_end_inputs: list[str] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> BenchReport:
    """What `vitdeploy bench` does: pick the model (a preset with random weights, or an exported file and its
    bundle, by default the newest under models/), then benchmark it."""
    from vitdeploy.prediction import expand_inputs

    if preset and (model or bundle):
        raise ConfigError("--preset builds and exports its own model: give either MODEL/--bundle or --preset")
    images: list[Path] = []
    if end_to_end_inputs:
        images, unmatched = expand_inputs(end_to_end_inputs)
        if unmatched or not images:
            raise ConfigError(f"--end-to-end: no images found for {', '.join(unmatched) or end_to_end_inputs}")
    with tempfile.TemporaryDirectory(prefix="vitdeploy-bench-model-") as tmp:
        if preset:
            log(f"building {preset} with random weights (seed {settings.seed}) and exporting it")
            under_test = model_from_preset(preset, Path(tmp), settings.seed)
        else:
            under_test = model_from_files(model, bundle)
        return benchmark(under_test, settings, log, images or None)


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{what}: empty list")
    return values


def parse_variants(text: str | None) -> tuple[str, ...] | None:
    return tuple(part.strip() for part in text.split(",") if part.strip()) if text else None


def _warn_if_busy(log: Callable[[str], None]) -> None:
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5 * cores:
        log(f"warning: load average {load:.1f} on {cores} cores: other processes compete for the CPU, so the "
            "figures will be noisy, and multi-threaded PyTorch can stall outright (compare with --threads 1)")


def _input_batch(cfg: ModelConfig, batch_size: int, seed: int) -> np.ndarray:
    # Seeded per batch size: every variant sees exactly this array.
    rng = np.random.default_rng(seed + batch_size)
    return rng.standard_normal((batch_size, cfg.in_channels, cfg.image_size, cfg.image_size), dtype=np.float32)


def _cold_start(runner: Runner, batch: np.ndarray) -> dict[str, Any]:
    started = time.perf_counter()
    runner.create()
    created = time.perf_counter() - started
    runner.stage(batch)
    first = runner.run()
    spec = runner.spec
    return {
        "runtime": spec.runtime,
        "device": spec.device,
        "precision": spec.precision,
        "description": spec.description,
        "providers": runner.providers,
        "cold_start": {"create_ms": round(created * 1e3, 2), "first_run_ms": round(first * 1e3, 2),
                       "first_batch_size": int(batch.shape[0])},
        **runner.describe(),
    }


# ------------------------------------------------------------------------------------------ end to end


def _end_to_end(model: ModelUnderTest, paths: list[Path], batch_size: int, threads: int) -> dict[str, Any]:
    """Where the time goes from image file to logits: decode / preprocess / model, per image, on ORT CPU.

    The stages are predict's (images.decode_for_preprocess, then images.preprocess, then one session run per
    batch), run one after another here so that each can be timed alone.
    """
    from vitdeploy import images

    session, provider = make_session(model.onnx_path, device="cpu", threads=threads)
    spec = load_model_info(model.onnx_path).preprocess
    seconds = {"decode": 0.0, "preprocess": 0.0, "model": 0.0}
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        started = time.perf_counter()
        decoded = [images.decode_for_preprocess(path, spec) for path in chunk]
        after_decode = time.perf_counter()
        pixels = np.stack([images.preprocess(image, spec) for image in decoded])
        after_preprocess = time.perf_counter()
        session.run([OUTPUT_NAME], {INPUT_NAME: pixels})
        seconds["decode"] += after_decode - started
        seconds["preprocess"] += after_preprocess - after_decode
        seconds["model"] += time.perf_counter() - after_preprocess
    total = sum(seconds.values())
    return {
        "images": len(paths),
        "batch_size": batch_size,
        "provider": provider,
        "per_image_ms": {stage: round(s / len(paths) * 1e3, 3) for stage, s in seconds.items()},
        "share": {stage: round(s / total, 4) for stage, s in seconds.items()},
        "images_per_s": round(len(paths) / total, 3),
    }


# ---------------------------------------------------------------------------------------- environment


def environment(threads: int) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from vitdeploy.provenance import machine, package_versions

    return {
        **machine(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
        "onnxruntime_available_providers": ort.get_available_providers(),
        "onnxruntime_cuda": "usable" if cuda_status().usable else cuda_status().summary,
        "gpus": _gpus(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _gpus() -> list[dict[str, str]]:
    """GPU names and driver version from nvidia-smi; [] where there is none."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[part.strip() for part in line.split(",")] for line in out.strip().splitlines()]
    return [{"name": r[0], "driver": r[1], "memory": r[2]} for r in rows if len(r) == 3]


# ------------------------------------------------------------------------------- reading the results


def recommend_batch_size(report: BenchReport, p99_budget_ms: float) -> dict[str, Any]:
    """Per variant, the largest batch size whose p99 meets the budget; overall, the highest throughput among those."""
    per_variant: dict[str, dict[str, Any] | None] = {}
    for name in report.variants:
        fitting = [p for p in report.points if p.variant == name and p.percentile_ms(99) <= p99_budget_ms]
        best = max(fitting, key=lambda p: p.batch_size, default=None)
        per_variant[name] = (
            {"batch_size": best.batch_size, "p99_ms": round(best.percentile_ms(99), 3),
             "images_per_s": round(best.images_per_s, 3)} if best else None
        )
    candidates = [(name, rec) for name, rec in per_variant.items() if rec]
    overall = max(candidates, key=lambda item: item[1]["images_per_s"], default=None)
    return {
        "p99_budget_ms": p99_budget_ms,
        "per_variant": per_variant,
        "best": {"variant": overall[0], **overall[1]} if overall else None,
    }


def load_report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read benchmark baseline {path}: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("results"), list):
        raise ConfigError(f"{path} is not a vitdeploy bench report (schema {SCHEMA})")
    return data


def compare_to_baseline(report: BenchReport, baseline: dict[str, Any], max_regress_pct: float) -> dict[str, Any]:
    """Compare median (p50) latency per variant and batch size with a baseline report.

    The median, not the mean, because one descheduled run on a shared machine moves the mean but not the median.
    """
    rows, regressed = [], []
    for old in baseline["results"]:
        new = report.point(old.get("variant"), old.get("batch_size"))
        if new is None or not old.get("p50_ms"):
            continue
        change = (new.percentile_ms(50) / old["p50_ms"] - 1) * 100
        row = {"variant": new.variant, "batch_size": new.batch_size, "baseline_p50_ms": old["p50_ms"],
               "p50_ms": round(new.percentile_ms(50), 4), "change_pct": round(change, 2),
               "regressed": change > max_regress_pct}
        rows.append(row)
        if row["regressed"]:
            regressed.append(f"{new.variant} @ batch {new.batch_size}: {change:+.1f}%")
    return {"max_regress_pct": max_regress_pct, "compared": rows, "regressed": regressed}


def check_regressions(comparison: dict[str, Any]) -> None:
    if not comparison["compared"]:
        raise CheckFailed("no variant and batch size in common with the baseline: nothing was compared")
    if comparison["regressed"]:
        raise CheckFailed(
            f"slower than the baseline by more than {comparison['max_regress_pct']}%: "
            + "; ".join(comparison["regressed"])
        )


def plot_report(report: BenchReport, path: Path) -> Path:
    """Latency (p50, with the p90 band) and throughput against batch size, one line per variant."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'vitdeploy[plot]'") from None
    from vitdeploy.atomic import atomic_write

    figure, (latency_axis, throughput_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in report.variants:
        points = sorted((p for p in report.points if p.variant == name), key=lambda p: p.batch_size)
        sizes = [p.batch_size for p in points]
        line, = latency_axis.plot(sizes, [p.percentile_ms(50) for p in points], marker="o", label=name)
        latency_axis.fill_between(sizes, [p.percentile_ms(50) for p in points],
                                  [p.percentile_ms(90) for p in points], color=line.get_color(), alpha=0.15)
        throughput_axis.plot(sizes, [p.images_per_s for p in points], marker="o", label=name)
    for axis, label in ((latency_axis, "latency per batch, ms (p50; band to p90)"),
                        (throughput_axis, "throughput, images/s")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(list(report.settings.batch_sizes), [str(b) for b in report.settings.batch_sizes])
        axis.set_xlabel("batch size")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    latency_axis.set_yscale("log")
    throughput_axis.legend(fontsize=8)
    figure.suptitle(f"{report.model['source']} - {report.environment.get('cpu')}, {report.settings.thread_count} threads",
                    fontsize=9)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=120, format="png"))
    plt.close(figure)
    return path


def results_table(report: BenchReport) -> Any:
    """The figures as a rich Table, grouped by batch size."""
    from rich.table import Table

    from rich import box

    table = Table(title=f"{report.model['source']}: {report.model['macs_per_image']['gmacs']:.3f} GMACs/image, "
                        f"{report.settings.thread_count} threads; latencies in ms",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("variant", "batch", "p50", "p90", "p99", "mean", "std", "img/s", "×eager", "MFU"):
        table.add_column(column, justify="left" if column == "variant" else "right", no_wrap=True)
    for point in sorted(report.points, key=lambda p: (p.batch_size, list(report.variants).index(p.variant))):
        row = point.to_dict()
        table.add_row(
            point.variant, str(point.batch_size), f"{row['p50_ms']:.1f}", f"{row['p90_ms']:.1f}",
            f"{row['p99_ms']:.1f}", f"{row['mean_ms']:.1f}", f"{row['std_ms']:.1f}", f"{row['images_per_s']:.1f}",
            f"{row['speedup_vs_eager']:.2f}" if row["speedup_vs_eager"] else "-",
            f"{row['mfu']:.1%}" if row["mfu"] is not None else "-",
        )
    return table


def summary_lines(report: BenchReport) -> list[str]:
    """Cold starts, peaks and the end-to-end split, one plain line each."""
    lines = [
        f"{name}: {v['providers'][0]}, create {v['cold_start']['create_ms']:.0f} ms, "
        f"first run {v['cold_start']['first_run_ms']:.1f} ms (batch {v['cold_start']['first_batch_size']})"
        for name, v in report.variants.items()
    ]
    lines += [f"fp32 matmul peak ({device}), measured round-robin with the variants: {gflops:.1f} GFLOP/s"
              for device, gflops in report.peak_gflops.items()]
    if report.end_to_end:
        e2e = report.end_to_end
        split = ", ".join(f"{stage} {ms:.2f} ms ({e2e['share'][stage]:.0%})" for stage, ms in e2e["per_image_ms"].items())
        lines.append(f"end to end, {e2e['images']} images in batches of {e2e['batch_size']}: {split} per image; "
                     f"{e2e['images_per_s']:.1f} images/s")
    if report.recommendation:
        best = report.recommendation["best"]
        lines.append(
            f"p99 budget {report.recommendation['p99_budget_ms']} ms: "
            + (f"batch {best['batch_size']} on {best['variant']} ({best['images_per_s']:.1f} images/s, "
               f"p99 {best['p99_ms']:.1f} ms)" if best else "no variant meets it at any batch size tried")
        )
    if report.regression:
        regressed = report.regression["regressed"]
        lines.append(
            f"against the baseline ({len(report.regression['compared'])} points compared, max "
            f"{report.regression['max_regress_pct']}%): " + ("; ".join(regressed) if regressed else "no regression")
        )
    return lines
