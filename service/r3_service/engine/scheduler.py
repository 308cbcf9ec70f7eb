"""Which texts run next, and which requests are taken at all. No threads: ``Batcher`` locks it.

**Fairness.** Each submission (one request's new texts) is a flow. Its texts get finish
tags ``start + cumulative cost``, where ``start`` is the virtual time (the tag of the
text last put into a batch): self-clocked fair queueing. Batches form around the
smallest tag, so a 1-item request that arrives behind a 500-item one runs in the next
batch, while the big one goes on at its fair share (processor sharing).

**Padding.** A batch is not just the next tags: a window of the next few batches' worth
of texts (by tag) is sorted by token length and cut by the token budget, and the batch
holding the smallest tag runs. The texts of a batch have similar lengths.

**Admission.** A text costs its token count plus a fixed overhead; the drain rate (cost
per second of batch time, an EWMA over batches) turns costs into seconds. Under
processor sharing a new job of cost C finishes after ``sum(min(R_j, C)) + C`` and delays
each queued job j by ``min(R_j, C)``. A job is refused, with the seconds until it would
fit, when it would miss its own deadline (within ``ADMIT_SHARE`` of its time) or push a
queued job that would make its deadline past it. On an idle engine every job is tried.

**Expiry.** Texts whose deadline has passed, or would pass before their batch ends, are
never run; texts nobody waits for any more are dropped.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from r3_service.engine.errors import (
    DeadlineUnreachableError,
    QueueFullError,
    RequestTooLargeError,
)

#: Fixed cost of one text beyond its tokens (padding, per-row work), in tokens.
TEXT_OVERHEAD = 8
#: Texts considered for one batch: this many batches' worth from the head of the queue.
WINDOW_BATCHES = 4
#: A new job must be estimated to finish within this share of its time to deadline; the
#: rest is slack for small jobs that arrive later and run before its tail.
ADMIT_SHARE = 0.8
#: A job whose own cost takes longer than this many request timeouts can never finish (413).
TOO_LARGE_TIMEOUTS = 2.0
#: Weight of the newest batch in the drain-rate average.
RATE_ALPHA = 0.3


@dataclass(eq=False)
class Job:
    """One submission: its deadline and the cost of its texts not yet in a batch."""

    deadline: float
    remaining: float = 0.0
    pending: int = 0


@dataclass(eq=False)
class Work:
    """One text waiting for its embedding (shared by every request that needs the text)."""

    text: str
    future: asyncio.Future[np.ndarray]
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: The latest deadline of the requests waiting for it; past it, it is never run.
    deadline: float = math.inf
    #: Requests still waiting for this text; 0 means its work can be dropped.
    waiters: int = 1
    job: Job | None = None
    tag: float = 0.0
    enqueued: float = field(default_factory=time.monotonic)
    #: Set by the worker: seconds queued before its batch ran, and the batch's model time.
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return len(self.ids)

    @property
    def cost(self) -> float:
        return len(self.ids) + TEXT_OVERHEAD

    @property
    def wanted(self) -> bool:
        return self.waiters > 0 and not self.future.done()


def _tag(work: Work) -> float:
    return work.tag


class DrainRate:
    """Cost units and texts processed per second of batch time (EWMA over batches)."""

    def __init__(self, alpha: float = RATE_ALPHA) -> None:
        self.alpha = alpha
        self.cost_per_s = 0.0
        self.texts_per_s = 0.0

    @property
    def known(self) -> bool:
        return self.cost_per_s > 0

    def observe(self, cost: float, texts: int, seconds: float) -> None:
        if seconds <= 0 or cost <= 0:
            return
        if not self.known:
            self.cost_per_s, self.texts_per_s = cost / seconds, texts / seconds
            return
        a = self.alpha
        self.cost_per_s = (1 - a) * self.cost_per_s + a * cost / seconds
        self.texts_per_s = (1 - a) * self.texts_per_s + a * texts / seconds

    def seconds(self, cost: float) -> float:
        """Estimated batch seconds for ``cost`` (0 while nothing is measured)."""
        return cost / self.cost_per_s if self.known else 0.0

    def seconds_for_texts(self, texts: int) -> float:
        return texts / self.texts_per_s if self.texts_per_s > 0 else 1.0


def cut_batches(
    lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int
) -> list[list[int]]:
    """Indices of ``lengths`` in length-sorted batches within the token budget.

    Each batch satisfies ``len(batch) * max(length) <= max_batch_tokens`` and
    ``len(batch) <= max_batch_size``, except a single text longer than the budget,
    which forms a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        width = lengths[index]  # ascending, so the newest member is the widest
        if current and (
            (len(current) + 1) * width > max_batch_tokens or len(current) >= max_batch_size
        ):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def ps_finish_seconds(remaining: Sequence[float], rate: float) -> list[float]:
    """Seconds until each job finishes under processor sharing at ``rate`` (cost/s).

    With remaining costs sorted R_1 <= ... <= R_n, job k ends after
    ``(R_1 + ... + R_(k-1) + (n - k + 1) R_k) / rate``. Returned in input order.
    """
    order = sorted(range(len(remaining)), key=lambda i: remaining[i])
    out = [0.0] * len(remaining)
    done = 0.0
    n = len(remaining)
    for k, index in enumerate(order):
        out[index] = (done + (n - k) * remaining[index]) / rate
        done += remaining[index]
    return out


