"""Dynamic batching: one inference worker thread over the deadline-aware scheduler.

Requests submit tokenised texts with a deadline (``Batcher.submit``); which requests are
taken and which texts form the next batch is the scheduler's business (``scheduler.py``).
The worker waits up to ``max_wait_ms`` for a batch to fill, takes the next batch, runs
it, and resolves each text's future on its own event loop. Texts past their deadline are
answered with a timeout and never run; a failing batch fails only its own futures. A
watchdog thread counts batches that run past the hung-batch limit; ``hung`` is what
/readyz reports.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from r3_service.engine.config import EngineConfig
from r3_service.engine.errors import RequestTimeoutError, WorkerDeadError, WorkerStalledError
from r3_service.engine.scheduler import (
    PROTECT_SHARE,
    TEXT_OVERHEAD,
    Job,
    Scheduler,
    Taken,
    Work,
)

logger = logging.getLogger(__name__)

#: The drain rate is seeded at this share of the speed measured on the idle model.
CALIBRATION_SHARE = 0.5
#: A batch taken within this many seconds of the previous one's end followed it directly.
BATCH_GAP_S = 0.05

#: Token ids of each text in, mean-pooled embeddings (len(batch), dim) out.
EmbedTokensFn = Callable[[Sequence[np.ndarray]], np.ndarray]

__all__ = ["BatchStats", "Batcher", "EmbedTokensFn", "Work"]


@dataclass(frozen=True)
class BatchStats:
    """What one inference batch did (for metrics)."""

    size: int
    tokens: int
    padded_tokens: int
    seconds: float
    queue_seconds: float


@dataclass(frozen=True)
class _Running:
    seq: int
    started: float
    cost: float


def _resolve(future: asyncio.Future[np.ndarray], value: np.ndarray | BaseException | None) -> None:
    if future.done():
        return
    if value is None:
        future.cancel()
    elif isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


def _call_in_loop(future: asyncio.Future[np.ndarray], value: Any) -> None:
    """Resolve ``future`` on its own event loop, from the worker thread (None cancels)."""
    try:
        future.get_loop().call_soon_threadsafe(_resolve, future, value)
    except RuntimeError:  # the loop is closed: nobody is waiting
        pass


class Batcher:
    """Owns the scheduler, the inference worker thread and its watchdog."""

    def __init__(
        self,
        embed_tokens: EmbedTokensFn,
        config: EngineConfig,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._embed = embed_tokens
        self.config = config
        self.max_wait = config.max_wait_ms / 1000.0
        self.hung_after = config.hung_after_s
        self.scheduler = Scheduler(
            config.max_batch_tokens, config.max_batch_size, config.max_queue_texts
        )
        #: Called from the worker thread with each batch's stats (metrics); may be replaced.
        self.on_batch = on_batch
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._stopped = threading.Event()
        self._batch: _Running | None = None
        self._calibration: Sequence[np.ndarray] | None = None
        self._batches = 0
        self._last_end = -1.0
        self._flagged = -1
        self._flag_lock = threading.Lock()
        #: Batches that ran past ``hung_after`` (counted once each, while still running).
        self.hung_batches = 0
        #: Texts answered with a timeout instead of being run.
        self.expired_texts = 0

    # -- state ---------------------------------------------------------------------------

    @property
    def in_flight_texts(self) -> int:
        """Texts accepted and not yet answered (pending or in a running batch)."""
        return self.scheduler.in_flight

    @property
    def pending_texts(self) -> int:
        """Texts waiting for a batch."""
        return self.scheduler.pending_count

    @property
    def pending_tokens(self) -> int:
        with self._cond:
            return self.scheduler.pending_tokens

    @property
    def drain_rate(self) -> float:
        """Measured cost units (tokens plus a per-text overhead) per second of batch time."""
        return self.scheduler.rate.cost_per_s

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def running_for(self, now: float | None = None) -> float:
        """Seconds the current batch has run (0 when none runs)."""
        batch = self._batch
        return 0.0 if batch is None else (now or time.monotonic()) - batch.started

    @property
    def hung(self) -> bool:
        """The running batch has run longer than ``hung_after`` seconds (counted once)."""
        return self._flag_if_hung()

    def _flag_if_hung(self) -> bool:
        batch = self._batch
        if batch is None:
            return False
        ran = time.monotonic() - batch.started
        if ran <= self.hung_after:
            return False
        with self._flag_lock:
            if batch.seq != self._flagged:
                self._flagged = batch.seq
                self.hung_batches += 1
                logger.error(
                    "inference batch %d has run for %.1f s (limit %.1f s): /readyz is red",
                    batch.seq,
                    ran,
                    self.hung_after,
                )
        return True

    # -- life cycle ----------------------------------------------------------------------

    def start(self, calibration: Sequence[np.ndarray] | None = None) -> None:
        """Start the worker; it first runs ``calibration`` (a full synthetic batch), if given,
        to seed the drain rate (requests queue meanwhile, admitted on size alone)."""
        with self._cond:
            if self._running:
                return
            self._running = True
            self._calibration = calibration
        self._stopped.clear()
        self._thread = threading.Thread(target=self._run, name="r3-batcher", daemon=True)
        self._thread.start()
        self._watchdog = threading.Thread(target=self._watch, name="r3-watchdog", daemon=True)
        self._watchdog.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is pending, then stop the worker."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._stopped.set()

    def calibrate(self, batch: Sequence[np.ndarray], rounds: int = 2) -> float:
        """Seed the drain rate by running ``batch`` (before start); returns the cost per second.

        The seed is ``CALIBRATION_SHARE`` of the speed measured on the idle model: serving
        HTTP costs CPU too. Real batches soon outweigh it.
        """
        seconds = 0.0
        for _ in range(rounds):
            started = time.monotonic()
            self._embed(batch)
            seconds = time.monotonic() - started
        cost = sum(len(ids) for ids in batch) + len(batch) * TEXT_OVERHEAD
        with self._cond:
            self.scheduler.rate.observe(cost, len(batch), seconds / CALIBRATION_SHARE)
            return self.scheduler.rate.cost_per_s

    # -- requests ------------------------------------------------------------------------

    def submit(
        self,
        works: Sequence[Work],
        deadline: float,
        timeout: float,
        reservation: Job | None = None,
    ) -> None:
        """Queue all of ``works`` (one request's new texts) or none; raises if refused.

        With a ``reservation`` (``reserve``) still held, the deadline was planned for at
        admission: only the queue's size is checked, and the texts take the reserved place.
        """
        if not works:
            return
        now = time.monotonic()
        with self._cond:
            self._check_worker(now)
            reserved = reservation is not None and reservation.reserved
            self.scheduler.admit(
                works, deadline, timeout, now, self._busy_seconds(now), reserved=reserved
            )
            if reservation is not None and reserved:
                job = reservation
            else:
                job = Job(deadline=deadline, margin=PROTECT_SHARE * (deadline - now))
            self.scheduler.add(works, job, now)
            self._cond.notify()

    def reserve(
        self,
        count: int,
        cost: float,
        deadline: float,
        timeout: float,
        lead_s: float = 0.0,
        least_cost: float | None = None,
    ) -> Job:
        """Admit a job of about ``cost`` (at least ``least_cost``) before any work is spent on
        it, and hold its place (``Scheduler.reserve``); ``lead_s``: seconds before its texts
        can be queued (tokenising). Raises if refused. Give it back with ``cancel``."""
        now = time.monotonic()
        with self._cond:
            self._check_worker(now)
            return self.scheduler.reserve(
                count,
                cost,
                deadline,
                timeout,
                now,
                self._busy_seconds(now),
                lead_s=lead_s,
                least_cost=least_cost,
            )

    def cancel(self, reservation: Job) -> None:
        """Give a reserved place up (a no-op once its texts were submitted)."""
        with self._cond:
            self.scheduler.cancel(reservation)

    def finished(self, reservation: Job, at: float | None = None) -> None:
        """The request admitted with ``reservation`` ended (at ``at``; default now): admission
        compares that with its estimate (``Scheduler.finished``)."""
        with self._cond:
            self.scheduler.finished(reservation, time.monotonic() if at is None else at)

    def _check_worker(self, now: float) -> None:
        if not self._running or not self.alive:
            raise WorkerDeadError("the inference worker is not running")
        if self.hung:
            raise WorkerStalledError(
                f"inference stalled: a batch has run for {self.running_for(now):.0f} s",
                retry_after=5.0,
            )

    def release(self) -> None:
        """Drop pending texts nobody waits for any more (a request gave up)."""
        with self._cond:
            gone = self.scheduler.discard_unwanted()
            self.scheduler.answered(len(gone))
        for work in gone:
            _call_in_loop(work.future, None)

    def _busy_seconds(self, now: float) -> float:
        batch = self._batch
        if batch is None:
            return 0.0
        return max(0.0, batch.started + self.scheduler.rate.seconds(batch.cost) - now)

    # -- worker --------------------------------------------------------------------------

    def _run(self) -> None:
        if self._calibration:
            try:
                rate = self.calibrate(self._calibration)
                logger.info("drain rate at start: %.0f tokens/s", rate)
            except Exception:  # the first real batches will measure it
                logger.warning("calibration batch failed", exc_info=True)
        while True:
            taken = self._next()
            if taken is None:
                return
            self._settle(taken)
            if taken.batch:
                self._run_batch(taken.batch)

    def _next(self) -> Taken | None:
        """Wait for work, let a batch fill for up to max_wait, then take the next batch."""
        with self._cond:
            while True:
                while not self.scheduler.pending_count:
                    if not self._running:
                        return None
                    self._cond.wait(timeout=1.0)
                self._wait_to_fill()
                now = time.monotonic()
                taken = self.scheduler.take(now)
                if taken.batch:
                    cost = sum(w.cost for w in taken.batch)
                    self._batches += 1
                    self._batch = _Running(self._batches, now, cost)
                if taken:
                    return taken

    def _wait_to_fill(self) -> None:
        scheduler = self.scheduler
        deadline = scheduler.oldest_enqueued() + self.max_wait
        while (
            self._running
            and scheduler.pending_cost < self.config.max_batch_tokens
            and scheduler.pending_count < self.config.max_batch_size
        ):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(timeout=remaining)
            if not scheduler.pending_count:
                return

    def _settle(self, taken: Taken) -> None:
        """Answer what must not run: expired texts with a timeout, dropped ones by cancelling."""
        gone = len(taken.expired) + len(taken.dropped)
        if not gone:
            return
        with self._cond:
            self.scheduler.answered(gone)
            self.expired_texts += len(taken.expired)
        error = RequestTimeoutError("the deadline passed before the texts could run")
        for work in taken.expired:
            _call_in_loop(work.future, error)
        for work in taken.dropped:
            _call_in_loop(work.future, None)

    def _run_batch(self, batch: list[Work]) -> None:
        running = self._batch
        assert running is not None
        try:
            vectors = self._embed([w.ids for w in batch])
        except Exception as exc:  # one bad batch must not stop the worker
            logger.exception("inference failed for a batch of %d texts", len(batch))
            self._finish(batch, exc, running, observe=False)
            return
        self._finish(batch, vectors, running, observe=True)

    def _finish(
        self,
        batch: list[Work],
        result: np.ndarray | BaseException,
        running: _Running,
        observe: bool,
    ) -> None:
        ended = time.monotonic()
        elapsed = ended - running.started
        # Straight after the previous batch, the time between them (taking the batch,
        # answering the last one) is part of what draining the queue costs.
        gap = running.started - self._last_end
        drained = elapsed + gap if 0 <= gap < BATCH_GAP_S else elapsed
        self._last_end = ended
        with self._cond:
            self._batch = None
            self.scheduler.answered(len(batch))
            if observe and running.seq != self._flagged:  # a hung batch says nothing of the rate
                full = running.cost >= 0.5 * self.config.max_batch_tokens
                self.scheduler.rate.observe(running.cost, len(batch), drained, full)
        if isinstance(result, BaseException):
            for work in batch:
                _call_in_loop(work.future, result)
            return
        self._report(batch, running.started, elapsed)
        for work, vector in zip(batch, result):
            work.queue_seconds = running.started - work.enqueued
            work.inference_seconds = elapsed
            _call_in_loop(work.future, vector)

    def _report(self, batch: list[Work], started: float, elapsed: float) -> None:
        if self.on_batch is None:  # called before resolving: stats are in when callers wake
            return
        lengths = [w.tokens for w in batch]
        stats = BatchStats(
            size=len(batch),
            tokens=sum(lengths),
            padded_tokens=max(lengths) * len(batch),
            seconds=elapsed,
            queue_seconds=started - min(w.enqueued for w in batch),
        )
        try:
            self.on_batch(stats)
        except Exception:
            logger.exception("batch observer failed")

    def _watch(self) -> None:
        """Count a batch once when it runs past ``hung_after``; log it."""
        interval = min(1.0, max(0.01, self.hung_after / 4))
        while not self._stopped.wait(interval):
            self._flag_if_hung()
