"""The scheduler alone (no threads): fairness, padding, admission by deadline, expiry."""

from __future__ import annotations

import asyncio
import math
import random
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
    CALIBRATION_CEILING,
    CALIBRATION_FLOOR,
    CALIBRATION_MIN,
    CALIBRATION_WINDOW,
    SMALL_BATCH_SHARE,
    TEXT_OVERHEAD,
    Job,
    Scheduler,
    Work,
    batch_with,
    cut_batches,
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


def queue(scheduler: Scheduler, batch: list[Work], deadline: float = math.inf) -> Job:
    job = Job(deadline=deadline)
    scheduler.add(batch, job)
    return job


@given(
    st.lists(st.integers(min_value=1, max_value=600), min_size=1, max_size=120),
    st.integers(min_value=16, max_value=5000),
    st.integers(min_value=1, max_value=64),
)
def test_batches_respect_the_budget_and_cover_every_text(
    lengths: list[int], budget: int, size: int
) -> None:
    loop = asyncio.new_event_loop()
    try:
        scheduler = Scheduler(budget, size, max_queue_texts=10_000)
        batch = works(loop, lengths)
        queue(scheduler, batch)
        seen: list[Work] = []
        while scheduler.pending:
            head = scheduler.pending[0]
            taken = scheduler.take(now=0.0).batch
            assert head in taken and len(taken) <= size
            widths = [w.tokens for w in taken]
            assert len(taken) == 1 or len(taken) * max(widths) <= budget
            seen.extend(taken)
        assert sorted(map(id, seen)) == sorted(map(id, batch))
    finally:
        loop.close()


def test_cut_batches_hand_example() -> None:
    # sorted 1, 3, 6 | 100 (over the budget: alone). All three: 3 x 6 = 18 > 12. Cuts, with
    # 4 a batch: {1, 3} {6}: 6 + 6 + 8 = 20; {1} {3, 6}: 1 + 12 + 8 = 21; each alone: 22.
    assert cut_batches([6, 1, 3, 100], 12, 8, 4.0) == [[1, 2], [0], [3]]


def test_cut_batches_puts_short_queries_and_long_responses_apart_when_padding_costs_more() -> None:
    lengths = [20] * 8 + [60] * 8  # an 8-item request: queries and responses
    # together: 16 x 60 = 960 padded tokens; apart: 8 x 20 + 8 x 60 = 640, plus one batch
    assert cut_batches(lengths, 1024, 32, 32.0) == [list(range(8)), list(range(8, 16))]
    assert cut_batches(lengths, 1024, 32, 400.0) == [list(range(16))]  # 1360 < 1440


def test_a_request_s_short_queries_and_long_responses_run_in_batches_apart(loop) -> None:  # type: ignore[no-untyped-def]
    """An 8-item request (8 queries of 20 tokens, 8 responses of 60) on the CPU budget:
    before, one batch of 16 rows padded to 60 tokens (960 tokens, a third of them padding)."""
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    request = works(loop, [20, 60] * 8)
    queue(scheduler, request)
    first, second = scheduler.take(now=0.0).batch, scheduler.take(now=0.0).batch
    assert sorted(w.tokens for w in first) == [20] * 8
    assert sorted(w.tokens for w in second) == [60] * 8
    assert not scheduler.pending


def test_cut_batches_respects_the_budget_and_size_and_keeps_every_text() -> None:
    rng = random.Random(3)
    for budget, size in ((512, 16), (16384, 128)):  # a CPU's and a GPU's (cut every 4th)
        for _ in range(50):
            lengths = [rng.randint(1, 600) for _ in range(rng.randint(1, 300))]
            batches = cut_batches(lengths, budget, size, budget / 32)
            assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
            for b in batches:
                widest = max(lengths[i] for i in b)
                assert len(b) == 1 or (len(b) <= size and len(b) * widest <= budget)


def test_batch_with_is_the_full_cut_s_batch_when_the_texts_are_within_its_reach() -> None:
    rng = random.Random(4)
    for _ in range(50):
        lengths = [rng.randint(1, 200) for _ in range(rng.randint(1, 17))]  # reach: 16 a side
        index = rng.randrange(len(lengths))
        full = next(b for b in cut_batches(lengths, 512, 16, 16.0) if index in b)
        assert batch_with(lengths, index, 512, 16, 16.0) == full


def test_small_request_behind_a_large_one_runs_in_the_next_batch(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=256, max_batch_size=8, max_queue_texts=4096)
    big = works(loop, [30] * 400)
    queue(scheduler, big)
    first = scheduler.take(now=0.0).batch
    assert all(w in big for w in first)
    small = works(loop, [30])
    queue(scheduler, small)
    second = scheduler.take(now=0.0).batch
    assert small[0] in second  # not behind the other 390-odd texts of the big request


