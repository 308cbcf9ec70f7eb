"""The scheduler alone (no threads): fairness, padding, admission by deadline, expiry."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from r3_service.engine.errors import (
    DeadlineUnreachableError,
    QueueFullError,
    RequestTooLargeError,
)
from r3_service.engine.scheduler import (
    ADMIT_SHARE,
    TEXT_OVERHEAD,
    FairScheduler,
    Job,
    Work,
    cut_batches,
    ps_finish_seconds,
)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def works(
    loop: asyncio.AbstractEventLoop, lengths: list[int], deadline: float = math.inf
) -> list[Work]:
    return [
        Work(
            text=f"t{i}-{n}",
            future=loop.create_future(),
            ids=np.ones(n, dtype=np.int64),
            deadline=deadline,
        )
        for i, n in enumerate(lengths)
    ]


def queue(scheduler: FairScheduler, batch: list[Work], deadline: float = math.inf) -> Job:
    job = Job(deadline=deadline)
    scheduler.add(batch, job)
    return job


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
    previous = 0  # length-sorted across batches
    for batch in batches:
        widths = [lengths[i] for i in batch]
        assert min(widths) >= previous
        previous = max(widths)


def test_cut_batches_hand_example() -> None:
    assert cut_batches([5, 1, 3, 100], 10, 8) == [[1, 2], [0], [3]]


def test_processor_sharing_finish_times_by_hand() -> None:
    # Remaining 3, 1, 2 at rate 1: all three share until 1 is done (3 s), two share
    # until 2 is done (+2 s = 5 s), the last alone (+1 s = 6 s).
    assert ps_finish_seconds([3.0, 1.0, 2.0], 1.0) == [6.0, 3.0, 5.0]
    assert ps_finish_seconds([4.0], 2.0) == [2.0]


def test_small_request_behind_a_large_one_runs_in_the_next_batch(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = FairScheduler(max_batch_tokens=256, max_batch_size=8, max_queue_texts=4096)
    big = works(loop, [30] * 400)
    queue(scheduler, big)
    first = scheduler.take(now=0.0).batch
    assert all(w in big for w in first)
    small = works(loop, [30])
    queue(scheduler, small)
    second = scheduler.take(now=0.0).batch
    assert small[0] in second  # not behind the other 390-odd texts of the big request


def test_two_large_requests_share_the_worker(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = FairScheduler(max_batch_tokens=256, max_batch_size=8, max_queue_texts=4096)
    first, second = works(loop, [30] * 80), works(loop, [30] * 80)
    queue(scheduler, first)
    scheduler.take(now=0.0)
    queue(scheduler, second)
    served = [w for _ in range(10) for w in scheduler.take(now=0.0).batch]
    from_second = sum(w in second for w in served)
    assert 0.3 * len(served) <= from_second <= 0.7 * len(served)


def test_batches_keep_similar_lengths(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = FairScheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    rng = np.random.default_rng(0)
    queue(scheduler, works(loop, [int(n) for n in rng.integers(5, 500, size=300)]))
    padded = real = 0
    while scheduler.pending:
        batch = scheduler.take(now=0.0).batch
        lengths = [w.tokens for w in batch]
        padded += max(lengths) * len(lengths)
        real += sum(lengths)
    assert real / padded > 0.8  # unsorted batches of this mix waste about half


def test_expired_and_unwanted_texts_never_run(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = FairScheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    late, gone, fine = works(loop, [10], 5.0), works(loop, [10]), works(loop, [10], 100.0)
    for batch in (late, gone, fine):
        queue(scheduler, batch)
    gone[0].waiters = 0
    taken = scheduler.take(now=10.0)
    assert taken.expired == late and taken.dropped == gone and taken.batch == fine
    assert not scheduler.pending


def test_text_that_would_finish_after_its_deadline_is_expired(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = FairScheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=100.0, texts=1, seconds=1.0)  # 100 cost units per second
    tight = works(loop, [100], deadline=0.5)  # needs ~1.1 s, has 0.5 s
    queue(scheduler, tight)
    taken = scheduler.take(now=0.0)
    assert taken.expired == tight and not taken.batch


def test_idle_engine_takes_any_request_that_fits_the_queue(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = FairScheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=100)
    scheduler.rate.observe(cost=100.0, texts=1, seconds=1.0)
    # 150 s of work against a 100 s timeout: tried (estimates can be wrong), not refused.
    scheduler.admit(works(loop, [150 * 100 - TEXT_OVERHEAD]), 100.0, 100.0, 0.0, 0.0)


def test_request_larger_than_the_queue_is_413_naming_the_setting(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = FairScheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=64)
    with pytest.raises(RequestTooLargeError) as info:
        scheduler.admit(works(loop, [5] * 80), 60.0, 60.0, 0.0, 0.0)
    assert info.value.limit == "R3_MAX_QUEUE_TEXTS" and "64" in str(info.value)


def test_request_that_can_never_finish_in_time_is_413(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = FairScheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=100.0, texts=1, seconds=1.0)
    with pytest.raises(RequestTooLargeError) as info:  # 30 s of work, 10 s timeout
        scheduler.admit(works(loop, [100 - TEXT_OVERHEAD] * 30), 10.0, 10.0, 0.0, 0.0)
    assert info.value.limit == "R3_REQUEST_TIMEOUT_S"


def test_full_queue_is_retryable_with_a_delay_from_the_text_rate(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = FairScheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=10)
    scheduler.rate.observe(cost=100.0, texts=4, seconds=1.0)  # 4 texts per second
    queue(scheduler, works(loop, [5] * 8))
    with pytest.raises(QueueFullError) as info:
        scheduler.admit(works(loop, [5] * 6), 60.0, 60.0, 0.0, 0.0)
    assert info.value.retry_after == pytest.approx(1.0)  # 4 texts over the limit at 4/s


def test_request_that_would_miss_its_deadline_is_refused_with_retry_after(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = FairScheduler(max_batch_tokens=100, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=100.0, texts=1, seconds=1.0)
    queue(scheduler, works(loop, [100 - TEXT_OVERHEAD] * 8), deadline=1000.0)  # 8 s queued
    new = works(loop, [100 - TEXT_OVERHEAD] * 2)  # 2 s of its own
    with pytest.raises(DeadlineUnreachableError) as info:
        scheduler.admit(new, deadline=5.0, timeout=5.0, now=0.0, busy_s=0.0)
    # Processor sharing: its 2 s plus 2 s of the queued job's, after 1 s of granularity.
    assert info.value.retry_after == pytest.approx(5.0 - ADMIT_SHARE * 5.0)
    scheduler.admit(new, deadline=20.0, timeout=20.0, now=0.0, busy_s=0.0)  # time enough


def test_request_that_would_push_queued_work_past_its_deadline_is_refused(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = FairScheduler(max_batch_tokens=100, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=100.0, texts=1, seconds=1.0)
    queue(scheduler, works(loop, [100 - TEXT_OVERHEAD] * 4), deadline=5.5)  # ends at ~5 s
    new = works(loop, [100 - TEXT_OVERHEAD] * 2)
    with pytest.raises(DeadlineUnreachableError, match="push queued"):
        scheduler.admit(new, deadline=100.0, timeout=100.0, now=0.0, busy_s=0.0)
    small = works(loop, [10])  # a small one delays it by 0.18 s: still in time
    scheduler.admit(small, deadline=100.0, timeout=100.0, now=0.0, busy_s=0.0)


def test_discard_unwanted_frees_the_queue(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = FairScheduler(max_batch_tokens=100, max_batch_size=32, max_queue_texts=4096)
    batch = works(loop, [10] * 5)
    queue(scheduler, batch)
    for work in batch[:3]:
        work.waiters = 0
    assert scheduler.discard_unwanted() == batch[:3]
    assert len(scheduler.pending) == 2
    assert scheduler.pending_cost == pytest.approx(2 * (10 + TEXT_OVERHEAD))
