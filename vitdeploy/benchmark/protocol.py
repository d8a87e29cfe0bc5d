"""The timing protocol: what makes a comparison of variants fair on a noisy machine.

  - Identical input: every variant gets the same seeded array per batch size (input_batch), staged per variant
    before timing (e.g. copied to the GPU), so that no copy is timed on one side only.
  - Cold start apart: creating the model or session, then its first inference, is timed once (cold_start) and
    reported apart from the steady state.
  - Warm-up by count AND by time: each variant first runs at least `warmup_iters` times and `warmup_seconds`
    untimed (a warm-up round, one block per variant).
  - Interleaved in blocks: then `Blocks.count` rounds (at most `min_iters`); in each round every variant runs one
    block of timed calls, in an order that rotates from round to round (block_schedule). A block is at least
    1/count of the variant's `min_iters` and of its `min_seconds`, so every variant gets the same number of blocks
    and together at least `min_iters` runs and `min_seconds` of runs. Machine drift and other processes still hit all variants alike
    (each point is spread over the whole time the point takes), as the protocol wants.
  - Idle between blocks: before each block the machine is left alone for `Blocks.idle_s`, so that the previous
    block's thread pool has stopped spinning, and the block's first call is untimed (it wakes this variant's own
    pool). The percentiles pool the per-call latencies of all of a variant's blocks.
  - The GEMMs that measure the peak behind MFU (companions) run in blocks of their own after the point's last
    timed block, back to back after the same idle time: never before a variant's timed block (numpy's OpenBLAS
    threads spin 100 ms and more after a GEMM), and they do not decide when a point is done. The peak is each
    GEMM's fastest run, which drift during the point does not favour.
  - One timing loop (measure) for every runner: a runner exposes one inference (`infer`) and its timer decides
    how it is timed: on CPU, perf_counter around the call (WallClock); on CUDA, CUDA events recorded on the
    stream the work runs on (CudaEventTimer), or perf_counter around a call that returns synchronised when torch
    cannot see the GPU.

Why blocks and not one call per variant per round (the protocol until c9361bf): ONNX Runtime's intra-op threads
busy-wait after a call (its default, session.intra_op.allow_spinning=1). Measured on a 2-core AMD EPYC (Zen 5),
ViT-Ti/16 at batch 1, 2 threads (benchmarks/bench_protocol.md): after an ORT call the process kept 0.8 of a core
busy for 40-60 ms (OpenVINO's and torch's pools: 5-15 ms; ORT with spinning off: none), and after numpy's GEMM
(OpenBLAS, one of the peak GEMMs) for 100 ms. A batch-1 call lasts about 20 ms, so under per-call alternation the
next variant ran its whole call beside a spinning thread on a 2-core machine: ORT fp32's own p50 rose by about
half when it merely shared the run with ORT int8 (24.5 -> 36.9 ms, issue 18). Beside ORT int8 and OpenVINO, in
the same 3 repeats (load 3.6-4.5), the medians were 1.57x (ORT fp32), 1.41x (ORT int8) and 1.93x (OpenVINO) their
figures alone per call, and 0.99x, 1.23x, 1.02x in blocks. On the quiet machine, with alone and together points
alternating four times and pooled (single points scatter 0.5-1.5x there: the VM has slow phases of a second or
two), all 18 figures of 2 runs x 3 repeats were within 0.95-1.14x of the variant's own figure alone. The
idle time is 0.2 s, twice the longest spin measured; the GEMMs run after the timed blocks because under load a
spinning thread's wall time stretches past any fixed idle time. Spinning is left on: it is how ORT runs by
default, and within a block it only serves the variant's own next call.

measure() is one point (all runners at one batch size); measure_points() stages each batch size and measures it.
Scripts that time their own runners (benchmarks/precision.py) call these, as benchmark() does.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitdeploy.benchmark.report import PointResult
from vitdeploy.benchmark.timing import Runner
from vitdeploy.benchmark.variants import BenchSettings
from vitdeploy.errors import ConfigError
from vitdeploy.requests import BenchRequest


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


@dataclass(frozen=True)
class Blocks:
    """How a point is interleaved (see the module docstring for the measurement behind the defaults)."""

    count: int = 5  # timed blocks per variant and point
    # Nothing runs for this long before each block: after a call ORT's pool spins 40-60 ms, OpenBLAS's (numpy,
    # one of the peak GEMMs) 100 ms.
    idle_s: float = BenchRequest.block_idle
    block_warmup_calls: int = 1  # untimed calls at the start of each block (wake the variant's own pool)
    companion_calls: int = 2  # timed calls of each companion per timed round, all in its one block

    @classmethod
    def for_settings(cls, settings: BenchSettings) -> Blocks:
        """The blocks a benchmark with `settings` runs: its idle time (--block-idle), fitted to its min_iters."""
        return cls(idle_s=settings.block_idle).fitted(settings)

    def fitted(self, settings: BenchSettings) -> Blocks:
        """These blocks for `settings`: no more blocks than timed runs asked for (min_iters)."""
        return dataclasses.replace(self, count=min(self.count, settings.min_iters))

    def to_dict(self) -> dict[str, Any]:
        return {"interleaving": "blocks", "blocks": self.count, "idle_s": self.idle_s,
                "block_warmup_calls": self.block_warmup_calls, "companion_calls": self.companion_calls}

    def __post_init__(self) -> None:
        if self.count < 1 or self.idle_s < 0 or self.block_warmup_calls < 0 or self.companion_calls < 1:
            raise ConfigError(f"invalid block settings: {self}")


@dataclass(frozen=True)
class Block:
    """One entry of a point's schedule: which runner runs, in which round (0: the warm-up round), and as what."""

    round: int
    runner: str
    kind: str  # "warmup" | "timed" | "companion"


