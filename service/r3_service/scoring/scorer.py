"""``RewardScorer``: R^3 rewards for batches of items, from an embedding engine.

A request's items go through three steps, in this order: untyped items get a query type
from the classifier (``scoring/decide.py``), the texts the formula needs are embedded
(``EmbeddingEngine``: cache, dedup, admission, batching), and the reward math
(``r3_service.reward``) turns embeddings and response tokens into rewards. CPU work
(stop-string cutting, tokenising for LI/RP, the formula, copy detection) leaves the event
loop once a request is large enough for it to matter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from r3_service.encoder.base import relevance
from r3_service.encoder.profile import EncoderProfile
from r3_service.engine.batching import Batcher
from r3_service.engine.engine import INLINE_CHARS, EmbeddingEngine, Timing
from r3_service.engine.scheduler import Job
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
from r3_service.scoring.decide import fold, plan_qtypes

if TYPE_CHECKING:
    from r3_service.classifier.runtime import QueryClassifier

_T = TypeVar("_T")


@dataclass(frozen=True)
class RewardItem:
    """One (query, response, reference) triple; ``query`` is already plain text."""

    query: str
    response: str
    reference: str | None = None
    qtype: QueryType | None = None


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


@dataclass
class _Plan:
    """Which texts a score call embeds, and where each item's vectors will be."""

    texts: list[str] = field(default_factory=list)
    cacheable: list[bool] = field(default_factory=list)
    #: Per item: row of its "query" or "reference" (the anchor) and "response" vectors.
    slots: list[dict[str, int]] = field(default_factory=list)
    qtypes: list[QueryType] = field(default_factory=list)
    branches: list[Branch] = field(default_factory=list)

    def need(self, slot: dict[str, int], kind: str, text: str, cacheable: bool) -> None:
        slot[kind] = len(self.texts)
        self.texts.append(text)
        self.cacheable.append(cacheable)


def plan_embeddings(
    items: Sequence[RewardItem], prepared: Sequence[_Prepared], options: RewardOptions
) -> _Plan:
    """The texts to embed, in one round; an item without a qtype is OPENENDED."""
    plan = _Plan()
    for index, item in enumerate(items):
        slot: dict[str, int] = {}
        plan.qtypes.append(item.qtype or QueryType.OPENENDED)
        branch = choose_branch(plan.qtypes[-1], bool(item.reference), options)
        plan.branches.append(branch)
        if options.relevance:
            if branch.uses_reference:
                plan.need(slot, "reference", item.reference or "", True)
            else:
                plan.need(slot, "query", item.query, True)
            plan.need(slot, "response", prepared[index].response, False)
        plan.slots.append(slot)
    return plan


def assemble(
    items: Sequence[RewardItem],
    prepared: Sequence[_Prepared],
    plan: _Plan,
    vectors: np.ndarray,
    options: RewardOptions,
    profile: EncoderProfile,
) -> RewardBatch:
    """Rewards from the embeddings and the prepared responses (pure CPU work)."""
    branches = plan.branches
    rels = np.ones(len(items))
    if options.relevance and items:
        anchor_kind = ["reference" if b.uses_reference else "query" for b in branches]
        anchors = [slot[kind] for slot, kind in zip(plan.slots, anchor_kind)]
        responses = [slot["response"] for slot in plan.slots]
        rels = relevance(vectors[anchors], vectors[responses], profile.similarity)
    result = RewardBatch()
    for index, item in enumerate(items):
        parts = r3_reward(
            branch=branches[index],
            relevance=float(rels[index]),
            response_tokens=prepared[index].tokens,
            options=options,
            relevance_range=profile.relevance_range,
        )
        result.rewards.append(parts.reward)
        result.qtype.append(plan.qtypes[index])
        result.relevance.append(parts.relevance)
        result.length_incentive.append(parts.length_incentive)
        result.repetition_penalty.append(parts.repetition_penalty)
        result.branch.append(parts.branch)
        result.copies_query.append(  # the response's tokens are those LI and RP used
            copies_query_tokens(wordpunct_tokenize(item.query), prepared[index].tokens)
        )
        result.cuts.append(prepared[index].cut)
    return result


