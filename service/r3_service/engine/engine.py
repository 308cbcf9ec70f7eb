"""The async embedding engine: cache, in-flight dedup, admission and batching.

Texts in, embeddings out; it knows nothing of rewards or query types (``r3_service.scoring``
composes it with the classifier and the reward math). No web framework here: the HTTP layer
maps its exceptions (``engine/errors.py``) to status codes. Tokenising large requests leaves
the event loop, in chunks, so that small requests' chunks slot in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np

from r3_service.encoder.base import Encoder
from r3_service.encoder.profile import EncoderProfile
from r3_service.engine.batching import Batcher, BatchStats
from r3_service.engine.cache import EmbeddingCache
from r3_service.engine.config import EngineConfig
from r3_service.engine.errors import RequestTimeoutError
from r3_service.engine.scheduler import TEXT_OVERHEAD, Job, Work

logger = logging.getLogger(__name__)

#: Above this many characters, a CPU step runs in a worker thread instead of on the loop.
INLINE_CHARS = 8_000
#: Large tokenisations go in chunks, so that small requests' chunks slot in between.
TOKENIZE_CHUNK_CHARS = 64_000
#: Characters per token when guessing a request's cost before tokenising it, until the
#: texts tokenised so far give the ratio (English prose is about 4 to 5 on wordpiece).
PRECHECK_CHARS_PER_TOKEN = 4.0
#: The ratio learnt from tokenised texts stays within these bounds.
CHARS_PER_TOKEN_BOUNDS = (2.0, 8.0)
#: Weight of what was tokenised before, against the newest texts, in that ratio.
CHARS_PER_TOKEN_DECAY = 0.99
#: A text of n tokens takes about n * n / ATTENTION_TOKENS more than n of the drain rate's
#: cost units (measured with MiniLM on 2 CPU cores: 512-token texts ran at 0.66 times the
#: tokens per second of 64-token ones, the texts the drain rate mostly sees). Admission
#: estimates long texts with it, so that a request of many long texts is not under-priced.
ATTENTION_TOKENS = 768.0
#: Characters per second of the tokenizer thread until measured (a slow machine's), and
#: the weight of earlier chunks in the measured rate.
PRECHECK_TOKENIZE_CHARS_PER_S = 1_000_000.0
TOKENIZE_RATE_DECAY = 0.9

#: When the current request arrived (monotonic seconds); set by the HTTP layer so that a
#: request's deadline counts from its arrival. Unset: from when the engine is called.
request_started: ContextVar[float | None] = ContextVar("r3_request_started", default=None)


@dataclass
class Timing:
    """Where one request's time went: the longest queue wait and model time of its texts."""

    queue_seconds: float = 0.0
    inference_seconds: float = 0.0

    def add(self, work: Work) -> None:
        self.queue_seconds = max(self.queue_seconds, work.queue_seconds)
        self.inference_seconds = max(self.inference_seconds, work.inference_seconds)


def _estimated_cost(tokens: int) -> float:
    """A text's cost in the drain rate's units, counting that long texts cost more per
    token (attention): ``ATTENTION_TOKENS``."""
    return tokens + TEXT_OVERHEAD + tokens * tokens / ATTENTION_TOKENS


def _consume(future: asyncio.Future[Any]) -> None:
    """Mark a future's outcome as seen (a request that gave up leaves it unread)."""
    if not future.cancelled():
        future.exception()


def _chunks(texts: Sequence[str], max_chars: int) -> Iterator[Sequence[str]]:
    start, used = 0, 0
    for end, text in enumerate(texts):
        if end > start and used + len(text) > max_chars:
            yield texts[start:end]
            start, used = end, 0
        used += len(text)
    if start < len(texts):
        yield texts[start:]


