"""Gathering concurrent single-sample calls into batched requests.

Frameworks call a reward function once per sample, many at a time: OpenRLHF and older veRL
from threads, veRL's reward loop as coroutines on one event loop. A batcher holds each call
until ``max_items`` calls are waiting or ``window_s`` has passed since the first of them,
then scores them all with one ``send`` and hands each caller its own result.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["LoopBatcher", "ThreadBatcher"]


def _check(window_s: float, max_items: int) -> None:
    if window_s < 0:
        raise ValueError("window_s must be >= 0")
    if max_items < 1:
        raise ValueError("max_items must be >= 1")


class ThreadBatcher(Generic[T, R]):
    """Blocking ``submit(item)`` from many threads; one ``send(items)`` per gathered batch.

    The first caller of a batch leads it: it waits for the batch to fill or the window to
    close, takes the batch and sends it; an overflow gets a leader thread of its own.
    ``send`` returns one result per item, in order; if it raises, every caller of that
    batch gets the exception.
    """

    def __init__(
        self, send: Callable[[Sequence[T]], Sequence[R]], window_s: float, max_items: int
    ) -> None:
        _check(window_s, max_items)
        self.send = send
        self.window_s = window_s
        self.max_items = max_items
        self.batches_sent = 0
        self._cond = threading.Condition()
        self._pending: list[tuple[T, Future[R]]] = []
        self._leader = False

    def submit(self, item: T) -> R:
        """Score ``item`` with whatever else arrives in the same window."""
        future: Future[R] = Future()
        with self._cond:
            self._pending.append((item, future))
            self._cond.notify_all()
            lead = not self._leader
            self._leader = True
        if lead:
            self._lead()
        return future.result()

    def _lead(self) -> None:
        deadline = None
        with self._cond:
            while len(self._pending) < self.max_items:
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + self.window_s
                if now >= deadline:
                    break
                self._cond.wait(deadline - now)
            taken = self._pending[: self.max_items]
            self._pending = self._pending[self.max_items :]
            self._leader = bool(self._pending)
            if self._pending:  # the overflow gets a leader of its own
                threading.Thread(target=self._lead, name="r3-batch-leader", daemon=True).start()
            self.batches_sent += 1
        _deliver(self.send, taken)


def _deliver(send: Callable[[Sequence[T]], Sequence[R]], taken: list[tuple[T, Future[R]]]) -> None:
    try:
        results = send([item for item, _ in taken])
        if len(results) != len(taken):
            raise RuntimeError(f"send returned {len(results)} results for {len(taken)} items")
    except BaseException as exc:  # every caller of the batch sees the failure
        for _, future in taken:
            future.set_exception(exc)
    else:
        for (_, future), result in zip(taken, results):
            future.set_result(result)


class LoopBatcher(Generic[T, R]):
    """``await submit(item)`` from many tasks of one event loop; one ``send`` per batch.

    A batch goes out when ``max_items`` items wait, or ``window_s`` after its first item.
    Bound to the loop it is first used on.
    """

    def __init__(
        self,
        send: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        window_s: float,
        max_items: int,
    ) -> None:
        _check(window_s, max_items)
        self.send = send
        self.window_s = window_s
        self.max_items = max_items
        self.batches_sent = 0
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        """Score ``item`` with whatever else arrives in the same window."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self.max_items:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        taken = self._pending[: self.max_items]
        self._pending = self._pending[self.max_items :]
        if self._pending:
            self._timer = asyncio.get_running_loop().call_later(self.window_s, self._flush)
        if not taken:
            return
        self.batches_sent += 1
        task = asyncio.ensure_future(self._deliver(taken))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, taken: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self.send([item for item, _ in taken])
            if len(results) != len(taken):
                raise RuntimeError(f"send returned {len(results)} results for {len(taken)} items")
        except BaseException as exc:  # every caller of the batch sees the failure
            for _, future in taken:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, future), result in zip(taken, results):
                if not future.done():
                    future.set_result(result)