def test_requests_of_similar_size_run_first_come_first_served(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=256, max_batch_size=8, max_queue_texts=4096)
    first, second = works(loop, [30] * 40), works(loop, [30] * 40)
    queue(scheduler, first)
    queue(scheduler, second)
    served = [w for _ in range(5) for w in scheduler.take(now=0.0).batch]
    assert len(served) == 40 and all(w in first for w in served)  # not interleaved
    assert all(w in second for w in scheduler.take(now=0.0).batch)


def test_a_started_request_is_not_overtaken_by_an_equal_one(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=256, max_batch_size=8, max_queue_texts=4096)
    first = works(loop, [30] * 40)
    queue(scheduler, first)
    scheduler.take(now=0.0)
    queue(scheduler, works(loop, [30] * 32))  # less than first's original, more than its rest
    assert all(w in first for w in scheduler.take(now=0.0).batch)


def test_batches_keep_similar_lengths(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
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
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    late, gone, fine = works(loop, [10], 5.0), works(loop, [10]), works(loop, [10], 100.0)
    for batch in (late, gone, fine):
        queue(scheduler, batch)
    gone[0].waiters = 0
    taken = scheduler.take(now=10.0)
    assert taken.expired == late and taken.dropped == gone and taken.batch == fine
    assert not scheduler.pending


def test_text_that_would_finish_after_its_deadline_is_expired(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=100.0, texts=1, seconds=1.0)  # 100 cost units per second
    tight = works(loop, [100], deadline=0.5)  # needs ~1.1 s, has 0.5 s
    queue(scheduler, tight)
    taken = scheduler.take(now=0.0)
    assert taken.expired == tight and not taken.batch


def test_idle_engine_takes_any_request_that_fits_the_queue(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=100)
    scheduler.rate.observe(cost=100.0, texts=1, seconds=1.0)
    # 150 s of work against a 100 s timeout: tried (estimates can be wrong), not refused.
    scheduler.admit(works(loop, [150 * 100 - TEXT_OVERHEAD]), 100.0, 100.0, 0.0, 0.0)


def test_request_larger_than_the_queue_is_413_naming_the_setting(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=64)
    with pytest.raises(RequestTooLargeError) as info:
        scheduler.admit(works(loop, [5] * 80), 60.0, 60.0, 0.0, 0.0)
    assert info.value.limit == "R3_MAX_QUEUE_TEXTS" and "64" in str(info.value)


def test_request_that_can_never_finish_in_time_is_413(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=100.0, texts=1, seconds=1.0)
    with pytest.raises(RequestTooLargeError) as info:  # 30 s of work, 10 s timeout
        scheduler.admit(works(loop, [100 - TEXT_OVERHEAD] * 30), 10.0, 10.0, 0.0, 0.0)
    assert info.value.limit == "R3_REQUEST_TIMEOUT_S"


def test_full_queue_is_retryable_with_a_delay_from_the_text_rate(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=10)
    scheduler.rate.observe(cost=100.0, texts=4, seconds=1.0)  # 4 texts per second
    queue(scheduler, works(loop, [5] * 8))
    with pytest.raises(QueueFullError) as info:
        scheduler.admit(works(loop, [5] * 6), 60.0, 60.0, 0.0, 0.0)
    assert info.value.retry_after == pytest.approx(1.0)  # 4 texts over the limit at 4/s


def test_request_that_would_miss_its_deadline_is_refused_with_retry_after(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=100, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=100.0, texts=1, seconds=1.0)
    queue(scheduler, works(loop, [100 - TEXT_OVERHEAD] * 4), deadline=1000.0)  # 4 s queued
    new = works(loop, [100 - TEXT_OVERHEAD] * 4)  # 4 s of its own, after the equal job
    with pytest.raises(DeadlineUnreachableError) as info:
        scheduler.admit(new, deadline=10.0, timeout=10.0, now=0.0, busy_s=0.0)
    # 1 s of batch granularity + 4 s queued + 4 s own = 9 s, past 80% of 10 s by 1 s.
    assert info.value.retry_after == pytest.approx(9.0 - ADMIT_SHARE * 10.0)
    scheduler.admit(new, deadline=20.0, timeout=20.0, now=0.0, busy_s=0.0)  # time enough
    small = works(loop, [10])  # runs before the queued job: 1 s + 0.18 s
    scheduler.admit(small, deadline=2.0, timeout=2.0, now=0.0, busy_s=0.0)


def test_request_that_would_push_queued_work_past_its_deadline_is_refused(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=100, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=100.0, texts=1, seconds=1.0)
    queue(scheduler, works(loop, [100 - TEXT_OVERHEAD] * 4), deadline=5.5)  # ends at ~5 s
    new = works(loop, [100 - TEXT_OVERHEAD] * 2)
    with pytest.raises(DeadlineUnreachableError, match="push queued"):
        scheduler.admit(new, deadline=100.0, timeout=100.0, now=0.0, busy_s=0.0)
    small = works(loop, [10])  # a small one delays it by only 0.18 s: still in time
    scheduler.admit(small, deadline=100.0, timeout=100.0, now=0.0, busy_s=0.0)


def test_discard_unwanted_frees_the_queue(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=100, max_batch_size=32, max_queue_texts=4096)
    batch = works(loop, [10] * 5)
    queue(scheduler, batch)
    for work in batch[:3]:
        work.waiters = 0
    assert scheduler.discard_unwanted() == batch[:3]
    assert len(scheduler.pending) == 2
    assert scheduler.pending_cost == pytest.approx(2 * (10 + TEXT_OVERHEAD))


def test_a_small_request_is_done_within_two_batches(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    queue(scheduler, works(loop, [30] * 300))
    scheduler.take(now=0.0)
    small = works(loop, [10, 400])  # a short query and a long response
    queue(scheduler, small)
    first, second = scheduler.take(now=0.0).batch, scheduler.take(now=0.0).batch
    assert all(w in first + second for w in small)
    for batch in (first, second):  # each batch stays length-homogeneous
        assert len(batch) * max(w.tokens for w in batch) <= 1024


def test_head_request_that_cannot_finish_in_time_is_expired_not_run(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=100.0, texts=1, seconds=1.0)
    doomed = works(loop, [100 - TEXT_OVERHEAD] * 10, deadline=5.0)  # needs 10 s, has 5
    fine = works(loop, [100 - TEXT_OVERHEAD] * 20, deadline=100.0)
    queue(scheduler, doomed)
    queue(scheduler, fine)
    taken = scheduler.take(now=0.0)
    assert taken.expired == doomed
    assert taken.batch and all(w in fine for w in taken.batch)


def test_drain_rate_weighs_batches_by_their_time() -> None:
    from r3_service.engine.scheduler import DrainRate

    rate = DrainRate(decay=1.0)
    rate.observe(cost=1000.0, texts=10, seconds=1.0)
    rate.observe(cost=10.0, texts=1, seconds=0.1)  # a tiny batch, mostly overhead
    assert rate.cost_per_s == pytest.approx(1010 / 1.1)  # not the mean of 1000 and 100
    assert rate.texts_per_s == pytest.approx(11 / 1.1)
    assert rate.seconds(1010.0) == pytest.approx(1.1)


def test_queued_small_requests_all_finish_before_the_large_one_goes_on(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    large = works(loop, [30] * 300)
    queue(scheduler, large)
    scheduler.take(now=0.0)
    small = works(loop, [10, 20]) + works(loop, [12, 148])
    queue(scheduler, small[:2])
    queue(scheduler, small[2:])
    served = [w for _ in range(3) for w in scheduler.take(now=0.0).batch]
    assert all(w in served for w in small)  # a long text does not leave its request behind


def test_admission_plans_with_a_slow_recent_batch_on_a_machine_whose_speed_swings() -> None:
    from r3_service.engine.scheduler import DrainRate

    steady, swinging = DrainRate(), DrainRate()
    for i in range(40):
        steady.observe(cost=1000.0, texts=10, seconds=1.0, full=True)
        swinging.observe(cost=1000.0, texts=10, seconds=0.5 if i % 2 else 2.0, full=True)
    assert steady.cautious_cost_per_s == pytest.approx(steady.cost_per_s)
    assert swinging.cautious_cost_per_s == pytest.approx(500.0)  # the slow half, not the mean
    assert swinging.cautious_seconds(1000.0) == pytest.approx(2.0)
    assert swinging.cost_per_s > 500.0  # expiry and busy estimates keep the average


def test_a_large_request_plans_around_the_stream_of_small_ones(loop) -> None:  # type: ignore[no-untyped-def]
    from r3_service.engine.scheduler import SMALL_WINDOW_S

    scheduler = Scheduler(max_batch_tokens=100, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=100.0, texts=1, seconds=1.0)  # 100 cost units per second
    large = works(loop, [100 - TEXT_OVERHEAD] * 6)  # 6 s of its own at the full rate
    seconds = int(SMALL_WINDOW_S * 5)
    queued = Job(deadline=1000.0)
    scheduler.add(works(loop, [100] * 3), queued, now=0.0)  # 3.24 s of work queued
    # 1 s (a batch) + 3.24 + 6.48 s <= 80% of 14 s: taken on a worker nobody else needs
    scheduler.admit(large, deadline=14.0, timeout=14.0, now=0.0, busy_s=0.0)
    for t in range(seconds):  # a small job of 50 cost units every second
        scheduler.add(works(loop, [50 - TEXT_OVERHEAD]), Job(deadline=1000.0), now=float(t))
        scheduler.take(now=float(t))  # takes the small job (it runs before the queued one)
    now = float(seconds)
    assert scheduler.small_cost_per_s(now) == pytest.approx(50.0, rel=0.1)
    assert queued.works  # the small jobs went first
    with pytest.raises(DeadlineUnreachableError):  # half the rate left: 1 + 19.4 s > 11.2 s
        scheduler.admit(large, deadline=now + 14.0, timeout=14.0, now=now, busy_s=0.0)


def test_smaller_size_classes_go_first_and_arrival_order_within_a_class(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=1000.0, texts=10, seconds=1.0)
    older = works(loop, [120] * 8)  # an 8-item request: 1024, one batch
    scheduler.add(older, Job(deadline=100.0), now=0.0)
    newer = works(loop, [200] * 3)  # smaller (624), same class, arrives later
    scheduler.add(newer, Job(deadline=100.0), now=0.1)
    probe = works(loop, [30, 60])  # a 1-item request: 106, the smallest class
    scheduler.add(probe, Job(deadline=100.0), now=0.5)
    assert scheduler.size_class(106) < scheduler.size_class(624) == scheduler.size_class(1024)
    assert scheduler.take(now=0.5).batch == probe  # overtakes both
    assert scheduler.take(now=0.5).batch == older  # within a class, the one waiting longer
    assert scheduler.take(now=0.5).batch == newer


def test_a_request_with_a_long_text_left_waits_only_for_smaller_classes(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=1000.0, texts=10, seconds=1.0)
    first = works(loop, [10, 600])  # a short query and a long response: two batches
    scheduler.add(first, Job(deadline=100.0), now=0.0)
    assert first[0] in scheduler.take(now=0.0).batch  # its query ran; its response is left
    for t in range(1, 4):  # newer requests of its own class: they never overtake it
        scheduler.add(works(loop, [300, 300]), Job(deadline=100.0), now=float(t))
    short = works(loop, [5, 5])  # a newer one of a smaller class runs first, in a short batch
    scheduler.add(short, Job(deadline=100.0), now=3.0)
    assert scheduler.take(now=3.5).batch == short
    assert first[1] in scheduler.take(now=3.5).batch


def test_large_requests_run_one_after_the_other(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    rng = np.random.default_rng(1)
    first, second = (works(loop, [int(n) for n in rng.integers(5, 200, 100)]) for _ in range(2))
    job = queue(scheduler, first)
    queue(scheduler, second)
    queue(scheduler, works(loop, [30, 60]))
    for _ in range(60):
        left = job.remaining
        batch = scheduler.take(now=0.0).batch
        if any(w in second for w in batch):  # only once the first has a batch or less left
            assert left <= 1024
    assert not scheduler.pending


def test_a_reserved_place_counts_for_later_admissions_until_cancelled(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=100, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=100.0, texts=1, seconds=1.0)
    # 6 s of work admitted on its estimate; its texts are not queued yet.
    place = scheduler.reserve(6, 600.0, deadline=10.0, timeout=10.0, now=0.0, busy_s=0.0)
    assert place.reserved and scheduler.pending_count == 0
    assert not scheduler.take(now=0.0)  # a place holds no text to run
    # 3 s of its own: it runs first (shorter) and would push the reserved job, done at
    # 1 + 6 s, to 10 s: past its deadline less its margin.
    later = works(loop, [100 - TEXT_OVERHEAD] * 3)
    with pytest.raises(DeadlineUnreachableError, match="push queued"):
        scheduler.admit(later, deadline=10.0, timeout=10.0, now=0.0, busy_s=0.0)
    scheduler.cancel(place)
    scheduler.cancel(place)  # idempotent
    scheduler.admit(later, deadline=10.0, timeout=10.0, now=0.0, busy_s=0.0)


def test_texts_take_their_reserved_place_without_a_second_deadline_check(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=100, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=100.0, texts=1, seconds=1.0)
    first = scheduler.reserve(4, 400.0, deadline=10.0, timeout=10.0, now=0.0, busy_s=0.0)
    equal = queue(scheduler, works(loop, [100 - TEXT_OVERHEAD] * 4), deadline=100.0)
    # The request typed its queries meanwhile; its texts would now be refused on their own
    # (4 s queued before them), but they were planned for at admission.
    texts = works(loop, [100 - TEXT_OVERHEAD] * 4, deadline=10.0)
    scheduler.admit(texts, 10.0, 10.0, now=1.0, busy_s=0.0, reserved=first.reserved)
    scheduler.add(texts, first, now=1.0)
    assert not first.reserved and first.remaining == pytest.approx(400.0)
    assert first.seq < equal.seq  # it keeps its place in arrival order
    assert scheduler.take(now=1.0).batch[0] in texts
    with pytest.raises(RequestTooLargeError):  # the queue's size is still checked
        scheduler.admit(works(loop, [5] * 5000), 10.0, 10.0, 1.0, 0.0, reserved=True)


def test_a_small_head_gets_a_short_batch_and_a_large_one_the_full_budget(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=64, max_queue_texts=4096)
    large = works(loop, [100 - TEXT_OVERHEAD] * 40)
    scheduler.add(large, Job(deadline=100.0), now=0.0)
    full = scheduler.take(now=0.0).batch
    assert len(full) * 92 > SMALL_BATCH_SHARE * 1024  # the large head: the full budget
    small = works(loop, [100 - TEXT_OVERHEAD])
    scheduler.add(small, Job(deadline=100.0), now=1.0)
    short = scheduler.take(now=1.0).batch
    assert small[0] in short
    assert len(short) * 92 <= SMALL_BATCH_SHARE * 1024 < len(full) * 92


def test_queued_small_requests_share_batches_ahead_of_large_ones(loop) -> None:  # type: ignore[no-untyped-def]
    """Five 1-item requests (a 20-token query and a 150-token response each) queued ahead of
    an 8-item one run in 2 batches. With a quarter budget per batch they took 6: each
    response alone, so that at 10 such requests a second their own load outgrew the worker."""
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    large = works(loop, [150] * 16)
    scheduler.add(large, Job(deadline=100.0), now=0.0)
    probes = [works(loop, [20, 150]) for _ in range(5)]
    for t, probe in enumerate(probes):
        scheduler.add(probe, Job(deadline=100.0), now=0.1 * (t + 1))
    waiting = {id(w) for probe in probes for w in probe}
    batches = []
    while waiting:
        batch = scheduler.take(now=1.0).batch
        batches.append(batch)
        waiting -= {id(w) for w in batch}
        assert len(batches) <= 2, [[w.tokens for w in b] for b in batches]
    first = {id(w) for w in batches[0]}
    assert all(probe[0] and id(probe[0]) in first for probe in probes)  # every query at once
    # The probes' texts fill the batches; the large request's only where room was left.
    assert not any(w in large for w in batches[0])


def test_a_small_head_takes_filler_only_up_to_a_short_batch(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    large = works(loop, [40] * 40)
    scheduler.add(large, Job(deadline=100.0), now=0.0)
    probe = works(loop, [20, 50])
    scheduler.add(probe, Job(deadline=100.0), now=0.1)
    batch = scheduler.take(now=0.2).batch
    assert set(map(id, probe)) <= set(map(id, batch))  # the whole request in one batch
    assert len(batch) == int(SMALL_BATCH_SHARE * 1024) // 50  # filler up to a short batch
    assert max(w.tokens for w in batch) == 50  # no filler wider than its own texts


def test_small_requests_alone_keep_the_full_budget(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=64, max_queue_texts=4096)
    for t in range(20):  # per-sample calls (OpenRLHF's pattern): only small requests
        scheduler.add(works(loop, [100 - TEXT_OVERHEAD] * 2), Job(deadline=100.0), now=t / 100)
    batch = scheduler.take(now=1.0).batch
    assert len(batch) == 1024 // 92  # as many as the full budget holds


def test_a_small_request_is_admitted_by_its_place_in_the_order(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=1000.0, texts=10, seconds=1.0)  # 1000 cost units per second
    # Eight 8-item requests queued (8.2 s of work); the first one is due just after its
    # estimated end (0.3 s in flight + 0.256 s short batch + 1.024 s = 1.58 s).
    scheduler.add(works(loop, [120] * 8), Job(deadline=1.7, margin=0.2), now=0.0)
    for _ in range(7):
        scheduler.add(works(loop, [120] * 8), Job(deadline=100.0, margin=10.0), now=0.0)
    probe = works(loop, [30, 60])  # a 1-item request (106): it runs before all of them
    # In its place: the batch in flight, a short batch, itself = 0.66 s. Counting all
    # queued work (or the first request's margin) it would have been refused.
    scheduler.admit(probe, deadline=1.0, timeout=1.0, now=0.0, busy_s=0.3)
    same_class = works(loop, [120] * 8)  # behind the eight: 0.3 + 1.024 + 9.216 s
    with pytest.raises(DeadlineUnreachableError) as info:
        scheduler.admit(same_class, deadline=5.0, timeout=5.0, now=0.0, busy_s=0.3)
    assert info.value.retry_after == pytest.approx(0.3 + 1.024 + 9.216 - ADMIT_SHARE * 5.0)


def test_a_small_request_that_would_miss_its_deadline_in_its_place_is_refused(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=1000.0, texts=10, seconds=1.0)
    for t in range(5):  # five older requests of its class: 1 s of work ahead of it
        scheduler.add(works(loop, [92, 92]), Job(deadline=100.0), now=t / 10)
    probe = works(loop, [30, 60])
    with pytest.raises(DeadlineUnreachableError) as info:  # 0.3 + 0.256 + 1.106 s > 1 s
        scheduler.admit(probe, deadline=1.5, timeout=1.0, now=0.5, busy_s=0.3)
    assert info.value.retry_after == pytest.approx(0.3 + 0.256 + 1.106 - 1.0)
    scheduler.admit(probe, deadline=2.2, timeout=1.7, now=0.5, busy_s=0.3)  # all its time


def test_a_request_whose_least_cost_cannot_fit_even_alone_is_413_before_any_work(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=1000.0, texts=10, seconds=1.0)
    with pytest.raises(RequestTooLargeError) as info:  # idle, but 12 s of work in 10 s
        scheduler.reserve(40, 20000.0, 10.0, 10.0, now=0.0, busy_s=0.0, least_cost=12000.0)
    assert info.value.limit == "R3_REQUEST_TIMEOUT_S"
    with pytest.raises(RequestTooLargeError):  # 8 s of model time after 3 s of tokenising
        scheduler.reserve(40, 8000.0, 10.0, 10.0, now=0.0, busy_s=0.0, lead_s=3.0)
    place = scheduler.reserve(40, 8000.0, 10.0, 10.0, now=0.0, busy_s=0.0, lead_s=1.0)
    scheduler.cancel(place)  # 9 s alone: tried on an idle worker
    # On exact token counts (its texts were admitted already) the tolerance is wider.
    scheduler.admit_cost(40, 12000.0, 10.0, 10.0, now=0.0, busy_s=0.0)


def test_tokenising_time_counts_in_a_busy_admission(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=1000.0, texts=10, seconds=1.0)
    # queued long ago (no stream of smaller requests to plan around now)
    scheduler.add(works(loop, [120] * 8), Job(deadline=100.0), now=-100.0)
    # 0.3 + 1.024 (a full batch) + 1.024 + 2.0 s <= 80% of 10 s: taken
    place = scheduler.reserve(20, 2000.0, 10.0, 10.0, now=0.0, busy_s=0.3)
    scheduler.cancel(place)
    with pytest.raises(DeadlineUnreachableError):  # the same after 5 s of tokenising
        scheduler.reserve(20, 2000.0, 10.0, 10.0, now=0.0, busy_s=0.3, lead_s=5.0)


def test_an_admitted_request_whose_slack_ran_out_goes_before_smaller_ones(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=1000.0, texts=10, seconds=1.0)
    eight = works(loop, [120] * 8, deadline=5.0)  # 1.024 s of work, admitted with 5 s
    scheduler.add(eight, Job(deadline=5.0, margin=0.5), now=0.0)
    probe = works(loop, [30, 60])
    scheduler.add(probe, Job(deadline=9.0, margin=0.5), now=3.0)
    assert scheduler.take(now=3.0).batch == probe  # 0.98 s of slack: smaller first
    late = works(loop, [30, 60])
    scheduler.add(late, Job(deadline=9.0, margin=0.5), now=3.5)
    # The machine was slower than planned: at 3.6 s only 0.38 s of slack is left.
    first = scheduler.take(now=3.6).batch  # its batch runs first (the 1-item one rides)
    assert eight[0] in first
    both = first + scheduler.take(now=3.6).batch
    assert all(w in both for w in eight)
    large = works(loop, [120] * 40, deadline=6.0)  # more than a batch: never promoted
    scheduler.add(large, Job(deadline=6.0, margin=0.5), now=3.6)
    probe2 = works(loop, [30, 60])
    scheduler.add(probe2, Job(deadline=9.0, margin=0.5), now=3.6)
    assert scheduler.take(now=3.6).batch == probe2


def test_a_request_is_promoted_only_when_one_more_batch_would_make_it_late(loop) -> None:  # type: ignore[no-untyped-def]
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=1000.0, texts=10, seconds=1.0)  # a full batch: 1.024 s
    eight = works(loop, [120] * 8, deadline=10.0)
    scheduler.add(eight, Job(deadline=10.0, margin=3.0), now=0.0)
    probe = works(loop, [30, 60])
    scheduler.add(probe, Job(deadline=20.0, margin=0.5), now=7.0)
    # 10 - 7.5 - 1.024 = 1.48 s of slack: under its margin, but more than a batch
    assert scheduler.take(now=7.5).batch == probe
    later = works(loop, [30, 60])
    scheduler.add(later, Job(deadline=20.0, margin=0.5), now=8.0)
    assert eight[0] in scheduler.take(now=8.1).batch  # 0.88 s: less than a batch


def test_admission_learns_from_admitted_requests_that_took_longer_than_estimated(loop) -> None:  # type: ignore[no-untyped-def]
    """Requests that took twice their estimate make admission count their excess too: one
    that fitted before is refused once eight of them are in; quicker ones relax it again."""
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=1000.0, texts=10, seconds=1.0)
    scheduler.add(works(loop, [92] * 5), Job(deadline=100.0), now=0.0)  # 0.5 s queued
    probe = works(loop, [30, 60])  # cost 106
    # in flight 0.3 + a short batch 0.256 + its own 0.106 s = 0.662 s, deadline in 1 s
    assert scheduler.admit_cost(2, 106.0, 1.0, 1.0, 0.0, 0.3) == pytest.approx(0.662)
    for k in range(CALIBRATION_MIN):
        job = scheduler.reserve(2, 106.0, deadline=10.0, timeout=10.0, now=float(k), busy_s=0.3)
        scheduler.cancel(job)
        scheduler.finished(job, now=job.admitted + 2 * job.estimate)
    assert scheduler.planned(106.0, 0.662) == pytest.approx(1.324)
    assert scheduler.planned(5000.0, 3.0) == 3.0  # other size classes are learned apart
    assert scheduler.planned(600.0, 3.0) == 3.0
    with pytest.raises(DeadlineUnreachableError):
        scheduler.admit(probe, deadline=1.0, timeout=1.0, now=0.0, busy_s=0.3)
    # the deadline is checked against the planned time; the excess is taken over the
    # model's estimate itself (what admit_cost returns and the job keeps)
    assert scheduler.admit_cost(2, 106.0, 50.0, 50.0, 10.0, 0.3) == pytest.approx(0.662)
    for _ in range(CALIBRATION_WINDOW):
        job = scheduler.reserve(2, 106.0, deadline=50.0, timeout=50.0, now=10.0, busy_s=0.3)
        assert job.estimate == pytest.approx(0.662)
        scheduler.cancel(job)
        scheduler.finished(job, now=job.admitted + 0.9 * job.estimate)
    assert scheduler.planned(106.0, 0.662) == pytest.approx(0.9 * 0.662)
    scheduler.admit(probe, deadline=1.0, timeout=1.0, now=0.0, busy_s=0.3)


def test_a_steady_error_is_corrected_in_full_and_each_size_class_apart(loop) -> None:  # type: ignore[no-untyped-def]
    """Requests that always take 3 times the model's estimate: they are planned at 3 times it
    (measured against the planned time instead, the error would be learnt only in part).
    1-item requests that finish early, ten for every 8-item one, do not water the 8-item
    requests' excess down."""
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=1000.0, texts=10, seconds=1.0)
    for k in range(4 * CALIBRATION_WINDOW):
        eight = scheduler.reserve(16, 800.0, deadline=1e6, timeout=1e6, now=k, busy_s=0.0)
        scheduler.cancel(eight)
        scheduler.finished(eight, now=eight.admitted + 3.0 * eight.estimate)
        for _ in range(10):
            one = scheduler.reserve(2, 106.0, deadline=1e6, timeout=1e6, now=k, busy_s=0.0)
            scheduler.cancel(one)
            scheduler.finished(one, now=one.admitted + 0.5 * one.estimate)
    assert eight.estimate == pytest.approx(1.824)  # a batch of granularity and its own 0.8 s
    assert scheduler.planned(800.0, eight.estimate) == pytest.approx(3.0 * 1.824)
    assert scheduler.planned(106.0, one.estimate) == pytest.approx(0.5 * one.estimate)
    assert scheduler.calibration_count(800.0) == CALIBRATION_WINDOW


def test_an_error_learnt_on_short_estimates_is_not_scaled_up_to_a_long_one(loop) -> None:  # type: ignore[no-untyped-def]
    """The closed loop of bench/bench_reward.py (16 clients, untyped 8-item requests, 60 s
    deadline): estimates of about 2 s of which every fourth took 4 times as long. A request
    whose estimate is 12.3 s (a long queue at the cautious rate) is admitted: planned at its
    estimate plus the 6.6 s those requests ran over, not at 4 times it (49.2 s, past the
    48 s it may be planned at), which refused it with 503."""
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=1000.0, texts=10, seconds=1.0)
    for k in range(CALIBRATION_WINDOW):
        job = scheduler.reserve(
            16, 800.0, deadline=1e6, timeout=60.0, now=float(k), busy_s=0.1 * (k % 5)
        )
        scheduler.cancel(job)
        took = (4.0 if k % 4 == 0 else 0.8) * job.estimate
        scheduler.finished(job, now=job.admitted + took)
    # estimates 1.824 to 2.224 s; the longest of the slow ones ran 3 x 2.224 s over
    assert scheduler.planned(800.0, 12.3) == pytest.approx(12.3 + 3 * 2.224)
    now = 1000.0
    place = scheduler.reserve(16, 800.0, deadline=now + 60.0, timeout=60.0, now=now, busy_s=10.476)
    assert place.estimate == pytest.approx(12.3)
    scheduler.cancel(place)
    # a long queue with a short deadline is still refused: the excess is added, not dropped
    with pytest.raises(DeadlineUnreachableError, match=r"\+6\.7 s is the recent error"):
        scheduler.reserve(16, 800.0, deadline=now + 20.0, timeout=60.0, now=now, busy_s=10.476)


def test_the_smallest_class_is_planned_with_its_excess_in_seconds_not_a_ratio(loop) -> None:  # type: ignore[no-untyped-def]
    """1-item requests that always take 0.3 s more than estimated (latency that does not
    grow with the estimate). Their estimate is 0.362 s (a short batch of granularity, their
    own 106 tokens at 1,000 a second), so the ratio is 1.83: a 1-item request behind a
    batch with 1.2 s left (1.562 s estimated) would be planned at 2.86 s and refused with
    2.5 s to go; with the excess, at 1.862 s, it is admitted. One behind 2.2 s is not."""
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=1000.0, texts=10, seconds=1.0)
    for k in range(CALIBRATION_WINDOW):
        one = scheduler.reserve(2, 106.0, deadline=1e6, timeout=1e6, now=k, busy_s=0.0)
        scheduler.cancel(one)
        scheduler.finished(one, now=one.admitted + one.estimate + 0.3)
    assert one.estimate == pytest.approx(0.362)
    assert scheduler.planned(106.0, 1.562) == pytest.approx(1.862)
    now = 1000.0
    taken = scheduler.reserve(2, 106.0, deadline=now + 2.5, timeout=5.0, now=now, busy_s=1.2)
    assert taken.estimate == pytest.approx(1.562)
    scheduler.cancel(taken)
    with pytest.raises(DeadlineUnreachableError) as refused:
        scheduler.reserve(2, 106.0, deadline=now + 2.5, timeout=5.0, now=now, busy_s=2.2)
    message = str(refused.value)  # what the estimate is made of, for the operator
    assert "about 2.9 s, past its deadline in 2.5 s" in message
    assert "2.2 s is left of the batch in flight" in message
    assert "+0.3 s is the recent error for requests of its size" in message
    # the other classes learn from their own errors (none of theirs measured yet)
    assert scheduler.planned(800.0, 2.0) == pytest.approx(2.0)