def calibration_batch(encoder: Encoder, config: EngineConfig) -> list[np.ndarray]:
    """A full batch of synthetic texts, to measure the drain rate before serving."""
    per_text = config.max_batch_tokens // config.max_batch_size
    width = max(8, min(encoder.profile.max_length, per_text))
    ids = encoder.tokenize(["calibrating the drain rate " * width])[0]
    row = np.concatenate([ids[: width - 1], ids[-1:]]) if len(ids) > width else ids
    return [row] * max(1, min(config.max_batch_size, config.max_batch_tokens // len(row)))


class EmbeddingEngine:
    """Embeddings of texts for concurrent requests, sharing one batcher across them."""

    def __init__(
        self,
        encoder: Encoder,
        config: EngineConfig | None = None,
        *,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.encoder = encoder
        self.config = config or EngineConfig()
        self.cache = EmbeddingCache(self.config.cache_bytes)
        self.batcher = Batcher(encoder.embed_tokens, self.config, on_batch=on_batch)
        self._inflight: dict[str, Work] = {}
        self._tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="r3-tokenize")
        self.dedup_hits = 0
        self._chars_seen = 0.0  # decayed sums of untruncated texts' characters and tokens
        self._tokens_seen = 0.0
        self._tokenized_chars = 0.0  # decayed sums of the tokenizer thread's work
        self._tokenized_seconds = 0.0
        #: Requests admitted (a place reserved), and those of them that then got a timeout.
        self.admitted_requests = 0
        self.late_requests = 0

    @property
    def profile(self) -> EncoderProfile:
        return self.encoder.profile

    def start(self, calibrate: bool = True) -> None:
        """Start the worker; its first job measures the drain rate on a full synthetic batch."""
        batch = calibration_batch(self.encoder, self.config) if calibrate else None
        if calibrate:  # the tokenizer's speed, for the lead time of large requests
            self._timed_tokenize(["calibrating the tokenizer's speed " * 2000])
        self.batcher.start(batch)

    def stop(self, timeout: float = 30.0) -> None:
        self.batcher.stop(timeout)
        self._tokenizer_pool.shutdown(wait=False, cancel_futures=True)

    def deadline(self) -> float:
        """The current request's deadline (monotonic seconds)."""
        started = request_started.get() or time.monotonic()
        return started + self.config.request_timeout_s

    @property
    def chars_per_token(self) -> float:
        """Characters per token of the texts tokenised lately (a prior until there are some)."""
        if self._tokens_seen < 1000:
            return PRECHECK_CHARS_PER_TOKEN
        low, high = CHARS_PER_TOKEN_BOUNDS
        return min(high, max(low, self._chars_seen / self._tokens_seen))

    def _learn_chars_per_token(self, texts: Sequence[str], ids: Sequence[np.ndarray]) -> None:
        longest = self.profile.max_length
        pairs = [(len(t), len(i)) for t, i in zip(texts, ids) if len(i) < longest]
        if pairs:
            d = CHARS_PER_TOKEN_DECAY ** len(pairs)
            self._chars_seen = d * self._chars_seen + sum(c for c, _ in pairs)
            self._tokens_seen = d * self._tokens_seen + sum(n for _, n in pairs)

    def reserve(self, texts: Iterable[str], deadline: float, extra: float = 0.0) -> Job | None:
        """Admit a request on a guess of its texts' cost before any work is spent on it
        (typing its queries, tokenising), and hold its place in the queue; raises (503)
        when admission refuses it. Cached texts and texts in flight cost nothing; None
        when nothing is left to run. ``extra``: other model work the request needs on
        this device first (typing its queries). When the request ends, call ``ended``,
        then give the place up with ``Batcher.cancel``."""
        fresh = {t for t in texts if t not in self.cache and not self._in_flight(t)}
        if not fresh:
            return None
        longest, ratio = self.profile.max_length, self.chars_per_token
        most = CHARS_PER_TOKEN_BOUNDS[1]  # the fewest tokens a text can have
        lengths = [len(t) for t in fresh]
        cost = extra + sum(_estimated_cost(min(int(n / ratio), longest)) for n in lengths)
        least = extra + sum(_estimated_cost(min(int(n / most), longest)) for n in lengths)
        chars = sum(lengths)
        lead = chars / self.tokenize_chars_per_s if chars > INLINE_CHARS else 0.0
        timeout = self.config.request_timeout_s
        place = self.batcher.reserve(len(fresh), cost, deadline, timeout, lead, least)
        self.admitted_requests += 1
        return place

    async def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of ``texts``; large inputs in chunks on the tokenizer thread."""
        if sum(len(t) for t in texts) <= INLINE_CHARS:
            return self.encoder.tokenize(texts)
        loop = asyncio.get_running_loop()
        out: list[np.ndarray] = []
        for chunk in _chunks(texts, TOKENIZE_CHUNK_CHARS):
            pool, tokenize = self._tokenizer_pool, self._timed_tokenize
            out.extend(await loop.run_in_executor(pool, tokenize, chunk))
        return out

    def _timed_tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        """``encoder.tokenize``, learning the characters per second it gets through (the
        lead time admission counts for a large request before its texts can queue)."""
        started = time.perf_counter()
        ids = self.encoder.tokenize(texts)
        seconds = time.perf_counter() - started
        chars = sum(len(t) for t in texts)
        if seconds > 0 and chars >= INLINE_CHARS:
            d = TOKENIZE_RATE_DECAY
            self._tokenized_chars = d * self._tokenized_chars + chars
            self._tokenized_seconds = d * self._tokenized_seconds + seconds
        return ids

    @property
    def tokenize_chars_per_s(self) -> float:
        """Characters per second the tokenizer thread gets through (a prior until measured)."""
        if self._tokenized_seconds <= 0:
            return PRECHECK_TOKENIZE_CHARS_PER_S
        return self._tokenized_chars / self._tokenized_seconds

    # -- embeddings ----------------------------------------------------------------------

    async def embed(
        self,
        texts: Sequence[str],
        cacheable: Sequence[bool] | None = None,
        timing: Timing | None = None,
        deadline: float | None = None,
        reservation: Job | None = None,
    ) -> np.ndarray:
        """Embeddings of ``texts`` (n, dim), through the cache, dedup and the batcher.

        ``reservation``: the place ``reserve`` holds for them; without one, they are
        admitted here."""
        deadline = self.deadline() if deadline is None else deadline
        flags = list(cacheable) if cacheable is not None else [True] * len(texts)
        out = np.empty((len(texts), self.encoder.dim), dtype=np.float32)
        rows_of: dict[str, list[int]] = {}
        cache_of: dict[str, bool] = {}
        for row, (text, flag) in enumerate(zip(texts, flags)):
            rows_of.setdefault(text, []).append(row)
            cache_of[text] = cache_of.get(text, False) or flag
        waiting: dict[str, Work] = {}
        try:
            fresh = self._lookup(rows_of, cache_of, out, waiting, deadline)
            owned: Job | None = None
            if fresh and (reservation is None or not reservation.reserved):
                reservation = owned = self.reserve(fresh, deadline)
            with self.admitted(owned, deadline):
                if fresh:
                    await self._enqueue(fresh, cache_of, waiting, deadline, reservation)
                if waiting:
                    await self._collect(waiting, rows_of, out, deadline)
        except BaseException:
            self._release(waiting)
            raise
        if timing is not None:
            for work in waiting.values():
                timing.add(work)
        return out

    @contextlib.contextmanager
    def admitted(self, place: Job | None, deadline: float) -> Iterator[None]:
        """Around the work of a request admitted with ``place`` (None: nothing to do): when
        it ends, count it (late on a timeout), tell admission how long it took (``ended``)
        and give the place up."""
        if place is None:
            yield
            return
        try:
            yield
        except RequestTimeoutError:
            self.ended(place, deadline, late=True)
            raise
        else:
            self.ended(place, deadline, late=False)
        finally:
            self.batcher.cancel(place)

    def ended(self, place: Job, deadline: float, late: bool) -> None:
        """The request admitted with ``place`` ended, answered or ``late`` (a timeout): count
        it, and let admission compare the time it took with its estimate."""
        if late:
            self.late_requests += 1
        now = time.monotonic()
        self.batcher.finished(place, max(deadline, now) if late else now)

    def _lookup(
        self,
        rows_of: dict[str, list[int]],
        cache_of: dict[str, bool],
        out: np.ndarray,
        waiting: dict[str, Work],
        deadline: float,
    ) -> list[str]:
        """Fill cache hits, attach to identical work in flight; returns the texts still new."""
        fresh = []
        for text, rows in rows_of.items():
            hit = self.cache.get(text) if cache_of[text] else None
            if hit is not None:
                out[rows] = hit
            elif self._in_flight(text):
                waiting[text] = self._attach(text, deadline)
            else:
                fresh.append(text)
        return fresh

    async def _enqueue(
        self,
        fresh: list[str],
        cache_of: dict[str, bool],
        waiting: dict[str, Work],
        deadline: float,
        reservation: Job | None,
    ) -> None:
        """Tokenise the new texts and queue them all, or raise why not."""
        ids = await self.tokenize(fresh)
        self._learn_chars_per_token(fresh, ids)
        loop = asyncio.get_running_loop()
        new: list[tuple[str, Work]] = []
        for text, tokens in zip(fresh, ids):
            if self._in_flight(text):  # queued by another request while we tokenised
                waiting[text] = self._attach(text, deadline)
            else:
                work = Work(text=text, future=loop.create_future(), ids=tokens, deadline=deadline)
                new.append((text, work))
        timeout = self.config.request_timeout_s
        self.batcher.submit([work for _, work in new], deadline, timeout, reservation)
        for text, work in new:
            self._inflight[text] = work
            waiting[text] = work
            work.future.add_done_callback(self._forget(text, work, cache_of[text]))

    async def _collect(
        self,
        waiting: dict[str, Work],
        rows_of: dict[str, list[int]],
        out: np.ndarray,
        deadline: float,
    ) -> None:
        names = list(waiting)
        gathered = asyncio.gather(*(asyncio.shield(waiting[t].future) for t in names))
        gathered.add_done_callback(_consume)
        try:
            vectors = await asyncio.wait_for(gathered, max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError as exc:
            raise RequestTimeoutError(
                f"no answer within {self.config.request_timeout_s:g} s"
            ) from exc
        for text, vector in zip(names, vectors):
            out[rows_of[text]] = vector

    def _in_flight(self, text: str) -> bool:
        work = self._inflight.get(text)
        return work is not None and not work.future.done()

    def _attach(self, text: str, deadline: float) -> Work:
        work = self._inflight[text]
        work.waiters += 1
        work.deadline = max(work.deadline, deadline)
        self.dedup_hits += 1
        return work

    def _release(self, waiting: dict[str, Work]) -> None:
        """This request stops waiting; work nobody waits for is dropped from the queue."""
        for work in waiting.values():
            if not work.future.done():
                work.waiters -= 1
        for text, work in waiting.items():
            if work.waiters <= 0 and self._inflight.get(text) is work:
                del self._inflight[text]
        if waiting:
            self.batcher.release()

    def _forget(self, text: str, work: Work, cacheable: bool) -> Callable[[object], None]:
        def done(_: object) -> None:
            if self._inflight.get(text) is work:
                del self._inflight[text]
            future = work.future
            failed = future.cancelled() or future.exception() is not None  # marks it seen
            if cacheable and not failed:
                self.cache.put(text, future.result())

        return done
