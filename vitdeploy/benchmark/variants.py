"""What can be benchmarked: the catalogue of variants, the settings of a run, and why a variant cannot run here.

A variant is one way of running the model: a runtime (PyTorch eager or ONNX Runtime) on a device (CPU or CUDA),
on one file. The speed-up of every variant is measured against PyTorch eager on the same device (EAGER).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from vitdeploy.benchmark.environment import optional_torch
from vitdeploy.errors import ConfigError

DEFAULT_BATCH_SIZES = (1, 8, 32)


@dataclass(frozen=True)
class VariantSpec:
    name: str
    runtime: str  # "torch" | "onnxruntime"
    device: str  # "cpu" | "cuda"
    precision: str
    description: str
    # ONNX Runtime: the export variant whose file it times, model.<export_variant>.onnx beside model.onnx
    # (artifacts.py); None: model.onnx itself.
    export_variant: str | None = None
    cuda_graph: bool = False  # ONNX Runtime CUDA: capture each run as one CUDA graph


VARIANTS: dict[str, VariantSpec] = {
    v.name: v
    for v in (
        VariantSpec("torch", "torch", "cpu", "fp32", "PyTorch eager, inference_mode"),
        VariantSpec("ort-cpu", "onnxruntime", "cpu", "fp32", "ONNX Runtime CPU on model.onnx, graph optimisation ALL"),
        VariantSpec(
            "ort-cpu-fused", "onnxruntime", "cpu", "fp32",
            "ONNX Runtime CPU on model.fp32-opt.onnx (transformer fusions applied offline by export --optimize)",
            export_variant="fp32-opt",
        ),
        VariantSpec(
            "ort-cpu-int8", "onnxruntime", "cpu", "int8",
            "ONNX Runtime CPU on model.int8.onnx (export --precision int8: static QDQ unless --int8-method dynamic)",
            export_variant="int8",
        ),
        VariantSpec("torch-cuda", "torch", "cuda", "fp32", "PyTorch eager on CUDA, input resident on the GPU"),
        VariantSpec(
            "ort-cuda", "onnxruntime", "cuda", "fp32", "ONNX Runtime CUDA on model.onnx, IO binding (input/output on GPU)"
        ),
        VariantSpec(
            "ort-cuda-graph", "onnxruntime", "cuda", "fp32",
            "ONNX Runtime CUDA on model.onnx, IO binding + CUDA graph (one captured graph per batch size)",
            cuda_graph=True,
        ),
        VariantSpec(
            "ort-cuda-fp16", "onnxruntime", "cuda", "fp16",
            "ONNX Runtime CUDA on model.fp16.onnx (export --precision fp16), IO binding, fp32 input and output",
            export_variant="fp16",
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

    @property
    def requested(self) -> list[str]:
        """The variants asked for, in catalogue order when none were named."""
        return list(self.variants) if self.variants else list(VARIANTS)

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


def runtime_problem(spec: VariantSpec) -> str | None:
    """Why this machine cannot run `spec`, or None. PyTorch needs torch installed, and on CUDA torch must see the
    GPU; ONNX Runtime on CUDA needs a real CUDA session (runtime.cuda_status)."""
    if spec.runtime == "torch":
        torch = optional_torch()
        if torch is None:
            return "PyTorch is not installed"
        return "torch sees no CUDA device" if spec.device == "cuda" and not torch.cuda.is_available() else None
    if spec.device != "cuda":
        return None
    from vitdeploy.runtime import cuda_status

    status = cuda_status()
    return None if status.usable else status.summary or status.reason


def parse_variants(text: str | None) -> tuple[str, ...] | None:
    return tuple(part.strip() for part in text.split(",") if part.strip()) if text else None
