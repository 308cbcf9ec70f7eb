"""Dynamic batching: a bounded pending list and one inference worker thread.

Requests submit texts; the worker takes everything pending (after waiting up
to ``max_wait_ms`` for a batch to fill), tokenises it in one call, sorts it by
token length to minimise padding, cuts batches by a token budget (``batch size
x padded length <= max_batch_tokens``) and ``max_batch_size``, runs them, and
resolves each text's future on its own event loop. Tokenisation and inference
both run in the worker, off the event loop. A failing batch fails only its own
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

TokenizeFn = Callable[[Sequence[str]], list[np.ndarray]]
EmbedFn = Callable[[Sequence[np.ndarray]], np.ndarray]

#: Rough characters per token, only to judge whether pending work fills a batch.
_CHARS_PER_TOKEN = 4


class QueueFullError(Exception):
    """The pending queue cannot take a request's texts; retry later."""


class WorkerDeadError(RuntimeError):
    """The inference worker thread is not running."""


@dataclass(eq=False)
class Work:
    """One text waiting for its embedding."""

    text: str
    future: asyncio.Future[np.ndarray]
    #: Requests still waiting for this text; 0 means its work can be dropped.
    waiters: int = 1
    enqueued: float = field(default_factory=time.monotonic)
    ids: np.ndarray | None = None
    #: Set by the worker: seconds queued before its batch ran, and the batch's model time.
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0

    @property
    def estimated_tokens(self) -> int:
        return len(self.text) // _CHARS_PER_TOKEN + 2

    @property
    def wanted(self) -> bool:
        return self.waiters > 0 and not self.future.done()


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
    """Owns the pending queue and the worker thread that tokenises and embeds."""

    def __init__(
        self,
        tokenize: TokenizeFn,
        embed: EmbedFn,
        *,
        max_batch_tokens: int = 16384,
        max_batch_size: int = 64,
        max_wait_ms: float = 2.0,
        max_queue_texts: int = 4096,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._tokenize = tokenize
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
            if not self._running or not self.alive:
                raise WorkerDeadError("the inference worker is not running")
            if self._in_flight + len(works) > self.max_queue_texts:
                raise QueueFullError(
                    f"queue full ({self._in_flight} texts queued, limit {self.max_queue_texts})"
                )
            self._pending.extend(works)
            self._pending_tokens += sum(w.estimated_tokens for w in works)
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
            # Work nobody waits for any more (deadline passed, client gone) is dropped.
            live = [w for w in taken if w.wanted]
            self._drop([w for w in taken if not w.wanted])
            live = self._tokenized(live)
            batches = cut_batches(
                [len(w.ids) for w in live],  # type: ignore[arg-type]
                self.max_batch_tokens,
                self.max_batch_size,
            )
            for indices in batches:
                self._run_batch([live[i] for i in indices])

    def _drop(self, works: Sequence[Work]) -> None:
        self._finish(len(works))
        for work in works:
            _call_in_loop(work.future, None)

    def _fail(self, works: Sequence[Work], error: BaseException) -> None:
        self._finish(len(works))
        for work in works:
            _call_in_loop(work.future, error)

    def _tokenized(self, works: list[Work]) -> list[Work]:
        """Tokenise ``works`` in one call; a text the tokenizer rejects fails alone."""
        try:
            for work, ids in zip(works, self._tokenize([w.text for w in works]), strict=True):
                work.ids = ids
            return works
        except Exception:
            logger.warning("batch tokenisation failed; retrying text by text", exc_info=True)
        ok = []
        for work in works:
            try:
                work.ids = self._tokenize([work.text])[0]
                ok.append(work)
            except Exception as exc:
                self._fail([work], exc)
        return ok

    def _run_batch(self, taken: list[Work]) -> None:
        batch = [w for w in taken if w.wanted]
        self._drop([w for w in taken if not w.wanted])
        if not batch:
            return
        started = time.monotonic()
        try:
            vectors = self._embed([w.ids for w in batch])  # type: ignore[misc]
        except Exception as exc:  # one bad batch must not stop the worker
            logger.exception("inference failed for a batch of %d texts", len(batch))
            self._fail(batch, exc)
            return
        elapsed = time.monotonic() - started
        if self._on_batch is not None:  # before resolving: stats are in when callers wake
            lengths = [len(w.ids) for w in batch]  # type: ignore[arg-type]
            stats = BatchStats(
                size=len(batch),
                tokens=sum(lengths),
                padded_tokens=max(lengths) * len(batch),
                seconds=elapsed,
                queue_seconds=started - min(w.enqueued for w in batch),
            )
            try:
                self._on_batch(stats)
            except Exception:
                logger.exception("batch observer failed")
        self._finish(len(batch))
        for work, vector in zip(batch, vectors):
            work.queue_seconds = started - work.enqueued
            work.inference_seconds = elapsed
            _call_in_loop(work.future, vector)
        self.last_beat = time.monotonic()
