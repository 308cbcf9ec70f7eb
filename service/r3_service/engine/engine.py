"""The async reward engine: embeddings through the batcher and cache, then R^3 math.

No web framework here: the HTTP layer calls ``RewardEngine`` and maps its
exceptions to status codes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from r3_service.encoder.base import Encoder, relevance
from r3_service.encoder.profile import EncoderProfile
from r3_service.engine.batching import Batcher, BatchStats, Work
from r3_service.engine.cache import EmbeddingCache
from r3_service.reward.formula import (
    Branch,
    QueryType,
    RewardOptions,
    choose_branch,
    r3_reward,
)
from r3_service.reward.text import (
    DEFAULT_STOP_STRINGS,
    Cut,
    copies_query_tokens,
    cut_response,
    wordpunct_tokenize,
)

logger = logging.getLogger(__name__)

#: Above this many response characters, stop-string cutting and token counting
#: leave the event loop (small batches are cheaper inline than a thread hop).
_INLINE_PREPARE_CHARS = 20_000

#: P(OPENENDED) for each query, from the query embeddings and texts.
QtypeClassifier = Callable[[np.ndarray, Sequence[str]], np.ndarray]


class RequestTimeoutError(Exception):
    """The request's deadline passed before its embeddings were ready."""


@dataclass(frozen=True)
class EngineConfig:
    """Batching, cache and deadline knobs (mirrors the service settings)."""

    max_batch_tokens: int = 1024
    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    max_queue_texts: int = 4096
    cache_bytes: int = 64 * 1024 * 1024
    request_timeout_s: float = 60.0


@dataclass(frozen=True)
class RewardItem:
    """One (query, response, reference) triple; ``query`` is already plain text."""

    query: str
    response: str
    reference: str | None = None
    qtype: QueryType | None = None


@dataclass
class Timing:
    """Where one request's time went: the longest queue wait and model time of its texts."""

    queue_seconds: float = 0.0
    inference_seconds: float = 0.0

    def add(self, work: Work) -> None:
        self.queue_seconds = max(self.queue_seconds, work.queue_seconds)
        self.inference_seconds = max(self.inference_seconds, work.inference_seconds)


@dataclass
class RewardBatch:
    """Rewards and their factors, one entry per item."""

    rewards: list[float] = field(default_factory=list)
    qtype: list[QueryType] = field(default_factory=list)
    relevance: list[float] = field(default_factory=list)
    length_incentive: list[float] = field(default_factory=list)
    repetition_penalty: list[float] = field(default_factory=list)
    branch: list[Branch] = field(default_factory=list)
    #: Whether each response mostly repeats its query (see ``copies_query``).
    copies_query: list[bool] = field(default_factory=list)
    #: Where each response was cut before scoring (character offsets).
    cuts: list[Cut] = field(default_factory=list)
    timing: Timing = field(default_factory=Timing)


@dataclass(frozen=True)
class _Prepared:
    response: str
    tokens: list[str]
    cut: Cut


def _prepare(responses: Sequence[str], stop_strings: Sequence[str]) -> list[_Prepared]:
    prepared = []
    for text in responses:
        cut = cut_response(text, stop_strings)
        scored = cut.text(text)
        prepared.append(_Prepared(scored, wordpunct_tokenize(scored), cut))
    return prepared


def _consume(future: asyncio.Future[Any]) -> None:
    """Mark a future's outcome as seen (a request that gave up leaves it unread)."""
    if not future.cancelled():
        future.exception()