def block_schedule(names: Sequence[str], companions: Sequence[str], count: int) -> list[Block]:
    """The order of a point's blocks: a warm-up round (every variant once, in order), then `count` timed rounds,
    then one block per companion, after every timed block. With three variants or more, their order rotates by
    one each round, so that none always follows the same one and none runs twice in a row (two variants simply
    alternate)."""
    schedule = [Block(0, name, "warmup") for name in names]
    for r in range(1, count + 1):
        shift = (r - 1) % len(names) if len(names) > 2 else 0
        schedule += [Block(r, name, "timed") for name in [*names[shift:], *names[:shift]]]
    return schedule + [Block(count + 1, name, "companion") for name in companions]


def measure(
    runners: Sequence[Runner], settings: BenchSettings, companions: Sequence[Runner] = (),
    blocks: Blocks = Blocks(), sleep: Callable[[float], None] = time.sleep,
) -> dict[str, list[float]]:
    """One point, in blocks (block_schedule): each variant gets `blocks.count` blocks of timed runs, which
    together reach min_iters runs and min_seconds of runs. Returns runner name -> timed latencies in seconds
    (every block's, pooled), companions included."""
    by_name = {r.spec.name: r for r in [*runners, *companions]}
    timed: dict[str, list[float]] = {name: [] for name in by_name}
    count = blocks.fitted(settings).count
    per_block_iters = -(-settings.min_iters // count)
    per_block_seconds = settings.min_seconds / count
    previous = None
    for block in block_schedule([r.spec.name for r in runners], [c.spec.name for c in companions], count):
        runner = by_name[block.runner]
        if not (block.kind == previous == "companion"):  # the GEMMs' blocks run back to back: one idle for all
            sleep(blocks.idle_s)  # let the previous block's thread pools go idle
        previous = block.kind
        if block.kind == "warmup":
            _run_until(runner, settings.warmup_iters, settings.warmup_seconds)
            continue
        for _ in range(blocks.block_warmup_calls):
            runner.run()
        if block.kind == "companion":
            timed[block.runner] += [runner.run() for _ in range(blocks.companion_calls * count)]
        else:
            timed[block.runner] += _run_until(runner, per_block_iters, per_block_seconds)
    return timed


def _run_until(runner: Runner, iters: int, seconds: float) -> list[float]:
    """Timed runs of `runner` until there are at least `iters` of them and they add up to `seconds`."""
    times: list[float] = []
    while len(times) < iters or sum(times) < seconds:
        times.append(runner.run())
    return times


def measure_points(
    runners: Sequence[Runner],
    settings: BenchSettings,
    batch_for: Callable[[int], np.ndarray],
    companions: Sequence[Runner] = (),
    on_point: Callable[[int, list[str]], None] | None = None,
    blocks: Blocks = Blocks(),
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
        timed = measure(runners, settings, companions, blocks)
        points += [PointResult(name, batch_size, latencies) for name, latencies in timed.items()]
    return points
