from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from r3_service.engine.batching import Batcher, BatchStats, QueueFullError, Work, cut_batches


@given(
    st.lists(st.integers(min_value=1, max_value=600), max_size=200),
    st.integers(min_value=16, max_value=5000),
    st.integers(min_value=1, max_value=64),
)
def test_cut_batches_respects_budget_and_covers_all(
    lengths: list[int], budget: int, size: int
) -> None:
    batches = cut_batches(lengths, budget, size)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= size
        widths = [lengths[i] for i in batch]
        assert len(batch) == 1 or len(batch) * max(widths) <= budget
    # length-sorted across batches: no batch holds a text shorter than the previous one's widest
    previous = 0
    for batch in batches:
        widths = [lengths[i] for i in batch]
        assert min(widths) >= previous
        previous = max(widths)


def test_cut_batches_hand_example() -> None:
    assert cut_batches([5, 1, 3, 100], 10, 8) == [[1, 2], [0], [3]]


def split_tokenize(texts: Sequence[str]) -> list[np.ndarray]:
    """Stand-in tokenizer: "1 2 3" -> [1, 2, 3]."""
    return [np.array([int(t) for t in text.split()], dtype=np.int64) for text in texts]


def sum_embed(batch: Sequence[np.ndarray]) -> np.ndarray:
    """Deterministic stand-in: each text's vector is (sum of ids, length)."""
    return np.array([[ids.sum(), len(ids)] for ids in batch], dtype=np.float32)


def make_work(loop: asyncio.AbstractEventLoop, ids: list[int]) -> Work:
    return Work(text=" ".join(map(str, ids)), future=loop.create_future())


async def test_results_return_to_their_own_futures() -> None:
    stats: list[BatchStats] = []
    batcher = Batcher(
        split_tokenize, sum_embed, max_batch_tokens=64, max_batch_size=4, on_batch=stats.append
    )
    batcher.start()
    loop = asyncio.get_running_loop()
    works = [make_work(loop, list(range(n))) for n in (3, 9, 1, 7, 5, 2, 8, 4, 6, 10)]
    batcher.submit(works)
    results = await asyncio.gather(*(w.future for w in works))
    for work, vector in zip(works, results):
        ids = split_tokenize([work.text])[0]
        assert vector[0] == ids.sum() and vector[1] == len(ids)
    assert all(s.size <= 4 and s.padded_tokens <= 64 for s in stats)
    assert sum(s.size for s in stats) == len(works)
    assert batcher.queued == 0
    batcher.stop()


async def test_failing_batch_fails_only_its_requests_and_worker_goes_on() -> None:
    calls = 0

    def flaky(batch: Sequence[np.ndarray]) -> np.ndarray:
        nonlocal calls
        calls += 1
        if any(ids[0] == 666 for ids in batch):
            raise RuntimeError("boom")
        return sum_embed(batch)

    batcher = Batcher(split_tokenize, flaky, max_batch_tokens=4, max_batch_size=1)
    batcher.start()
    loop = asyncio.get_running_loop()
    bad, good = make_work(loop, [666]), make_work(loop, [1, 2])
    batcher.submit([bad, good])
    with pytest.raises(RuntimeError, match="boom"):
        await bad.future
    assert (await good.future)[0] == 3
    later = make_work(loop, [5])
    batcher.submit([later])
    assert (await later.future)[0] == 5
    assert batcher.alive and batcher.queued == 0
    batcher.stop()


async def test_queue_full_rejects_whole_request_atomically() -> None:
    gate = threading.Event()

    def blocked(batch: Sequence[np.ndarray]) -> np.ndarray:
        gate.wait(10)
        return sum_embed(batch)

    batcher = Batcher(split_tokenize, blocked, max_queue_texts=3, max_wait_ms=0)
    batcher.start()
    loop = asyncio.get_running_loop()
    first = [make_work(loop, [1]), make_work(loop, [2])]
    batcher.submit(first)
    with pytest.raises(QueueFullError):
        batcher.submit([make_work(loop, [3]), make_work(loop, [4])])
    assert batcher.queued == 2  # nothing of the refused request was queued
    gate.set()
    assert [v[0] for v in await asyncio.gather(*(w.future for w in first))] == [1, 2]
    batcher.stop()


async def test_work_nobody_waits_for_is_dropped() -> None:
    seen: list[int] = []
    gate = threading.Event()

    def record(batch: Sequence[np.ndarray]) -> np.ndarray:
        gate.wait(10)
        seen.extend(int(ids[0]) for ids in batch)
        return sum_embed(batch)

    batcher = Batcher(split_tokenize, record, max_batch_size=1, max_wait_ms=0)
    batcher.start()
    loop = asyncio.get_running_loop()
    head, dropped, kept = make_work(loop, [1]), make_work(loop, [2]), make_work(loop, [3])
    batcher.submit([head])
    await asyncio.sleep(0.05)  # the worker is now blocked on `head`
    batcher.submit([dropped, kept])
    dropped.waiters = 0
    gate.set()
    await kept.future
    await asyncio.sleep(0.05)
    assert 2 not in seen and seen == [1, 3]
    assert dropped.future.cancelled()
    assert batcher.queued == 0
    batcher.stop()


async def test_text_the_tokenizer_rejects_fails_alone() -> None:
    batcher = Batcher(split_tokenize, sum_embed)
    batcher.start()
    loop = asyncio.get_running_loop()
    bad = Work(text="not a number", future=loop.create_future())
    good = make_work(loop, [4, 5])
    batcher.submit([bad, good])
    with pytest.raises(ValueError):
        await bad.future
    assert (await good.future)[0] == 9
    assert batcher.queued == 0
    batcher.stop()