def texts_of(items: Sequence[RewardItem], options: RewardOptions) -> Iterator[str]:
    """The texts scoring ``items`` embeds first (responses before stop-string cutting)."""
    if not options.relevance:
        return
    for item in items:
        if item.qtype is None:
            yield item.query
        else:
            branch = choose_branch(item.qtype, bool(item.reference), options)
            yield (item.reference or "") if branch.uses_reference else item.query
        yield item.response


class RewardScorer:
    """R^3 rewards from an embedding engine and, for untyped items, a query classifier."""

    def __init__(self, engine: EmbeddingEngine, classifier: QueryClassifier | None = None) -> None:
        self.engine = engine
        self.classifier = classifier
        self._cpu_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="r3-prepare")

    @property
    def profile(self) -> EncoderProfile:
        return self.engine.profile

    def start(self, calibrate: bool = True) -> None:
        """Start the classifier's workers (if any), then the engine's."""
        if self.classifier is not None:
            self.classifier.start()
        self.engine.start(calibrate)

    def stop(self, timeout: float = 30.0) -> None:
        self.engine.stop(timeout)
        if self.classifier is not None:
            self.classifier.stop(timeout)
        self._cpu_pool.shutdown(wait=False, cancel_futures=True)

    def workers(self) -> list[tuple[str, Batcher]]:
        """The batchers that run model work for this scorer, named for health messages."""
        return [("inference", self.engine.batcher)] + (
            self.classifier.workers() if self.classifier is not None else []
        )

    async def _cpu(self, weight: int, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)``: inline when ``weight`` (characters) is small, else in a thread."""
        if weight <= INLINE_CHARS:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._cpu_pool, fn, *args)

    async def relevance(self, anchors: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Relevance of each text to its anchor, per the encoder profile's similarity."""
        n = len(anchors)
        vectors = await self.engine.embed([*anchors, *texts], [True] * n + [False] * n)
        return relevance(vectors[:n], vectors[n:], self.profile.similarity)

    async def classify(self, queries: Sequence[str]) -> np.ndarray:
        """P(OPENENDED) per query; 1.0 everywhere when no classifier is loaded."""
        if self.classifier is None or not queries:
            return np.ones(len(queries))
        return await self.classifier.probabilities(queries, self.engine)

    async def score(
        self,
        items: Sequence[RewardItem],
        options: RewardOptions | None = None,
        stop_strings: Sequence[str] | None = None,
    ) -> RewardBatch:
        """R^3 rewards for ``items``: decide types -> embed -> reward formula.

        Untyped items are typed by the classifier (``scoring/decide.py``), or scored as
        OPENENDED when none is loaded. The request is admitted (or refused) before any of
        that work, on a guess of its cost that includes the typing."""
        options = options or RewardOptions()
        engine = self.engine
        deadline = engine.deadline()
        classifier = self.classifier if options.branching else None  # no branching: no types
        extra = 0.0
        if classifier is not None:
            untyped = list({i.query for i in items if i.qtype is None})
            extra = classifier.cost(untyped, engine.chars_per_token)
        place = engine.reserve(texts_of(items, options), deadline, extra)
        with engine.admitted(place, deadline):
            plan = None
            if classifier is not None:
                plan = await plan_qtypes(classifier, engine, items, options)
                items = plan.items
            result = await self._score_typed(items, options, stop_strings, deadline, place)
            return fold(result, plan) if plan is not None else result

    async def _score_typed(
        self,
        items: Sequence[RewardItem],
        options: RewardOptions,
        stop_strings: Sequence[str] | None,
        deadline: float,
        place: Job | None = None,
    ) -> RewardBatch:
        """R^3 rewards; an item without a qtype is scored as OPENENDED."""
        stops = DEFAULT_STOP_STRINGS if stop_strings is None else tuple(stop_strings)
        weight = sum(len(i.query) + len(i.response) for i in items)
        prepared = await self._cpu(weight, _prepare, [i.response for i in items], stops)
        plan = plan_embeddings(items, prepared, options)
        timing = Timing()
        vectors = np.empty((0, self.engine.encoder.dim), dtype=np.float32)
        if plan.texts:
            vectors = await self.engine.embed(plan.texts, plan.cacheable, timing, deadline, place)
        result = await self._cpu(
            weight, assemble, items, prepared, plan, vectors, options, self.profile
        )
        result.timing = timing
        return result
