"""The timing protocol: what makes a comparison of variants fair on a noisy machine.

  - Identical input: every variant gets the same seeded array per batch size (input_batch), staged per variant
    before timing (e.g. copied to the GPU), so that no copy is timed on one side only.
  - Cold start apart: creating the model or session, then its first inference, is timed once (cold_start) and
    reported apart from the steady state.
  - Warm-up by count AND by time: each variant runs at least `warmup_iters` times and `warmup_seconds` untimed.
  - Then at least `min_iters` timed runs AND at least `min_seconds` of timed runs per variant and batch size.
  - Round-robin: variants run one inference each per round, so machine drift and other processes hit all of them
    alike. Companions (the matmul peak behind MFU) run once in every round but do not decide when a point is done.
  - One timing loop (measure) for every runner: a runner exposes one inference (`infer`) and its timer decides
    how it is timed: on CPU, perf_counter around the call (WallClock); on CUDA, CUDA events recorded on the
    stream the work runs on (CudaEventTimer), or perf_counter around a call that returns synchronised when torch
    cannot see the GPU.

measure() is one point (all runners at one batch size); measure_points() stages each batch size and measures it.
Scripts that time their own runners (benchmarks/precision.py) call these, as benchmark() does.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from vitdeploy.benchmark.environment import optional_torch
from vitdeploy.benchmark.report import PointResult
from vitdeploy.benchmark.variants import BenchSettings, VariantSpec
from vitdeploy.config import ModelConfig


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


def input_batch(cfg: ModelConfig, batch_size: int, seed: int) -> np.ndarray:
    """The batch every variant sees at this batch size: seeded per batch size, standard normal (the scale of a
    preprocessed image)."""
    rng = np.random.default_rng(seed + batch_size)
    return rng.standard_normal((batch_size, cfg.in_channels, cfg.image_size, cfg.image_size), dtype=np.float32)


@dataclass(frozen=True)
class ColdStart:
    create_s: float  # building the model or creating the session
    first_run_s: float  # the first inference after it, on `first_batch_size`
    first_batch_size: int
    finite_outputs: bool | None = None  # every logit of that batch finite; None where the runner cannot say

    def to_dict(self) -> dict[str, Any]:
        return {"create_ms": round(self.create_s * 1e3, 2), "first_run_ms": round(self.first_run_s * 1e3, 2),
                "first_batch_size": self.first_batch_size, "finite_outputs": self.finite_outputs}


def cold_start(runner: Runner, batch: np.ndarray) -> ColdStart:
    """Create the runner and run it once on `batch`, timing both; then (untimed) check that its logits are finite:
    a variant that answers NaN is fast at nothing."""
    started = time.perf_counter()
    runner.create()
    created = time.perf_counter() - started
    runner.stage(batch)
    first_run = runner.run()
    logits = runner.logits()
    finite = None if logits is None else bool(np.isfinite(logits).all())
    return ColdStart(created, first_run, int(batch.shape[0]), finite)


def measure(
    runners: Sequence[Runner], settings: BenchSettings, companions: Sequence[Runner] = ()
) -> dict[str, list[float]]:
    """One point: warm up, then time all runners round-robin until each has min_iters runs and min_seconds of
    runs. Returns runner name -> timed latencies in seconds, companions included."""

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


def measure_points(
    runners: Sequence[Runner],
    settings: BenchSettings,
    batch_for: Callable[[int], np.ndarray],
    companions: Sequence[Runner] = (),
    on_point: Callable[[int, list[str]], None] | None = None,
) -> list[PointResult]:
    """Every batch size of `settings`, in order: stage `batch_for(batch_size)` on every runner, then measure.

    The runners must have been created (cold_start). `on_point(batch_size, names)` is called as each point
    starts. Companions' latencies come back as points under their own names.
    """
    points = []
    for batch_size in settings.batch_sizes:
        batch = batch_for(batch_size)
        for runner in runners:
            runner.stage(batch)
        if on_point:
            on_point(batch_size, [r.spec.name for r in runners])
        timed = measure(runners, settings, companions)
        points += [PointResult(name, batch_size, latencies) for name, latencies in timed.items()]
    return points