@dataclass
class Taken:
    """What one scheduling step hands the worker."""

    batch: list[Work] = field(default_factory=list)
    #: Deadline passed (or would pass before the batch ends): answer with a timeout.
    expired: list[Work] = field(default_factory=list)
    #: Nobody waits for these any more.
    dropped: list[Work] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.batch or self.expired or self.dropped)


class FairScheduler:
    """Pending texts in fair-queueing order, admission by deadline, batches by length."""

    def __init__(self, max_batch_tokens: int, max_batch_size: int, max_queue_texts: int) -> None:
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_queue_texts = max_queue_texts
        self.rate = DrainRate()
        #: Texts accepted and not yet answered (pending or in a running batch).
        self.in_flight = 0
        self.pending_cost = 0.0
        self._pending: list[Work] = []
        self._jobs: set[Job] = set()
        self._vtime = 0.0

    @property
    def pending(self) -> Sequence[Work]:
        return self._pending

    @property
    def pending_tokens(self) -> int:
        return sum(w.tokens for w in self._pending)

    # -- admission -------------------------------------------------------------------

    def admit(
        self, works: Sequence[Work], deadline: float, timeout: float, now: float, busy_s: float
    ) -> None:
        """Raise if ``works`` (one job) cannot be taken now.

        ``busy_s``: estimated seconds left of the batch that is running.
        """
        count, cost = len(works), sum(w.cost for w in works)
        self._check_size(count, cost, timeout)
        if self.in_flight + count > self.max_queue_texts:
            excess = self.in_flight + count - self.max_queue_texts
            raise QueueFullError(
                f"queue full ({self.in_flight} texts queued, this request needs {count}, "
                f"limit {self.max_queue_texts})",
                retry_after=self.rate.seconds_for_texts(excess),
            )
        if not self.rate.known or (not self._jobs and busy_s <= 0):
            return  # nothing measured yet, or idle: always try
        start = busy_s + self.rate.seconds(self.max_batch_tokens)  # one batch of granularity
        self._check_own_deadline(cost, deadline - now, start)
        self._check_queued_deadlines(cost, now, start)

    def _check_size(self, count: int, cost: float, timeout: float) -> None:
        if count > self.max_queue_texts:
            raise RequestTooLargeError(
                f"request needs {count} texts at once; the queue holds at most "
                f"{self.max_queue_texts} (R3_MAX_QUEUE_TEXTS): send fewer items per request",
                limit="R3_MAX_QUEUE_TEXTS",
            )
        seconds = self.rate.seconds(cost)
        if seconds > TOO_LARGE_TIMEOUTS * timeout:
            raise RequestTooLargeError(
                f"request needs about {seconds:.0f} s of model time at the measured rate "
                f"({cost:.0f} tokens), more than the request timeout of {timeout:g} s "
                "(R3_REQUEST_TIMEOUT_S) allows: send fewer or shorter items per request",
                limit="R3_REQUEST_TIMEOUT_S",
            )

    def _check_own_deadline(self, cost: float, time_left: float, start: float) -> None:
        shared = sum(min(job.remaining, cost) for job in self._jobs)
        finish = start + self.rate.seconds(shared + cost)
        allowed = ADMIT_SHARE * time_left
        if finish > allowed:
            raise DeadlineUnreachableError(
                f"overloaded: the queued work ahead means this request would take about "
                f"{finish:.1f} s, past its deadline in {time_left:.1f} s",
                retry_after=finish - allowed,
            )

    def _check_queued_deadlines(self, cost: float, now: float, start: float) -> None:
        jobs = list(self._jobs)
        ends = ps_finish_seconds([j.remaining for j in jobs], self.rate.cost_per_s)
        for job, end in zip(jobs, ends):
            finish = now + start + end
            delay = self.rate.seconds(min(job.remaining, cost))
            if finish <= job.deadline < finish + delay:
                raise DeadlineUnreachableError(
                    "overloaded: this request would push queued requests past their deadlines",
                    retry_after=finish - now,
                )

    # -- queueing ----------------------------------------------------------------------

    def add(self, works: Sequence[Work], job: Job) -> None:
        """Queue one admitted job's texts, tagged after the virtual time."""
        tag = self._vtime
        for work in works:
            tag += work.cost
            work.tag = tag
            work.job = job
            job.remaining += work.cost
        job.pending += len(works)
        self._jobs.add(job)
        self.in_flight += len(works)
        self.pending_cost += job.remaining
        if len(works) <= 8:
            for work in works:
                bisect.insort_right(self._pending, work, key=_tag)
        else:
            self._pending = list(heapq.merge(self._pending, works, key=_tag))

    def _left(self, work: Work) -> None:
        """``work`` left the pending list (batched, expired or dropped)."""
        self.pending_cost -= work.cost
        job = work.job
        if job is not None:
            job.remaining -= work.cost
            job.pending -= 1
            if job.pending <= 0:
                self._jobs.discard(job)

    def answered(self, count: int) -> None:
        """``count`` texts left the engine (resolved, failed or dropped)."""
        self.in_flight -= count

    def discard_unwanted(self) -> list[Work]:
        """Remove pending texts nobody waits for; returns them."""
        gone = [w for w in self._pending if not w.wanted]
        if gone:
            self._pending = [w for w in self._pending if w.wanted]
            for work in gone:
                self._left(work)
        return gone

    # -- batch formation ---------------------------------------------------------------

    def take(self, now: float) -> Taken:
        """The next batch (the one holding the smallest tag), plus what must not run."""
        taken = self._purge(now)
        if not self._pending:
            return taken
        window = self._window()
        lengths = [w.tokens for w in window]
        batches = cut_batches(lengths, self.max_batch_tokens, self.max_batch_size)
        chosen = next(b for b in batches if 0 in b)
        picked = {id(window[i]) for i in chosen}
        self._pending[: len(window)] = [w for w in window if id(w) not in picked]
        batch = [window[i] for i in chosen]
        for work in batch:
            self._left(work)
        self._vtime = max(self._vtime, window[0].tag)
        ends = now + self.rate.seconds(sum(w.cost for w in batch))
        taken.batch = [w for w in batch if w.deadline > ends]
        taken.expired.extend(w for w in batch if w.deadline <= ends)
        return taken

    def _purge(self, now: float) -> Taken:
        taken = Taken()
        keep: list[Work] = []
        for work in self._pending:
            if not work.wanted:
                taken.dropped.append(work)
            elif work.deadline <= now:
                taken.expired.append(work)
            else:
                keep.append(work)
        if len(keep) != len(self._pending):
            self._pending = keep
            for work in _chain(taken.dropped, taken.expired):
                self._left(work)
        return taken

    def _window(self) -> list[Work]:
        limit_cost = WINDOW_BATCHES * self.max_batch_tokens
        limit_count = WINDOW_BATCHES * self.max_batch_size
        cost = 0.0
        end = 0
        for end, work in enumerate(self._pending, start=1):  # noqa: B007 - end is used below
            cost += work.cost
            if cost >= limit_cost or end >= limit_count:
                break
        return self._pending[:end]


def _chain(*parts: Iterable[Work]) -> Iterable[Work]:
    for part in parts:
        yield from part
