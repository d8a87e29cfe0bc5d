"""Dynamic batching: concurrent requests gathered into one model call, on a single inference worker thread.

    event loop (any number of requests)          worker thread (the only one that touches the model)
    await batcher.infer(x) -> queue.put(job) ->  take the oldest job; keep taking jobs until the batch holds
                                                 max_batch_size samples or the oldest job has waited
                                                 max_queue_delay; run the batch once; hand each job its rows
                                                 back through its event loop

As Triton's dynamic batcher: a request is never split, one that does not fit waits for the next batch, and a batch
is formed as soon as it is full. While a batch runs, new requests queue up, so under load the next batch forms
without waiting at all. The event loop only enqueues and awaits: it never blocks on the model.

With gather=False every request runs alone, as its client sent it: for a model whose answers depend on the other
images in its batch (dynamic INT8), where batching would let one client's images change another's answers.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _Job:
    pixels: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)


@dataclass
class BatchStats:
    """What the worker did; read (as a copy) by the stats endpoint while the worker writes."""

    requests_ok: int = 0
    requests_failed: int = 0
    samples: int = 0  # images run (Triton's inference_count)
    executions: int = 0  # model calls (Triton's execution_count)
    queue_ns: int = 0  # summed over requests: enqueue -> its batch starts
    compute_ns: int = 0  # summed over requests: the run of the batch each one was in
    request_ns: int = 0  # summed over successful requests: enqueue -> result ready
    failed_ns: int = 0
    batches: Counter = field(default_factory=Counter)  # batch size (samples) -> model calls
    batch_compute_ns: Counter = field(default_factory=Counter)  # batch size -> summed run time
    last_inference_ms: int = 0  # wall clock, ms since the epoch

    def snapshot(self) -> BatchStats:
        copy = BatchStats(**{k: v for k, v in self.__dict__.items() if not isinstance(v, Counter)})
        copy.batches, copy.batch_compute_ns = Counter(self.batches), Counter(self.batch_compute_ns)
        return copy


class DynamicBatcher:
    """Gathers (N_i, C, H, W) requests into (sum N_i, C, H, W) calls of `run`, at most `max_batch_size` samples."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], max_batch_size: int, max_queue_delay_s: float,
                 gather: bool = True):
        if max_batch_size < 1 or max_queue_delay_s < 0:
            raise ValueError("max_batch_size must be at least 1 and max_queue_delay_s not negative")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_queue_delay_ns = round(max_queue_delay_s * 1e9)
        self.gather = gather
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._carry: _Job | None = None  # the job that did not fit in the last batch: first in the next one
        self._lock = threading.Lock()
        self._stats = BatchStats()
        self.pending = 0  # requests enqueued and not answered yet (event loop side only)
        self._thread = threading.Thread(target=self._work, name="vitdeploy-inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish every queued job, then end the worker."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> BatchStats:
        with self._lock:
            return self._stats.snapshot()

    async def infer(self, pixels: np.ndarray) -> np.ndarray:
        """Logits for `pixels` (N <= max_batch_size), computed in whichever batch it lands in."""
        if not 1 <= len(pixels) <= self.max_batch_size:
            raise ValueError(f"a request holds 1..{self.max_batch_size} samples, not {len(pixels)}")
        if not self._thread.is_alive():
            raise RuntimeError("the inference worker is not running")
        loop = asyncio.get_running_loop()
        job = _Job(pixels, loop.create_future(), loop)
        self.pending += 1
        try:
            self._queue.put(job)
            return await job.future
        finally:
            self.pending -= 1

    # ------------------------------------------------------------------------------------ worker thread

    def _work(self) -> None:
        while True:
            first = self._carry if self._carry is not None else self._queue.get()
            self._carry = None
            if first is None:
                return
            batch, stop = self._gather(first)
            self._run_batch(batch)
            if stop:
                return

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """Jobs for one batch, starting with `first`; True when the stop sentinel came (after these jobs)."""
        batch, size = [first], len(first.pixels)
        deadline = first.enqueued_ns + self.max_queue_delay_ns
        while self.gather and size < self.max_batch_size:
            wait_s = (deadline - time.perf_counter_ns()) / 1e9
            try:  # past the deadline: still take what is already queued, without waiting
                job = self._queue.get(timeout=wait_s) if wait_s > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            # a raw-image model's requests join a batch only with images of the same size (as Triton's batcher)
            if size + len(job.pixels) > self.max_batch_size or job.pixels.shape[1:] != first.pixels.shape[1:]:
                self._carry = job
                break
            batch.append(job)
            size += len(job.pixels)
        return batch, False

    def _run_batch(self, batch: list[_Job]) -> None:
        size = sum(len(job.pixels) for job in batch)
        started = time.perf_counter_ns()
        error: BaseException | None = None
        logits: Any = None
        try:
            pixels = batch[0].pixels if len(batch) == 1 else np.concatenate([job.pixels for job in batch])
            logits = self._run(pixels)
            if len(logits) != size:
                raise RuntimeError(f"the model returned {len(logits)} rows for a batch of {size}")
        except Exception as e:  # a model failure fails this batch's requests, not the server
            error = e
        done = time.perf_counter_ns()
        with self._lock:
            s = self._stats
            s.executions += 1
            s.samples += size if error is None else 0
            s.batches[size] += 1
            s.batch_compute_ns[size] += done - started
            s.last_inference_ms = time.time_ns() // 1_000_000
            for job in batch:
                s.queue_ns += started - job.enqueued_ns
                s.compute_ns += done - started
                if error is None:
                    s.requests_ok += 1
                    s.request_ns += done - job.enqueued_ns
                else:
                    s.requests_failed += 1
                    s.failed_ns += done - job.enqueued_ns
        offset = 0
        for job in batch:
            rows = None if error is not None else logits[offset : offset + len(job.pixels)]
            offset += len(job.pixels)
            try:
                job.loop.call_soon_threadsafe(_settle, job.future, rows, error)
            except RuntimeError:  # its event loop is closed: nobody waits for this answer any more
                pass


def _settle(future: asyncio.Future, rows: np.ndarray | None, error: BaseException | None) -> None:
    if future.done():  # the request was cancelled (its client went away)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(rows)
