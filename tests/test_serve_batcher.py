"""The dynamic batcher with a stand-in model that records the batches it is given: gathering, never splitting a
request, carrying one that does not fit, failing a batch without stopping, draining on stop."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from vitdeploy.serving.batcher import DynamicBatcher


class RecordingModel:
    """logits = the per-sample mean, so each answer can be traced to its input; can be held to let requests queue."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.fail_next = False

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.release.wait(timeout=30)
        self.batch_sizes.append(len(pixels))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("model failure")
        return pixels.reshape(len(pixels), -1).mean(axis=1, keepdims=True)


def request(value: float, n: int = 1) -> np.ndarray:
    return np.full((n, 1, 2, 2), value, np.float32)


async def submit_all(batcher: DynamicBatcher, inputs: list[np.ndarray]) -> list:
    return await asyncio.gather(*(batcher.infer(x) for x in inputs), return_exceptions=True)


@pytest.fixture
def model() -> RecordingModel:
    return RecordingModel()


def run(batcher: DynamicBatcher, coro_factory):
    batcher.start()
    try:
        return asyncio.run(coro_factory())
    finally:
        batcher.stop(timeout=30)


def test_concurrent_requests_are_gathered_up_to_the_largest_batch(model: RecordingModel) -> None:
    # A long queue delay: batches close because they are full, not because time ran out.
    batcher = DynamicBatcher(model, max_batch_size=8, max_queue_delay_s=10.0)
    inputs = [request(i) for i in range(16)]
    results = run(batcher, lambda: submit_all(batcher, inputs))
    assert model.batch_sizes == [8, 8]
    assert [float(r[0, 0]) for r in results] == list(range(16))  # every request got its own rows back
    stats = batcher.stats()
    assert stats.requests_ok == 16 and stats.samples == 16 and stats.executions == 2 and stats.batches == {8: 2}


def test_a_request_is_never_split_and_one_that_does_not_fit_opens_the_next_batch(model: RecordingModel) -> None:
    batcher = DynamicBatcher(model, max_batch_size=8, max_queue_delay_s=10.0)
    inputs = [request(1, 5), request(2, 5), request(3, 3)]
    results = run(batcher, lambda: submit_all(batcher, inputs))
    assert model.batch_sizes == [5, 8]  # 5 + 5 > 8: the second request waits and takes the third with it
    assert [r.shape for r in results] == [(5, 1), (5, 1), (3, 1)]
    assert [float(r[0, 0]) for r in results] == [1, 2, 3]


def test_with_no_queue_delay_requests_that_wait_while_the_model_runs_form_the_next_batch(model: RecordingModel) -> None:
    batcher = DynamicBatcher(model, max_batch_size=32, max_queue_delay_s=0.0)

    async def scenario():
        model.release.clear()  # hold the first batch in the model
        first = asyncio.ensure_future(batcher.infer(request(0)))
        while not model.entered.is_set():
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher.infer(request(i))) for i in range(1, 6)]
        while batcher.pending < 6:
            await asyncio.sleep(0.001)
        model.release.set()
        return await asyncio.gather(first, *rest)

    results = run(batcher, scenario)
    assert model.batch_sizes == [1, 5]
    assert [float(r[0, 0]) for r in results] == [0, 1, 2, 3, 4, 5]


def test_a_failing_batch_fails_its_requests_and_the_worker_keeps_serving(model: RecordingModel) -> None:
    batcher = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=10.0)

    async def scenario():
        model.fail_next = True
        failed = await submit_all(batcher, [request(i) for i in range(4)])
        after = await submit_all(batcher, [request(7, 4)])  # a full batch: no waiting for the queue delay
        return failed, after

    failed, after = run(batcher, scenario)
    assert all(isinstance(r, RuntimeError) for r in failed)
    assert float(after[0][0, 0]) == 7
    assert batcher.stats().requests_failed == 4 and batcher.stats().requests_ok == 1


def test_stop_answers_every_queued_request_first(model: RecordingModel) -> None:
    batcher = DynamicBatcher(model, max_batch_size=2, max_queue_delay_s=0.0)
    batcher.start()

    async def scenario():
        model.release.clear()
        futures = [asyncio.ensure_future(batcher.infer(request(i))) for i in range(5)]
        while batcher.pending < 5:
            await asyncio.sleep(0.001)
        stopper = asyncio.get_running_loop().run_in_executor(None, batcher.stop, 30)
        model.release.set()
        results = await asyncio.gather(*futures)
        await stopper
        return results

    results = asyncio.run(scenario())
    assert [float(r[0, 0]) for r in results] == [0, 1, 2, 3, 4]
    assert not batcher.running


def test_a_request_larger_than_the_largest_batch_is_refused(model: RecordingModel) -> None:
    batcher = DynamicBatcher(model, max_batch_size=2, max_queue_delay_s=0.0)
    results = run(batcher, lambda: submit_all(batcher, [request(0, 3)]))
    assert isinstance(results[0], ValueError) and model.batch_sizes == []