class RewardEngine:
    """Scores R^3 rewards for batches of items, sharing one batcher across requests."""

    def __init__(
        self,
        encoder: Encoder,
        config: EngineConfig | None = None,
        *,
        classifier: QtypeClassifier | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.encoder = encoder
        self.config = config or EngineConfig()
        self.classifier = classifier
        self.cache = EmbeddingCache(self.config.cache_bytes)
        self.batcher = Batcher(
            encoder.tokenize,
            encoder.embed_tokens,
            max_batch_tokens=self.config.max_batch_tokens,
            max_batch_size=self.config.max_batch_size,
            max_wait_ms=self.config.max_wait_ms,
            max_queue_texts=self.config.max_queue_texts,
            on_batch=on_batch,
        )
        self._inflight: dict[str, Work] = {}
        self._cpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="r3-prepare")
        self.dedup_hits = 0

    @property
    def profile(self) -> EncoderProfile:
        return self.encoder.profile

    def start(self) -> None:
        self.batcher.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.batcher.stop(timeout)
        self._cpu.shutdown(wait=False, cancel_futures=True)

    async def embed(
        self,
        texts: Sequence[str],
        cacheable: Sequence[bool] | None = None,
        timing: Timing | None = None,
    ) -> np.ndarray:
        """Embeddings of ``texts`` (n, dim), through the cache, dedup and the batcher."""
        flags = list(cacheable) if cacheable is not None else [True] * len(texts)
        out = np.empty((len(texts), self.encoder.dim), dtype=np.float32)
        cache_of: dict[str, bool] = {}
        rows_of: dict[str, list[int]] = {}
        for row, (text, flag) in enumerate(zip(texts, flags)):
            rows_of.setdefault(text, []).append(row)
            cache_of[text] = cache_of.get(text, False) or flag

        # Synchronous from here to submit(): no other request interleaves.
        loop = asyncio.get_running_loop()
        waiting: dict[str, Work] = {}
        new: list[tuple[str, Work]] = []
        for text, rows in rows_of.items():
            hit = self.cache.get(text) if cache_of[text] else None
            if hit is not None:
                out[rows] = hit
            elif text in self._inflight:
                waiting[text] = self._attach(text)
            else:
                work = Work(text=text, future=loop.create_future())
                waiting[text] = work
                new.append((text, work))
        try:
            self.batcher.submit([work for _, work in new])
        except Exception:
            queued_by_us = {id(work) for _, work in new}
            self._release(waiting, [w for w in waiting.values() if id(w) not in queued_by_us])
            raise
        for text, work in new:
            self._inflight[text] = work
            work.future.add_done_callback(self._forget(text, work, cache_of[text]))

        if waiting:
            names = list(waiting)
            gathered = asyncio.gather(*(asyncio.shield(waiting[t].future) for t in names))
            gathered.add_done_callback(_consume)
            try:
                vectors = await asyncio.wait_for(gathered, self.config.request_timeout_s)
            except asyncio.TimeoutError as exc:
                self._release(waiting, list(waiting.values()))
                raise RequestTimeoutError(
                    f"no answer within {self.config.request_timeout_s:g} s"
                ) from exc
            except BaseException:
                self._release(waiting, list(waiting.values()))
                raise
            for text, vector in zip(names, vectors):
                out[rows_of[text]] = vector
            if timing is not None:
                for work in waiting.values():
                    timing.add(work)
        return out

    def _attach(self, text: str) -> Work:
        work = self._inflight[text]
        work.waiters += 1
        self.dedup_hits += 1
        return work

    def _release(self, waiting: dict[str, Work], works: Sequence[Work]) -> None:
        """This request stops waiting for ``works``; unwanted work is dropped by the worker."""
        for work in works:
            if not work.future.done():
                work.waiters -= 1
        for text, work in waiting.items():
            if work.waiters <= 0 and self._inflight.get(text) is work:
                del self._inflight[text]

    def _forget(self, text: str, work: Work, cacheable: bool) -> Callable[[object], None]:
        def done(_: object) -> None:
            if self._inflight.get(text) is work:
                del self._inflight[text]
            if cacheable and not work.future.cancelled() and work.future.exception() is None:
                self.cache.put(text, work.future.result())

        return done

    async def relevance(self, anchors: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Relevance of each text to its anchor, per the encoder profile's similarity."""
        n = len(anchors)
        vectors = await self.embed([*anchors, *texts], [True] * n + [False] * n)
        return relevance(vectors[:n], vectors[n:], self.profile.similarity)

    async def classify(self, queries: Sequence[str]) -> np.ndarray:
        """P(OPENENDED) per query; 1.0 everywhere when no classifier is loaded."""
        if self.classifier is None or not queries:
            return np.ones(len(queries))
        vectors = await self.embed(queries)
        return np.asarray(self.classifier(vectors, queries), dtype=np.float64)

    async def score(
        self,
        items: Sequence[RewardItem],
        options: RewardOptions | None = None,
        stop_strings: Sequence[str] | None = None,
    ) -> RewardBatch:
        """R^3 rewards for ``items``; untyped items are classified, or OPENENDED without a head."""
        options = options or RewardOptions()
        stops = DEFAULT_STOP_STRINGS if stop_strings is None else tuple(stop_strings)
        responses = [i.response for i in items]
        if sum(len(r) for r in responses) > _INLINE_PREPARE_CHARS:
            prepared = await asyncio.get_running_loop().run_in_executor(
                self._cpu, _prepare, responses, stops
            )
        else:
            prepared = _prepare(responses, stops)

        # Plan which texts each item needs, embed them all in one round.
        texts: list[str] = []
        cacheable: list[bool] = []
        slots: list[dict[str, int]] = []

        def need(kind: str, text: str, cache: bool, slot: dict[str, int]) -> None:
            slot[kind] = len(texts)
            texts.append(text)
            cacheable.append(cache)

        use_head = self.classifier is not None and options.branching
        classify_rows = [i for i, item in enumerate(items) if item.qtype is None and use_head]
        branches: list[Branch | None] = []
        for index, item in enumerate(items):
            slot: dict[str, int] = {}
            if item.qtype is None and use_head:
                # The query is needed to classify, and is the OPENENDED anchor; a
                # reference is embedded in a second round, only if the type needs it.
                branches.append(None)
                need("query", item.query, True, slot)
            else:
                branch = choose_branch(
                    item.qtype or QueryType.OPENENDED, bool(item.reference), options
                )
                branches.append(branch)
                if options.relevance:
                    if branch.uses_reference:
                        need("reference", item.reference or "", True, slot)
                    else:
                        need("query", item.query, True, slot)
            if options.relevance:
                need("response", prepared[index].response, False, slot)
            slots.append(slot)
        timing = Timing()
        vectors = await self.embed(texts, cacheable, timing) if texts else np.empty((0, 0))

        qtypes = [item.qtype or QueryType.OPENENDED for item in items]
        if classify_rows:
            assert self.classifier is not None
            rows = [slots[i]["query"] for i in classify_rows]
            probs = self.classifier(vectors[rows], [items[i].query for i in classify_rows])
            late: list[str] = []
            for i, p in zip(classify_rows, probs):
                qtypes[i] = QueryType.OPENENDED if p >= 0.5 else QueryType.CONSTRAINED
                branches[i] = choose_branch(qtypes[i], bool(items[i].reference), options)
                if options.relevance and branches[i] is Branch.CONSTRAINED:
                    slots[i]["reference"] = len(vectors) + len(late)
                    late.append(items[i].reference or "")
            if late:
                extra = await self.embed(late, [True] * len(late), timing)
                vectors = np.concatenate([vectors, extra])

        result = RewardBatch(timing=timing)
        similarity = self.profile.similarity
        for index in range(len(items)):
            qtype = qtypes[index]
            chosen = branches[index]
            assert chosen is not None
            branch = chosen
            slot = slots[index]
            rel = 1.0
            if options.relevance:
                anchor = slot["reference"] if branch.uses_reference else slot["query"]
                rel = float(
                    relevance(
                        vectors[anchor : anchor + 1],
                        vectors[slot["response"] : slot["response"] + 1],
                        similarity,
                    )[0]
                )
            parts = r3_reward(
                branch=branch,
                relevance=rel,
                response_tokens=prepared[index].tokens,
                options=options,
                relevance_range=self.profile.relevance_range,
            )
            result.rewards.append(parts.reward)
            result.qtype.append(qtype)
            result.relevance.append(parts.relevance)
            result.length_incentive.append(parts.length_incentive)
            result.repetition_penalty.append(parts.repetition_penalty)
            result.branch.append(parts.branch)
            result.copies_query.append(  # the response's tokens are those LI and RP used
                copies_query_tokens(wordpunct_tokenize(items[index].query), prepared[index].tokens)
            )
            result.cuts.append(prepared[index].cut)
        return result
