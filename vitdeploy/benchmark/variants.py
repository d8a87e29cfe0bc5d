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

from vitdeploy.core.config import comma_list
from vitdeploy.core.strict_json import record
from vitdeploy.errors import ConfigError
from vitdeploy.exporting.capabilities import bench_problem
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
    """Why this machine cannot run `spec` natively, ending with what would (an install line or the hardware), or
    None: the machine record against the precisions the variant computes in (exporting.capabilities)."""
    return bench_problem(spec)


def parse_variants(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """'ort-cpu,ov-cpu' -> ('ort-cpu', 'ov-cpu'); None or '' -> None (every variant that can run here)."""
    return comma_list(text) or None
