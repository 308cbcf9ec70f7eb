"""The batcher's worker thread with stand-in models: answers, faults, refusals, hung batches."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from tests_support import apoll_until

from r3_service.engine import (
    BatchStats,
    EngineConfig,
    QueueFullError,
    RequestTimeoutError,
    WorkerStalledError,
)
from r3_service.engine.batching import Batcher
from r3_service.engine.scheduler import Work


def sum_embed(batch: Sequence[np.ndarray]) -> np.ndarray:
    """Deterministic stand-in: each text's vector is (sum of ids, length)."""
    return np.array([[ids.sum(), len(ids)] for ids in batch], dtype=np.float32)


def make_work(loop: asyncio.AbstractEventLoop, ids: list[int], deadline: float = math.inf) -> Work:
    return Work(
        text=" ".join(map(str, ids)),
        future=loop.create_future(),
        ids=np.array(ids, dtype=np.int64),
        deadline=deadline,
    )


def config(**knobs: object) -> EngineConfig:
    return EngineConfig(**{"max_wait_ms": 0.0, **knobs})  # type: ignore[arg-type]


def submit(batcher: Batcher, works: list[Work], timeout: float = 60.0) -> None:
    batcher.submit(works, time.monotonic() + timeout, timeout)


def gated_recorder() -> tuple[
    Callable[[Sequence[np.ndarray]], np.ndarray], list[int], threading.Event, threading.Event
]:
    """An embed function that sets ``started``, waits for ``gate`` and records each
    batch's first ids in ``seen``."""
    seen: list[int] = []
    gate, started = threading.Event(), threading.Event()

    def record(batch: Sequence[np.ndarray]) -> np.ndarray:
        started.set()
        gate.wait(10)
        seen.extend(int(ids[0]) for ids in batch)
        return sum_embed(batch)

    return record, seen, gate, started


async def test_results_return_to_their_own_futures() -> None:
    stats: list[BatchStats] = []
    batcher = Batcher(sum_embed, config(max_batch_tokens=64, max_batch_size=4), stats.append)
    batcher.start()
    loop = asyncio.get_running_loop()
    works = [make_work(loop, list(range(1, n + 1))) for n in (3, 9, 1, 7, 5, 2, 8, 4, 6, 10)]
    submit(batcher, works)
    results = await asyncio.gather(*(w.future for w in works))
    for work, vector in zip(works, results):
        assert vector[0] == work.ids.sum() and vector[1] == len(work.ids)
    assert all(s.size <= 4 and s.padded_tokens <= 64 for s in stats)
    assert sum(s.size for s in stats) == len(works)
    assert batcher.in_flight_texts == 0 and batcher.drain_rate > 0
    batcher.stop()


async def test_failing_batch_fails_only_its_requests_and_worker_goes_on() -> None:
    def flaky(batch: Sequence[np.ndarray]) -> np.ndarray:
        if any(ids[0] == 666 for ids in batch):
            raise RuntimeError("boom")
        return sum_embed(batch)

    batcher = Batcher(flaky, config(max_batch_tokens=4, max_batch_size=1))
    batcher.start()
    loop = asyncio.get_running_loop()
    bad, good = make_work(loop, [666]), make_work(loop, [1, 2])
    submit(batcher, [bad, good])
    with pytest.raises(RuntimeError, match="boom"):
        await bad.future
    assert (await good.future)[0] == 3
    later = make_work(loop, [5])
    submit(batcher, [later])
    assert (await later.future)[0] == 5
    assert batcher.alive and batcher.in_flight_texts == 0
    batcher.stop()


async def test_queue_full_rejects_whole_request_atomically() -> None:
    gate = threading.Event()

    def blocked(batch: Sequence[np.ndarray]) -> np.ndarray:
        gate.wait(10)
        return sum_embed(batch)

    batcher = Batcher(blocked, config(max_queue_texts=3))
    batcher.start()
    loop = asyncio.get_running_loop()
    first = [make_work(loop, [1]), make_work(loop, [2])]
    submit(batcher, first)
    with pytest.raises(QueueFullError) as info:
        submit(batcher, [make_work(loop, [3]), make_work(loop, [4])])
    assert info.value.retry_after > 0
    assert batcher.in_flight_texts == 2  # nothing of the refused request was queued
    gate.set()
    assert [v[0] for v in await asyncio.gather(*(w.future for w in first))] == [1, 2]
    batcher.stop()


async def test_work_nobody_waits_for_is_dropped() -> None:
    record, seen, gate, started = gated_recorder()
    batcher = Batcher(record, config(max_batch_size=1))
    batcher.start()
    loop = asyncio.get_running_loop()
    head, dropped, kept = make_work(loop, [1]), make_work(loop, [2]), make_work(loop, [3])
    submit(batcher, [head])
    await loop.run_in_executor(None, started.wait, 10)  # the worker is now blocked on `head`
    submit(batcher, [dropped, kept])
    dropped.waiters = 0
    batcher.release()
    gate.set()
    await kept.future
    assert 2 not in seen and seen == [1, 3]
    assert dropped.future.cancelled()
    await apoll_until(lambda: batcher.in_flight_texts == 0)
    batcher.stop()


async def test_expired_text_is_answered_with_a_timeout_and_never_run() -> None:
    record, seen, gate, started = gated_recorder()
    batcher = Batcher(record, config(max_batch_size=1))
    batcher.start()
    loop = asyncio.get_running_loop()
    submit(batcher, [make_work(loop, [1])])
    await loop.run_in_executor(None, started.wait, 10)
    late = make_work(loop, [7], deadline=time.monotonic() + 0.05)
    batcher.submit([late], late.deadline, 0.05)
    await apoll_until(lambda: time.monotonic() > late.deadline)  # it expires while queued
    gate.set()
    with pytest.raises(RequestTimeoutError):
        await late.future
    assert 7 not in seen and batcher.expired_texts == 1
    batcher.stop()


async def test_hung_batch_is_flagged_counted_once_and_refuses_new_work() -> None:
    release, started = threading.Event(), threading.Event()

    def hang(batch: Sequence[np.ndarray]) -> np.ndarray:
        if any(ids[0] == 13 for ids in batch):
            started.set()
            release.wait(30)
        return sum_embed(batch)

    batcher = Batcher(hang, config(hung_batch_s=0.2))
    batcher.start()
    loop = asyncio.get_running_loop()
    stuck = make_work(loop, [13])
    submit(batcher, [stuck])
    await loop.run_in_executor(None, started.wait, 10)
    assert not batcher.hung
    await apoll_until(lambda: batcher.hung_batches == 1)
    assert batcher.hung and batcher.running_for() > 0.2
    with pytest.raises(WorkerStalledError):
        submit(batcher, [make_work(loop, [1])])
    release.set()
    await stuck.future
    await apoll_until(lambda: not batcher.hung)
    fresh = make_work(loop, [2])
    submit(batcher, [fresh])
    assert (await fresh.future)[0] == 2
    assert batcher.hung_batches == 1
    batcher.stop()
