"""Which texts run next, and which requests are taken at all. No threads: ``Batcher`` locks it.

**Order: smaller size classes first.** Each submission (one request's new texts) is a
job, costed by its token counts plus a per-text overhead. Jobs of one batch or less fall
in size classes (a quarter, a half, a whole token budget, by their cost when they came)
and run smallest class first, in arrival order within a class; larger jobs run after
them, shortest remaining first. So a 1-item request runs before queued 8-item ones and a
500-item one, while requests of similar size run first come, first served, each
finishing as early as it can.

**Padding.** A batch is not just the head job's next texts: a window of the next few
batches' worth of texts (in job order) is sorted by token length and cut by the token
budget, and the batch holding the head job's next text runs. The texts of a batch have
similar lengths. While larger jobs wait, a smaller head job's batch is cut from its own
size class and smaller ones only (small jobs share batches), with a little of the larger
jobs' work as filler.

**Admission by place in the order.** The drain rate (cost per second of batch time, an
EWMA over batches) turns costs into seconds. A new job's wait counts only the work the
scheduler runs before it: the batch in flight, one batch of granularity, the queued jobs
of smaller classes and the older ones of its own class (for a large job, the large jobs
whose turn comes first), at what the recent stream of smaller classes' jobs (which will
overtake it) leaves of the rate. A job of the smallest class may use all its time; the
others ``ADMIT_SHARE`` of it (slack for estimate errors); a large job must also not push
a queued larger one that would make its deadline past it. A refusal says, in
``retry_after``, the seconds until the job would fit. On an idle engine every job that can
finish alone is tried; one that cannot even alone is too large (413). Estimates are
corrected by how far off recent ones of the same size class were (``planned``): admission
learns from its own errors.

**Expiry.** Texts whose deadline has passed, or would pass before their batch ends, are
never run; texts nobody waits for any more are dropped.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from r3_service.engine.errors import (
    DeadlineUnreachableError,
    QueueFullError,
    RequestTooLargeError,
)

logger = logging.getLogger(__name__)

#: Fixed cost of one text beyond its tokens (padding, per-row work), in tokens.
TEXT_OVERHEAD = 8
#: Texts considered for one batch: this many batches' worth from the head of the queue.
WINDOW_BATCHES = 16
#: A new job must be estimated to finish within this share of its time to deadline; the
#: rest is slack for small jobs that arrive later and run before its tail.
ADMIT_SHARE = 0.8
#: Size classes, as shares of the token budget: a job whose remaining cost fits in
#: ``SIZE_CLASSES[i]`` of the budget (and not in the class before) is in class i; one
#: larger than a batch is in class ``LARGE``. Smaller classes run first; within a class,
#: arrival order (large jobs: shortest remaining first, see ``_large_key``).
SIZE_CLASSES = (0.25, 0.5, 1.0)
LARGE = len(SIZE_CLASSES)
#: Time constant (seconds) of the arrival rate of each size class, which the larger
#: classes plan around (those jobs will run before them).
SMALL_WINDOW_S = 10.0
#: A job is planned at least this share of the drain rate, whatever smaller jobs take.
MIN_LARGE_SHARE = 0.25
#: Share of its time kept by a queued job when later ones would delay it.
PROTECT_SHARE = 0.1
#: A job whose own cost takes longer than this many request timeouts can never finish (413).
TOO_LARGE_TIMEOUTS = 2.0
#: While larger requests wait, a batch whose head request is smaller than them takes the
#: queued texts of its size class or smaller (up to the full budget), and the larger ones'
#: texts fill it only up to this share of the token budget: it ends sooner, and so do the
#: small requests queued behind it. bench/bench_overload.py at 2x: 1-item p99 1.2 to
#: 1.3 s at 0.25, 1.6 to 1.9 s at 0.5, at the same goodput.
SMALL_BATCH_SHARE = 0.25
#: What a batch costs beyond its padded tokens, as a share of the token budget, where
#: ``cut_batches`` weighs padding against more batches. The model alone costs about 5 ms a
#: batch on 2 CPU cores, 1/18 to 1/32 of the budget (python bench/bench_cut.py), but in the
#: server under load more: at 1/32, bench/bench_overload.py --case
#: small-first ran batches of about 200 tokens at 3,100 to 3,200 tokens per batch second; at
#: 1/10, about 300 tokens at 3,500 to 4,200, and 23% more capacity than greedy cuts.
BATCH_OVERHEAD_SHARE = 1 / 10
#: Sizes a batch may take that ``cut_batches`` weighs (it cuts every max_batch_size //
#: CUT_CHOICES texts): its work is about texts x CUT_CHOICES steps.
CUT_CHOICES = 32
#: Weight of a batch in the drain rate relative to the next one.
RATE_DECAY = 0.9
#: Admission learns from its own errors: for the last ``CALIBRATION_WINDOW`` admitted
#: requests of each size class it keeps how many seconds longer they took than its model of
#: the worker had estimated (before ``planned``), and adds a high quantile of that excess
#: to its estimates once ``CALIBRATION_MIN`` are in (planning between ``CALIBRATION_FLOOR``
#: and ``CALIBRATION_CEILING`` times the model's estimate). What the model does not see
#: (mixed batches, the event loop, tokenising, the classifier) then shows up in the
#: estimates. bench/bench_overload.py --case small-first on 2 quiet cores: without it, 15%
#: of admitted requests ended in 504 at 2x. Per class, because errors differ by class:
#: 1-item requests run early in short batches, 8-item ones wait behind them, and with both
#: in one window (ten 1-item requests to two 8-item ones) the high quantile was the 8-item
#: requests' median. In seconds, not as a ratio: see ``Scheduler.planned``.
CALIBRATION_WINDOW = 64
CALIBRATION_MIN = 8
CALIBRATION_QUANTILE = 0.98
CALIBRATION_FLOOR = 0.5
CALIBRATION_CEILING = 4.0
#: Full batches whose rates admission looks at, and the quantile it takes (slow side).
RATE_WINDOW = 64
CAUTIOUS_QUANTILE = 0.2


@dataclass(eq=False)
class Job:
    """One submission: its deadline, its texts not yet in a batch and their cost."""

    deadline: float
    #: Slack kept against estimate errors when later jobs would delay this one.
    margin: float = 0.0
    remaining: float = 0.0
    seq: int = 0
    admitted: float = 0.0
    works: list[Work] = field(default_factory=list)
    #: Its cost when its texts were queued (``remaining`` is what is left of it).
    cost: float = 0.0
    #: A placeholder for a request admitted on an estimate, whose texts are not queued yet
    #: (they are being typed by the classifier or tokenised): later admissions count it.
    reserved: bool = False
    #: Seconds from admission to its end, as the model of the worker estimated when it was
    #: admitted, before ``planned`` (0: none), and the size class it was estimated in.
    estimate: float = 0.0
    estimate_class: int = 0


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


class DrainRate:
    """Cost units and texts processed per second of batch time.

    The ratio of exponentially decayed sums (each batch weighs ``decay`` times the one
    after it): the throughput of the recent batches, where a tiny batch counts for its
    short time and a full one for its long time. Admission uses ``cautious_seconds``: at
    the rate of a slow recent full batch (``CAUTIOUS_QUANTILE``), so that on a machine whose
    speed swings (shared cores) the work taken in still finishes in time.
    """

    def __init__(self, decay: float = RATE_DECAY, window: int = RATE_WINDOW) -> None:
        self.decay = decay
        self._cost = self._texts = self._seconds = 0.0
        self._full: deque[float] = deque(maxlen=window)

    @property
    def known(self) -> bool:
        return self._seconds > 0

    @property
    def cost_per_s(self) -> float:
        return self._cost / self._seconds if self._seconds > 0 else 0.0

    @property
    def texts_per_s(self) -> float:
        return self._texts / self._seconds if self._seconds > 0 else 0.0

    def observe(self, cost: float, texts: int, seconds: float, full: bool = False) -> None:
        """One batch: its cost, texts and seconds; ``full``: it used most of the budget."""
        if seconds <= 0 or cost <= 0:
            return
        if full:
            self._full.append(cost / seconds)
        d = self.decay
        self._cost = d * self._cost + cost
        self._texts = d * self._texts + texts
        self._seconds = d * self._seconds + seconds

    def seconds(self, cost: float) -> float:
        """Estimated batch seconds for ``cost`` (0 while nothing is measured)."""
        return cost / self.cost_per_s if self.known else 0.0

    @property
    def cautious_cost_per_s(self) -> float:
        """The rate of a slow recent full batch, or the average when lower or unmeasured."""
        if len(self._full) < 8:
            return self.cost_per_s
        slow = sorted(self._full)[int(CAUTIOUS_QUANTILE * (len(self._full) - 1))]
        return min(self.cost_per_s, slow)

    def cautious_seconds(self, cost: float) -> float:
        rate = self.cautious_cost_per_s
        return cost / rate if rate > 0 else 0.0

    def seconds_for_texts(self, texts: int) -> float:
        return texts / self.texts_per_s if self.texts_per_s > 0 else 1.0


def cut_batches(
    lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int, batch_overhead: float
) -> list[list[int]]:
    """Indices of ``lengths`` in length-sorted batches within the token budget, cut where
    the batches cost least: each batch costs ``batch_overhead`` plus its padded tokens (its
    rows times its longest text), and the cuts minimise the sum (dynamic programming over
    the sorted lengths; a batch is a run of them; of equal costs, the front batches full).

    Each batch satisfies ``len(batch) * max(length) <= max_batch_tokens`` and
    ``len(batch) <= max_batch_size``, except a single text longer than the budget,
    which forms a batch of its own. Filling each batch in turn instead put a request's
    short queries and long responses in one batch: 24% of the tokens run at capacity and
    36 to 39% at 2x and 4x overload were padding (bench/bench_overload.py --case small-first).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    width = [lengths[i] for i in order]
    # Cut points every ``step`` texts, so that a batch has at most CUT_CHOICES sizes to
    # weigh (a GPU's 128-row batches: every 4th text; a CPU's 32 rows: every one).
    most_rows = min(max_batch_size, max_batch_tokens // max(width[0], 1)) if n else 1
    step = max(1, most_rows // CUT_CHOICES)
    if n and step * width[-1] > max_batch_tokens:
        step = 1  # texts so long that a few of them fill the budget
    cuts = [*range(0, n, step), n]
    best = [0.0] * len(cuts)  # best[i]: least cost of the sorted texts from cuts[i] on
    stop = list(range(1, len(cuts) + 1))  # where the first batch of that least cost ends
    for i in range(len(cuts) - 2, -1, -1):
        least = math.inf
        for j in range(i + 1, len(cuts)):
            rows = cuts[j] - cuts[i]
            padded = rows * width[cuts[j] - 1]  # ascending: a run's last text is its widest
            if j > i + 1 and (rows > max_batch_size or padded > max_batch_tokens):
                break  # and so are all longer runs
            cost = best[j] + padded
            if cost <= least:  # ties: the larger batch, so that the front batches are full
                least, stop[i] = cost, j
        best[i] = least + batch_overhead
    batches: list[list[int]] = []
    i = 0
    while i < len(cuts) - 1:
        batches.append(order[cuts[i] : cuts[stop[i]]])
        i = stop[i]
    return batches


def batch_with(
    lengths: Sequence[int],
    index: int,
    max_batch_tokens: int,
    max_batch_size: int,
    batch_overhead: float,
) -> list[int]:
    """The batch of ``cut_batches`` that holds ``index``, cut among the texts nearest it in
    length only (a batch's worth either side, where any batch holding it lies), so that a
    window of thousands of texts costs what a few batches do."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    at = order.index(index)
    reach = max_batch_size
    near = order[max(0, at - reach) : at + reach + 1]
    batches = cut_batches(
        [lengths[i] for i in near], max_batch_tokens, max_batch_size, batch_overhead
    )
    local = near.index(index)
    return [near[i] for i in next(b for b in batches if local in b)]


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


class Scheduler:
    """Pending jobs, shortest remaining first; admission by deadline; batches by length."""

    def __init__(self, max_batch_tokens: int, max_batch_size: int, max_queue_texts: int) -> None:
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_queue_texts = max_queue_texts
        self.rate = DrainRate()
        #: Texts accepted and not yet answered (pending or in a running batch).
        self.in_flight = 0
        self.pending_cost = 0.0
        self.pending_count = 0
        #: Jobs with texts still pending, shortest remaining first (ties: arrival).
        self._jobs: list[Job] = []
        self._seq = 0
        #: Decayed sums of the cost admitted in each size class (see ``stream_cost_per_s``).
        self._stream = [0.0] * (LARGE + 1)
        self._stream_at = 0.0
        self._stream_first: float | None = None
        #: No pending text's deadline is earlier (a lower bound: deadlines only grow).
        self._earliest = math.inf
        #: Seconds by which recently finished admitted jobs took longer than the model's
        #: estimate (before ``planned``), by the size class they were estimated in.
        self._excess = [deque[float](maxlen=CALIBRATION_WINDOW) for _ in range(LARGE + 1)]

    @property
    def jobs(self) -> tuple[Job, ...]:
        """Jobs queued or reserved, in the order they are kept (shortest remaining first)."""
        return tuple(self._jobs)

    def calibration_count(self, cost: float) -> int:
        """How many finished jobs of the size class of ``cost`` admission's ``planned``
        currently learns from."""
        return len(self._excess[self.size_class(cost)])

    @property
    def pending(self) -> list[Work]:
        """Pending texts in the order they would run (without the padding window)."""
        return [work for job in self._jobs for work in job.works]

    @property
    def pending_tokens(self) -> int:
        return sum(work.tokens for job in self._jobs for work in job.works)

    def oldest_enqueued(self) -> float:
        return min(work.enqueued for job in self._jobs for work in job.works)

    # -- admission -------------------------------------------------------------------

    def admit(
        self,
        works: Sequence[Work],
        deadline: float,
        timeout: float,
        now: float,
        busy_s: float,
        reserved: bool = False,
    ) -> None:
        """Raise if ``works`` (one job) cannot be taken now.

        ``busy_s``: estimated seconds left of the batch that is running.
        """
        cost = sum(w.cost for w in works)
        self.admit_cost(len(works), cost, deadline, timeout, now, busy_s, reserved=reserved)

    def admit_cost(
        self,
        count: int,
        cost: float,
        deadline: float,
        timeout: float,
        now: float,
        busy_s: float,
        estimate: bool = False,
        reserved: bool = False,
        lead_s: float = 0.0,
        least_cost: float | None = None,
    ) -> float:
        """``admit`` for a job of ``count`` texts and ``cost``; ``estimate``: the cost is a
        guess from characters (a precheck before tokenising), ``least_cost`` the least it
        can be (what a 413 is decided on); ``reserved``: the job was admitted on its
        estimate already (``reserve``), only its size and the queue's are checked;
        ``lead_s``: seconds of work (tokenising) before its texts can be queued at all.
        Returns the model's estimate of the seconds it takes, before ``planned`` (0 when
        nothing is measured yet); the deadline was checked against the corrected one."""
        sure = cost if least_cost is None else min(cost, least_cost)
        self._check_size(count, sure, timeout, lead_s, estimate)
        if self.in_flight + count > self.max_queue_texts:
            excess = self.in_flight + count - self.max_queue_texts
            raise QueueFullError(
                f"queue full ({self.in_flight} texts queued, this request needs {count}, "
                f"limit {self.max_queue_texts})",
                retry_after=self.rate.seconds_for_texts(excess),
            )
        if reserved or not self.rate.known:
            return 0.0
        if not self._jobs and busy_s <= 0:
            # idle: always try (what can never fit is 413)
            return lead_s + self.finish_in(cost, 0.0, now, 0.0)
        ahead, behind = self._place(cost, now)
        finish = lead_s + self.finish_in(cost, ahead, now, busy_s)
        planned, allowed = self.planned(cost, finish), self._allowed(cost, deadline - now)
        if planned > allowed:
            ahead_s = self._seconds(cost, ahead, now)
            raise DeadlineUnreachableError(
                f"overloaded: the queued work ahead means this request would take about "
                f"{planned:.1f} s, past its deadline in {deadline - now:.1f} s ({ahead_s:.1f} s "
                f"of queued work runs before it, {busy_s:.1f} s is left of the batch in flight, "
                f"{planned - finish:+.1f} s is the recent error for requests of its size)",
                retry_after=planned - allowed,
            )
        if cost > self.max_batch_tokens:  # small jobs were planned for (small_cost_per_s)
            self._check_queued_deadlines(cost, behind, ahead, now, busy_s)
        return finish

    def planned(self, cost: float, seconds: float) -> float:
        """The seconds admission plans a job of ``cost`` at, from the model's ``seconds``: plus
        a high quantile of its size class's recent excess over their estimates, between
        ``CALIBRATION_FLOOR`` and ``CALIBRATION_CEILING`` times ``seconds``.

        An excess in seconds, not a ratio: the error is latency (the event loop, the batch
        in flight, the classifier, tokenising) that does not grow with the estimate, while
        the model already counts the queue at a cautious rate. A ratio learnt on short
        estimates and applied to a long one refused what would have made it: the smallest
        class's ratio, learnt on 0.15 s estimates, sat at its bound of 4, so a 1-item request
        behind 1.1 s of work was planned at 4.4 s and refused with a 5 s deadline when such
        requests took at most 0.7 s (bench/bench_overload.py --case small-first at 4x); and
        with 16 closed-loop clients sending untyped 8-item requests (bench/bench_reward.py),
        estimates of 0.5 to 1.8 s took up to 4 times as long (correlation 0.1 between the
        two), and a 12.3 s estimate was planned at 49.2 s and refused with 60 s to go.

        The ceiling: a request that runs into its deadline ends there, so under overload the
        excess of one estimated at 0.3 s that waited until its 5 s deadline (4.7 s) would
        refuse every request of its class for a while. Without it, at 4x overload goodput
        fell from 100 to 107 items/s to 80 to 89, and 25 to 30 of about 420 admitted
        requests still ended in 504 (bench/bench_overload.py --case small-first)."""
        high = _calibration_quantile(self._excess[self.size_class(cost)])
        if high is None:
            return seconds
        return min(max(CALIBRATION_FLOOR * seconds, seconds + high), CALIBRATION_CEILING * seconds)

    def finished(self, job: Job, now: float) -> None:
        """An admitted job ended at ``now`` (answered, or past its deadline): learn how far
        off the model's estimate was, to the estimate before ``planned`` (to the planned one,
        a steady error would be learnt only in part)."""
        if job.estimate > 0:
            took = now - job.admitted
            logger.debug(
                "admitted job of class %d (cost %.0f) took %.3f s, estimated %.3f s",
                job.estimate_class,
                job.cost,
                took,
                job.estimate,
            )
            self._excess[job.estimate_class].append(took - job.estimate)

    def _place(self, cost: float, now: float) -> tuple[float, list[Job]]:
        """Where a new job of ``cost`` would go in the serving order (``_serving_order``): the
        queued cost that runs before it, and the queued jobs it would run before (in order)."""
        own = self.size_class(cost)
        ahead, behind = 0.0, []
        for job in self._serving_order(now):
            size = self.job_class(job)
            if (
                size < own
                or (size == own and (own < LARGE or self._large_key(job, now) <= cost))
                or self._urgent(job, now)
            ):
                ahead += job.remaining
            else:
                behind.append(job)
        return ahead, behind

    def finish_in(self, cost: float, ahead: float, now: float, busy_s: float) -> float:
        """Seconds until a new job of ``cost`` with ``ahead`` queued before it would be done:
        the batch in flight, the batch granularity (the first batch that holds its texts
        may carry other requests' texts as well: a short batch for a job of the smallest
        class, a full one for the others), then the work ahead and its own at the cautious
        rate."""
        smallest = self.size_class(cost) == 0
        filler = (SMALL_BATCH_SHARE if smallest else 1.0) * self.max_batch_tokens
        return busy_s + self.rate.cautious_seconds(filler) + self._seconds(cost, ahead + cost, now)

    def reserve(
        self,
        count: int,
        cost: float,
        deadline: float,
        timeout: float,
        now: float,
        busy_s: float,
        lead_s: float = 0.0,
        least_cost: float | None = None,
    ) -> Job:
        """Admit a job on an estimate of its cost and hold its place until its texts come.

        Admission happens once per request: the work done before its texts are queued
        (classifying its queries, tokenising) is never spent on a request refused later,
        and requests admitted meanwhile see the work it will bring.
        """
        seconds = self.admit_cost(
            count,
            cost,
            deadline,
            timeout,
            now,
            busy_s,
            estimate=True,
            lead_s=lead_s,
            least_cost=least_cost,
        )
        job = Job(deadline=deadline, margin=PROTECT_SHARE * (deadline - now), reserved=True)
        job.estimate = seconds
        job.estimate_class = self.size_class(cost)
        job.remaining = job.cost = cost
        self._seq += 1
        job.seq = self._seq
        job.admitted = now
        bisect.insort_right(self._jobs, job, key=_job_order)
        return job

    def cancel(self, job: Job) -> None:
        """Give a reserved place up (the request's texts will not come); idempotent."""
        if job.reserved:
            job.reserved = False
            self._jobs = [j for j in self._jobs if j is not job]

    def _check_size(
        self, count: int, cost: float, timeout: float, lead_s: float, estimate: bool
    ) -> None:
        """413 for a job that can never be served: more texts than the queue holds, or more
        than a batch of work needing more model time (at the measured average rate, on an
        idle worker) than its timeout allows.
        On exact token counts a job is tried up to ``TOO_LARGE_TIMEOUTS`` timeouts (the rate
        may be pessimistic); on an estimate from characters (``estimate``), refused before
        any work, it must fit within one timeout, ``lead_s`` (tokenising) included."""
        if count > self.max_queue_texts:
            raise RequestTooLargeError(
                f"request needs {count} texts at once; the queue holds at most "
                f"{self.max_queue_texts} (R3_MAX_QUEUE_TEXTS): send fewer items per request",
                limit="R3_MAX_QUEUE_TEXTS",
            )
        if cost <= self.max_batch_tokens:
            # One batch is the least the worker runs: if it cannot finish in time, the
            # machine is slow now (a measured rate, which load lowers), and that passes: the
            # deadline checks refuse it with 503 and Retry-After, never a final 413.
            return
        seconds = self.rate.seconds(cost) + lead_s
        if seconds > (1.0 if estimate else TOO_LARGE_TIMEOUTS) * timeout:
            raise RequestTooLargeError(
                f"request needs about {seconds:.0f} s of model time at the measured rate "
                f"({cost:.0f} tokens), more than the request timeout of {timeout:g} s "
                "(R3_REQUEST_TIMEOUT_S) allows: send fewer or shorter items per request",
                limit="R3_REQUEST_TIMEOUT_S",
            )

    def size_class(self, cost: float) -> int:
        """The size class of a job of ``cost`` (0: the smallest; ``LARGE``: over a batch)."""
        budget = self.max_batch_tokens
        return next((i for i, share in enumerate(SIZE_CLASSES) if cost <= share * budget), LARGE)

    def job_class(self, job: Job) -> int:
        """A queued job's size class: that of its cost when it came (texts of it that ride
        along in other batches do not move it up), except that a large job whose remaining
        work fits in a batch joins the largest class of one batch (being old, it goes first)."""
        size = self.size_class(job.cost)
        if size == LARGE and job.remaining <= self.max_batch_tokens:
            return LARGE - 1
        return size

    def stream_cost_per_s(self, now: float, below: int = LARGE) -> float:
        """Cost per second admitted lately in the size classes under ``below``: a decayed
        sum over the time it covers (so the first seconds of a stream count in full)."""
        if self._stream_first is None:
            return 0.0
        decay = math.exp(-max(0.0, now - self._stream_at) / SMALL_WINDOW_S)
        covered = max(1.0, now - self._stream_first)
        span = SMALL_WINDOW_S * (1.0 - math.exp(-covered / SMALL_WINDOW_S))
        return sum(self._stream[:below]) * decay / max(span, 1.0)

    def small_cost_per_s(self, now: float) -> float:
        """Cost per second of the jobs of one batch or less admitted lately."""
        return self.stream_cost_per_s(now, LARGE)

    def _count_stream(self, cost: float, now: float) -> None:
        decay = math.exp(-max(0.0, now - self._stream_at) / SMALL_WINDOW_S)
        self._stream = [c * decay for c in self._stream]
        self._stream[self.size_class(cost)] += cost
        self._stream_at = now
        if self._stream_first is None:
            self._stream_first = now

    def _seconds(self, cost: float, amount: float, now: float) -> float:
        """Seconds to drain ``amount`` of work ahead of, and including, a job of ``cost``.

        A job gets what the stream of smaller classes' jobs (which will run before it)
        leaves of the cautious rate, at least ``MIN_LARGE_SHARE`` of it.
        """
        rate = self.rate.cautious_cost_per_s
        if rate <= 0:
            return 0.0
        smaller = self.stream_cost_per_s(now, self.size_class(cost))
        return amount / max(rate - smaller, MIN_LARGE_SHARE * rate)

    def _allowed(self, cost: float, time_left: float) -> float:
        """The seconds a job of ``cost`` may be planned at: a job of the smallest class all
        its time (no later job runs before it); the others ``ADMIT_SHARE`` of it, the rest
        being slack for what their estimate cannot see (more small jobs than planned, a
        slower machine)."""
        return (1.0 if self.size_class(cost) == 0 else ADMIT_SHARE) * time_left

    def _check_queued_deadlines(
        self, cost: float, behind: Sequence[Job], ahead: float, now: float, busy_s: float
    ) -> None:
        """Refuse a large job that would push a queued one it overtakes, which would finish
        before its deadline, past that deadline less its margin."""
        delay = self.rate.cautious_seconds(cost)
        done = ahead
        for job in behind:
            done += job.remaining
            finish = now + self.finish_in(job.remaining, done - job.remaining, now, busy_s)
            if finish <= job.deadline and finish + delay > job.deadline - job.margin:
                raise DeadlineUnreachableError(
                    "overloaded: this request would push queued requests past their deadlines",
                    retry_after=finish - now,
                )

    # -- queueing ----------------------------------------------------------------------

    def add(self, works: Sequence[Work], job: Job, now: float | None = None) -> None:
        """Queue one admitted job's texts (``now``: when it was admitted). A reserved job
        (``reserve``) takes its texts in place of the estimate."""
        reserved = job.reserved
        if reserved:
            self.cancel(job)
            job.remaining = 0.0
        cost = sum(w.cost for w in works)
        self._count_stream(cost, time.monotonic() if now is None else now)
        if not reserved:  # a reserved job keeps its place in arrival order and its age
            self._seq += 1
            job.seq = self._seq
            job.admitted = time.monotonic() if now is None else now
        job.works = list(works)
        for work in works:
            work.job = job
            job.remaining += work.cost
        job.cost = job.remaining
        self.in_flight += len(works)
        self.pending_count += len(works)
        self.pending_cost += job.remaining
        self._earliest = min(self._earliest, job.deadline, *(w.deadline for w in works))
        bisect.insort_right(self._jobs, job, key=_job_order)

    def answered(self, count: int) -> None:
        """``count`` texts left the engine (resolved, failed or dropped)."""
        self.in_flight -= count

    def discard_unwanted(self) -> list[Work]:
        """Remove pending texts nobody waits for; returns them."""
        return self._remove(lambda w: not w.wanted)

    def _remove(
        self, drop: Callable[[Work], bool], jobs: Sequence[Job] | None = None
    ) -> list[Work]:
        """Take the pending texts ``drop`` picks out of their jobs (of ``jobs`` only, if given)."""
        gone: list[Work] = []
        for job in self._jobs if jobs is None else jobs:
            leaving = [w for w in job.works if drop(w)]
            if leaving:
                job.works = [w for w in job.works if not drop(w)]
                gone.extend(leaving)
                for work in leaving:
                    self._left(work)
        if gone:
            self._jobs = sorted((j for j in self._jobs if j.works or j.reserved), key=_job_order)
        return gone

    def _left(self, work: Work) -> None:
        self.pending_cost -= work.cost
        self.pending_count -= 1
        if work.job is not None:
            work.job.remaining -= work.cost

    # -- batch formation ---------------------------------------------------------------

    def take(self, now: float) -> Taken:
        """The next batch (it holds the head job's next texts), plus what must not run.

        Texts whose deadline has passed, or will before the head job can finish, expire.
        """
        taken = Taken()
        if now >= self._earliest:  # some deadline may have passed: scan everything once
            taken.expired = self._remove(lambda w: w.deadline <= now)
            deadlines = (w.deadline for job in self._jobs for w in job.works)
            self._earliest = min(deadlines, default=math.inf)
        order = [job for job in self._serving_order(now) if job.works]
        if order:  # the head job runs now: its texts that cannot make it never run
            head = order[0]
            done = now + self.rate.seconds(head.remaining)
            taken.expired += self._remove(lambda w: w.deadline < done, [head])
            order = [job for job in order if job.works]
        if not order:
            return taken
        chosen = self._next_batch(order)
        owners = list({id(w.job): w.job for w in chosen if w.job is not None}.values())
        batch = self._remove(_members(chosen), owners)
        taken.dropped = [w for w in batch if not w.wanted]  # gave up since the last release
        ends = now + self.rate.seconds(sum(w.cost for w in batch))
        taken.batch = [w for w in batch if w.wanted and w.deadline > ends]
        taken.expired.extend(w for w in batch if w.wanted and w.deadline <= ends)
        return taken

    def _next_batch(self, order: Sequence[Job]) -> list[Work]:
        """The window's texts cut into length-sorted batches within the budget; the batch
        holding the head job's next text runs. A small job's short and long texts may go
        in two batches (run one after the other: the job stays at the head)."""
        window = self._window(order)
        classes = {id(job): self.job_class(job) for job in order}
        head = classes[id(order[0])]
        if head < max(classes.values()):
            front = {key for key, size in classes.items() if size <= head}
            return self._front_batch(window, front)
        return [window[i] for i in self._batch_with([w.tokens for w in window], 0)]

    def _batch_with(self, lengths: Sequence[int], index: int) -> list[int]:
        overhead = BATCH_OVERHEAD_SHARE * self.max_batch_tokens
        return batch_with(lengths, index, self.max_batch_tokens, self.max_batch_size, overhead)

    def _front_batch(self, window: list[Work], front_jobs: set[int]) -> list[Work]:
        """The batch of a request ahead of larger ones: its texts and those of the other
        queued requests of its class or smaller, cut by length within the full budget, so
        that small requests share batches (at 10 one-item requests a second, a batch of a
        quarter budget held one response each, and their own load outgrew the worker);
        the larger requests' texts fill it only up to ``SMALL_BATCH_SHARE`` of the budget,
        with texts no longer than its longest, so that it ends soon. ``front_jobs``: the ids of
        the jobs of the head's size class or smaller."""
        front = [w for w in window if id(w.job) in front_jobs]  # window[0] is the head's
        chosen = [front[i] for i in self._batch_with([w.tokens for w in front], 0)]
        width = max(w.tokens for w in chosen)
        room = max(len(chosen), int(SMALL_BATCH_SHARE * self.max_batch_tokens) // max(width, 1))
        room = min(room, self.max_batch_size)
        fillers = sorted(
            (w for w in window if id(w.job) not in front_jobs and w.tokens <= width),
            key=lambda w: -w.tokens,
        )
        return chosen + fillers[: room - len(chosen)]

    def _serving_order(self, now: float) -> list[Job]:
        """Jobs by size class of their remaining work (``SIZE_CLASSES``), smallest first;
        within a class of one batch or less, oldest first; the large ones by remaining
        cost less what the worker could have done while they waited (at most one batch),
        so that none overtakes a job more than a batch larger than itself.

        Classes rather than sizes: ranking every small job by size let a steady stream of
        short ones starve a job whose one long text was left (measured at 2x overload: such
        1-item requests queued 4 to 6 s while newer ones ran at once); arrival order among
        all jobs of a batch or less queued 1-item requests behind 8-item ones (1-item p50
        1.6 s at 2x overload with a 5 s deadline). A large job only moves to a smaller class as
        it is served (``job_class``), and, being old, goes first there.

        Before all of them, earliest deadline first: admitted jobs with a batch or less left
        whose slack (the time to their deadline less that work at the drain rate) has shrunk
        below their margin and one full batch, as when the machine slowed after admission
        or more small jobs came than planned; what can no longer make it is expired by
        ``take``, not run."""

        def key(job: Job) -> tuple[int, float, int]:
            if self._urgent(job, now):
                return -1, job.deadline, job.seq
            size = self.job_class(job)
            if size < LARGE:
                return size, job.admitted, job.seq
            return LARGE, self._large_key(job, now), job.seq

        return sorted(self._jobs, key=key)

    def _urgent(self, job: Job, now: float) -> bool:
        """An admitted job with a batch or less left whose slack is less than its margin
        and than one full batch: waiting one more batch would make it late (see
        ``_serving_order``). Larger ones are never promoted, so a small job waits behind
        at most a batch of each, and only at that last moment."""
        if job.margin <= 0 or job.remaining > self.max_batch_tokens:
            return False
        slack = job.deadline - now - self.rate.seconds(job.remaining)
        return slack < min(job.margin, self.rate.seconds(self.max_batch_tokens))

    def _large_key(self, job: Job, now: float) -> float:
        """A large job's rank: its remaining cost less what the worker could have done while
        it waited (at most one batch)."""
        credit = self.rate.cost_per_s * max(0.0, now - job.admitted)
        return job.remaining - min(credit, self.max_batch_tokens)

    def _window(self, jobs: Sequence[Job]) -> list[Work]:
        """The texts the next batch is cut from: jobs in serving order, up to and including
        the first one larger than a batch. Large jobs never share batches, so they run one
        after the other and each finishes as early as it can."""
        limit_cost = WINDOW_BATCHES * self.max_batch_tokens
        limit_count = WINDOW_BATCHES * self.max_batch_size
        window: list[Work] = []
        cost = 0.0
        for job in jobs:
            for work in job.works:
                window.append(work)
                cost += work.cost
                if cost >= limit_cost or len(window) >= limit_count:
                    return window
            if job.remaining > self.max_batch_tokens:
                return window
        return window


def _calibration_quantile(window: Sequence[float]) -> float | None:
    """``CALIBRATION_QUANTILE`` of ``window``; None until it holds ``CALIBRATION_MIN``."""
    if len(window) < CALIBRATION_MIN:
        return None
    return sorted(window)[int(CALIBRATION_QUANTILE * (len(window) - 1))]


def _members(batch: list[Work]) -> Callable[[Work], bool]:
    ids = {id(w) for w in batch}
    return lambda w: id(w) in ids


def _job_order(job: Job) -> tuple[float, int]:
    return job.remaining, job.seq
