"""What can be benchmarked: the settings of a run, and why a variant cannot run here.

A variant is one way of running the model: a runtime (PyTorch eager, ONNX Runtime or OpenVINO) on a device (CPU,
CUDA, TensorRT), on one file (an export variant), in that file's precision: the catalogue is
vitdeploy.files.variants.BENCH_VARIANTS, each row pointing at the export variant whose file it times. The speed-up of every variant is measured against PyTorch eager on
the same device (EAGER), and against ONNX Runtime fp32 on the CPU (ORT_FP32) for the recommendation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vitdeploy.benchmark.environment import optional_torch
from vitdeploy.core.config import comma_list
from vitdeploy.core.strict_json import record
from vitdeploy.errors import ConfigError
from vitdeploy.files.variants import VARIANTS, VariantSpec
from vitdeploy.requests import BenchRequest

DEFAULT_BATCH_SIZES = BenchRequest.batch_sizes


# The baseline every speed-up is measured against, per device (TensorRT runs on the CUDA device).
EAGER = {"cpu": "torch", "cuda": "torch-cuda", "tensorrt": "torch-cuda"}
# The baseline of the recommendation: ONNX Runtime fp32 on the plain export, on the CPU.
ORT_FP32 = "ort-cpu"


@dataclass(frozen=True)
class BenchSettings:
    """How a benchmark times its variants; the defaults are `vitdeploy bench`'s (requests.BenchRequest)."""

    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    variants: tuple[str, ...] | None = None  # None: every variant that can run here
    warmup_iters: int = BenchRequest.warmup_iters
    warmup_seconds: float = BenchRequest.warmup_seconds
    min_iters: int = BenchRequest.min_iters
    min_seconds: float = BenchRequest.min_seconds
    block_idle: float = BenchRequest.block_idle  # seconds before each timed block (protocol.Blocks.idle_s)
    threads: int | None = None  # None: one per CPU core
    seed: int = 0  # of the random input batch
    runtimes: tuple[str, ...] | None = None  # only these runtimes' variants (PyTorch eager stays); None: all

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}")
        if self.variants is not None:
            unknown = [v for v in self.variants if v not in VARIANTS]
            if unknown or not self.variants:
                raise ConfigError(f"unknown variant(s) {unknown}; choose from: {', '.join(VARIANTS)}")
        if (self.min_iters < 1 or self.warmup_iters < 0 or self.min_seconds < 0 or self.warmup_seconds < 0
                or self.block_idle < 0):
            raise ConfigError("iteration counts and durations must not be negative (min_iters at least 1)")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        known = {spec.runtime for spec in VARIANTS.values()} - {"torch"}
        if self.runtimes is not None and (not self.runtimes or set(self.runtimes) - known):
            raise ConfigError(f"unknown runtime(s) {sorted(set(self.runtimes) - known) or []}; bench runs: "
                              f"{', '.join(sorted(known))}")

    @property
    def thread_count(self) -> int:
        return self.threads or os.cpu_count() or 1

    @property
    def requested(self) -> list[str]:
        """The variants asked for, in catalogue order when none were named (those of `runtimes`, and eager)."""
        if self.variants:
            return list(self.variants)
        return [name for name, spec in VARIANTS.items()
                if self.runtimes is None or spec.runtime == "torch" or spec.runtime in self.runtimes]

    def to_dict(self) -> dict[str, Any]:
        return record(self, threads=self.thread_count)


def runtime_problem(spec: VariantSpec) -> str | None:
    """Why this machine cannot run `spec`, or None. PyTorch needs torch installed, and on CUDA torch must see the
    GPU; ONNX Runtime on CUDA / TensorRT needs a real session on that provider (runtimes.ort); OpenVINO must be
    installed, with the device, and bf16 only where the CPU runs it natively."""
    if spec.runtime == "torch":
        torch = optional_torch()
        if torch is None:
            return "PyTorch is not installed"
        return "torch sees no CUDA device" if spec.device == "cuda" and not torch.cuda.is_available() else None
    if spec.runtime == "openvino":
        return _openvino_problem(spec)
    if spec.device == "cpu":
        return None
    from vitdeploy.runtimes.ort import cuda_status, tensorrt_status

    status = tensorrt_status() if spec.device == "tensorrt" else cuda_status()
    return None if status.usable else status.summary or status.reason


def _openvino_problem(spec: VariantSpec) -> str | None:
    from vitdeploy.runtimes import runtime_status

    status = runtime_status("openvino")
    if not status.usable:
        return status.reason
    if spec.device not in status.devices:
        return f"OpenVINO has no {spec.device.upper()} device here"
    # An INT8 file may run its unquantized ops in bf16 (ov-int8-bf16): that needs native bf16 as much as bf16 does.
    inference = getattr(spec.export, "inference_precision", None)
    for precision in sorted({spec.precision, inference} & {"bf16", "fp16"}):
        from vitdeploy.runtimes.openvino import CAPABILITY, capabilities

        if CAPABILITY[precision] not in capabilities(spec.device.upper()):
            return f"this {spec.device.upper()} does not run {precision} natively"
    return None


def parse_variants(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """'ort-cpu,ov-cpu' -> ('ort-cpu', 'ov-cpu'); None or '' -> None (every variant that can run here)."""
    return comma_list(text) or None
