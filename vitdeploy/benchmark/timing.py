"""What the protocol (protocol.py) drives and how it reads the clock: the Runner interface (create, stage, infer),
the timers (perf_counter around a call on the CPU, CUDA events on the GPU) and the input every variant sees. A base
layer: it imports nothing else of the benchmark but the catalogue and environment.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from vitdeploy.benchmark.environment import optional_torch
from vitdeploy.benchmark.variants import VariantSpec
from vitdeploy.core.config import ModelConfig


class Timer(Protocol):
    def time(self, work: Callable[[], object]) -> float:
        """Run `work` once; its duration in seconds."""


@dataclass(frozen=True)
class WallClock:
    """perf_counter around one call. `setting` is entered before the clock starts and left after it stops (e.g.
    torch.inference_mode), so that entering it is not timed."""

    setting: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext

    def time(self, work: Callable[[], object]) -> float:
        with self.setting():
            started = time.perf_counter()
            work()
            return time.perf_counter() - started


class CudaEventTimer:
    """Times GPU work with CUDA events recorded on the stream that runs it, then waits for the end event."""

    def __init__(self, own_stream: bool = False,
                 setting: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext) -> None:
        import torch

        self.torch = torch
        self.setting = setting
        # torch's default stream has handle 0, which ORT takes for "no stream": ORT needs a stream of its own.
        self.stream = torch.cuda.Stream() if own_stream else torch.cuda.current_stream()

    @classmethod
    def for_onnxruntime(cls) -> CudaEventTimer | None:
        """A timer on a new stream for ORT to run on, or None when torch is not installed or cannot see the GPU."""
        torch = optional_torch()
        return cls(own_stream=True) if torch and torch.cuda.is_available() else None

    def time(self, work: Callable[[], object]) -> float:
        with self.setting():
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record(self.stream)
            work()
            end.record(self.stream)
            end.synchronize()
            return start.elapsed_time(end) / 1e3


class Runner(abc.ABC):
    """One variant: created once (timed as cold start), staged per batch size (untimed), run many times."""

    spec: VariantSpec
    providers: list[str]
    timer: Timer  # set by create()

    @abc.abstractmethod
    def create(self) -> None:
        """Build the model or open the session, and choose the timer."""

    @abc.abstractmethod
    def stage(self, batch: np.ndarray) -> None:
        """Put this batch where the variant reads it (e.g. on the GPU), so that no copy is timed."""

    @abc.abstractmethod
    def infer(self) -> None:
        """One inference on the staged batch, complete when it returns (or, on CUDA, when the timer's end event
        has been reached)."""

    def run(self) -> float:
        """One timed inference; its latency in seconds."""
        return self.timer.time(self.infer)

    def logits(self) -> np.ndarray | None:
        """The staged batch's logits on the host (untimed), or None where the runner does not produce any."""
        return None

    def close(self) -> None:
        """Release the runtime's session (after the last timed run); nothing to release by default."""


def input_batch(cfg: ModelConfig, batch_size: int, seed: int) -> np.ndarray:
    """The batch every variant sees at this batch size: seeded per batch size, standard normal (the scale of a
    preprocessed image)."""
    rng = np.random.default_rng(seed + batch_size)
    return rng.standard_normal((batch_size, cfg.in_channels, cfg.image_size, cfg.image_size), dtype=np.float32)