def test_the_plan_stays_between_its_floor_and_its_ceiling(loop) -> None:  # type: ignore[no-untyped-def]
    """Requests that finished early lower the plan at most to its floor; requests that ran
    into their deadline (an excess as long as the deadline) raise a short estimate at most
    to its ceiling, so that one slow spell under overload does not refuse the whole class."""
    scheduler = Scheduler(max_batch_tokens=1024, max_batch_size=32, max_queue_texts=4096)
    scheduler.rate.observe(cost=1000.0, texts=10, seconds=1.0)
    for _ in range(CALIBRATION_MIN):
        job = scheduler.reserve(2, 106.0, deadline=10.0, timeout=10.0, now=0.0, busy_s=5.0)
        scheduler.cancel(job)
        assert job.estimate == pytest.approx(5.362)
        scheduler.finished(job, now=0.01)
    assert scheduler.planned(106.0, 5.362) == pytest.approx(CALIBRATION_FLOOR * 5.362)
    assert scheduler.planned(106.0, 20.0) == pytest.approx(20.0 + 0.01 - 5.362)
    for _ in range(CALIBRATION_WINDOW):  # estimated 0.362 s, ended at a 5 s deadline
        job = scheduler.reserve(2, 106.0, deadline=5.0, timeout=5.0, now=0.0, busy_s=0.0)
        scheduler.cancel(job)
        scheduler.finished(job, now=5.0)
    assert scheduler.planned(106.0, 0.362) == pytest.approx(CALIBRATION_CEILING * 0.362)
    assert scheduler.planned(106.0, 2.0) == pytest.approx(2.0 + 5.0 - 0.362)
    unmeasured = Job(deadline=1.0)  # admitted before any rate was known: nothing to learn
    scheduler.finished(unmeasured, now=5.0)
    assert scheduler.calibration_count(106.0) == CALIBRATION_WINDOW
