"""Dynamic batching: a bounded pending list and one inference worker thread.

Requests submit tokenised texts; the worker takes everything pending (after
waiting up to ``max_wait_ms`` for a batch to fill), sorts it by length to
minimise padding, cuts batches by a token budget (``batch size x padded
length <= max_batch_tokens``) and ``max_batch_size``, runs them, and resolves
each text's future on its event loop. A failing batch fails only its own
futures; the worker goes on with the next one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

EmbedFn = Callable[[Sequence[np.ndarray]], np.ndarray]


class QueueFullError(Exception):
    """The pending queue cannot take a request's texts; retry later."""


class WorkerDeadError(RuntimeError):
    """The inference worker thread is not running."""


@dataclass(eq=False)
class Work:
    """One text waiting for its embedding."""

    ids: np.ndarray
    future: asyncio.Future[np.ndarray]
    #: Requests still waiting for this text; 0 means its work can be dropped.
    waiters: int = 1
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def tokens(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class BatchStats:
    """What one inference batch did (for metrics)."""

    size: int
    tokens: int
    padded_tokens: int
    seconds: float
    queue_seconds: float


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


def _resolve(future: asyncio.Future[np.ndarray], value: np.ndarray | BaseException | None) -> None:
    if future.done():
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    elif value is not None:
        future.set_result(value)


def _cancel(future: asyncio.Future[np.ndarray], _: object) -> None:
    future.cancel()


def _call_in_loop(
    future: asyncio.Future[np.ndarray],
    fn: Callable[[asyncio.Future[np.ndarray], Any], None],
    value: object,
) -> None:
    """Run ``fn(future, value)`` on the future's event loop, from the worker thread."""
    try:
        future.get_loop().call_soon_threadsafe(fn, future, value)
    except RuntimeError:  # the loop is closed: nobody is waiting
        pass


class Batcher:
    """Owns the pending queue and the worker thread that runs ``embed``."""

    def __init__(
        self,
        embed: EmbedFn,
        *,
        max_batch_tokens: int = 16384,
        max_batch_size: int = 64,
        max_wait_ms: float = 2.0,
        max_queue_texts: int = 4096,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._embed = embed
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue_texts = max_queue_texts
        self._on_batch = on_batch
        self._cond = threading.Condition()
        self._pending: list[Work] = []
        self._pending_tokens = 0
        self._in_flight = 0  # texts accepted and not yet resolved
        self._running = False
        self._thread: threading.Thread | None = None
        self.last_beat = time.monotonic()

    @property
    def queued(self) -> int:
        """Texts accepted and not yet answered (pending or in inference)."""
        return self._in_flight

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._run, name="r3-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is pending, then stop the worker."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, works: Sequence[Work]) -> None:
        """Queue all of ``works`` or none of them (raises QueueFullError)."""
        if not works:
            return
        with self._cond:
            if not self.alive or not self._running:
                raise WorkerDeadError("the inference worker is not running")
            if self._in_flight + len(works) > self.max_queue_texts:
                raise QueueFullError(
                    f"queue full ({self._in_flight} texts queued, limit {self.max_queue_texts})"
                )
            self._pending.extend(works)
            self._pending_tokens += sum(w.tokens for w in works)
            self._in_flight += len(works)
            self._cond.notify()

    def _take(self) -> list[Work] | None:
        """Wait for work, let the batch fill for up to max_wait, then take all pending."""
        with self._cond:
            while not self._pending:
                if not self._running:
                    return None
                self._cond.wait(timeout=1.0)
                self.last_beat = time.monotonic()
            deadline = self._pending[0].enqueued + self.max_wait
            while (
                self._running
                and self._pending_tokens < self.max_batch_tokens
                and len(self._pending) < self.max_batch_size
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(timeout=remaining)
            taken, self._pending, self._pending_tokens = self._pending, [], 0
            return taken

    def _finish(self, count: int) -> None:
        with self._cond:
            self._in_flight -= count

    def _run(self) -> None:
        while True:
            self.last_beat = time.monotonic()
            taken = self._take()
            if taken is None:
                return
            batches = cut_batches(
                [w.tokens for w in taken], self.max_batch_tokens, self.max_batch_size
            )
            for indices in batches:
                self._run_batch([taken[i] for i in indices])

    def _run_batch(self, taken: list[Work]) -> None:
        # Work nobody waits for any more (deadline passed, client gone) is dropped.
        batch = []
        for work in taken:
            if work.waiters > 0 and not work.future.done():
                batch.append(work)
            else:
                _call_in_loop(work.future, _cancel, None)
        if not batch:
            self._finish(len(taken))
            return
        started = time.monotonic()
        try:
            vectors = self._embed([w.ids for w in batch])
            results: list[np.ndarray | BaseException] = list(vectors)
        except Exception as exc:  # one bad batch must not stop the worker
            logger.exception("inference failed for a batch of %d texts", len(batch))
            results = [exc] * len(batch)
        elapsed = time.monotonic() - started
        for work, value in zip(batch, results):
            _call_in_loop(work.future, _resolve, value)
        self._finish(len(taken))
        self.last_beat = time.monotonic()
        if self._on_batch is not None:
            self._on_batch(
                BatchStats(
                    size=len(batch),
                    tokens=sum(w.tokens for w in batch),
                    padded_tokens=max(w.tokens for w in batch) * len(batch),
                    seconds=elapsed,
                    queue_seconds=started - min(w.enqueued for w in batch),
                )
            )
