"""What the figures were measured on: the machine, library versions, thread counts, GPUs and the load average
before the run (above about half the core count the figures are disturbed).

PyTorch is optional: ONNX Runtime variants are benchmarked without it (then with no matmul peak, so no MFU), and
torch's thread count is recorded only where torch is installed.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
from types import ModuleType
from typing import Any

from vitdeploy.runtimes import this_machine

logger = logging.getLogger(__name__)

@functools.cache
def optional_torch() -> ModuleType | None:
    """torch, imported on first use, or None where it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def environment(threads: int) -> dict[str, Any]:
    """The machine record (runtimes.this_machine(): ISA class and flags, every runtime's offer) with the
    versions, threads, GPUs and load average of this run."""
    from vitdeploy.core.provenance import machine, package_versions

    torch = optional_torch()
    record = this_machine()
    ort, openvino = record.offer("ort"), record.offer("openvino")
    return {
        **machine(),
        "threads": threads,
        "torch_threads": torch.get_num_threads() if torch else None,
        "versions": package_versions(),
        "onnxruntime_available_providers": ort.details.get("available_providers"),
        "onnxruntime_cuda": ort.details.get("cuda"),
        "onnxruntime_tensorrt": ort.details.get("tensorrt"),
        "runtimes": [record.offer(name).to_dict() for name in record.runtimes],
        "openvino_cpu_capabilities": openvino.details.get("optimization_capabilities", {}).get("cpu"),
        "isa": record.isa,
        "cpu_flags": sorted(record.cpu_flags),
        "gpus": gpus(),
        "load_average": _load_average(),
    }


def gpus() -> list[dict[str, str]]:
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


def warn_if_busy() -> None:
    cores = os.cpu_count() or 1
    load = (_load_average() or [0.0])[0]
    if load > 0.5 * cores:
        logger.warning("load average %.1f on %d cores: other processes compete for the CPU, so the figures will be "
                       "noisy, and multi-threaded PyTorch can stall outright (compare with --threads 1)", load, cores)


def _load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None
