"""POST /reward, /relevance and /classify."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fastapi import APIRouter, Response

from r3_service.api.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    ErrorResponse,
    Query,
    RelevanceRequest,
    RelevanceResponse,
    ResponseCuts,
    RewardComponents,
    RewardRequest,
    RewardResponse,
)
from r3_service.api.state import ScorerDep, StateDep, observe_rewards
from r3_service.api.validation import (
    check_items,
    check_same_length,
    check_texts,
    query_texts,
)
from r3_service.config import Settings
from r3_service.engine.engine import INLINE_CHARS
from r3_service.reward.formula import QueryType, RewardOptions
from r3_service.reward.text import alpaca_query
from r3_service.scoring import RewardItem

router = APIRouter(tags=["reward"])

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 413, 422, 503, 504)
}


def request_chars(queries: Sequence[Query], *columns: Sequence[str | None]) -> int:
    """Characters of a request's texts (chat messages counted by their content)."""
    chars = sum(len(q) if isinstance(q, str) else sum(len(m.content) for m in q) for q in queries)
    return chars + sum(len(text) for column in columns for text in column if text)


def read_texts(
    body: RewardRequest, references: Sequence[str | None], settings: Settings
) -> list[str]:
    """The plain query texts of a /reward body (Alpaca-normalised when asked), after
    checking every text of it."""
    queries = query_texts(body.query, settings)
    check_texts("response", body.response, settings)
    check_texts("reference", references, settings)
    if body.options is not None and body.options.query_format == "alpaca":
        queries = [alpaca_query(q) for q in queries]
    return queries


@router.post("/reward", response_model=RewardResponse, responses=_ERRORS)
async def reward(
    body: RewardRequest, scorer: ScorerDep, state: StateDep, response: Response
) -> RewardResponse:
    """R^3 reward of each (query, response, reference) item."""
    settings = state.settings
    n = len(body.query)
    check_items("query", body.query, settings)
    check_same_length("response", body.response, n)
    check_same_length("reference", body.reference, n)
    check_same_length("qtype", body.qtype, n)
    references = body.reference or [None] * n
    qtypes = body.qtype or [None] * n
    opts = body.options
    if request_chars(body.query, body.response, references) <= INLINE_CHARS:
        queries = read_texts(body, references, settings)
    else:  # linear, but tens of milliseconds for a large body: off the event loop
        queries = await asyncio.to_thread(read_texts, body, references, settings)
    options = opts.to_options() if opts else RewardOptions()
    items = [
        RewardItem(query=q, response=r, reference=ref, qtype=t)
        for q, r, ref, t in zip(queries, body.response, references, qtypes)
    ]
    result = await scorer.score(items, options, opts.stop_strings if opts else None)
    observe_rewards(state, "/reward", result, response)
    return RewardResponse(
        rewards=result.rewards,
        qtype=result.qtype,
        components=RewardComponents(
            relevance=result.relevance,
            length_incentive=result.length_incentive,
            repetition_penalty=result.repetition_penalty,
            branch=result.branch,
        ),
        cut=ResponseCuts(
            start=[c.start for c in result.cuts],
            end=[c.end for c in result.cuts],
            stop_end=[c.stop_end for c in result.cuts],
        ),
        copies_query=result.copies_query,
        model=state.model_name,
    )


@router.post("/relevance", response_model=RelevanceResponse, responses=_ERRORS)
async def relevance(
    body: RelevanceRequest, scorer: ScorerDep, state: StateDep
) -> RelevanceResponse:
    """Raw relevance (the profile's similarity) of each text to its anchor."""
    settings = state.settings
    check_items("anchor", body.anchor, settings)
    check_same_length("text", body.text, len(body.anchor), against="anchor")
    check_texts("anchor", body.anchor, settings)
    check_texts("text", body.text, settings)
    scores = await scorer.relevance(body.anchor, body.text)
    state.metrics.items.labels("/relevance").inc(len(body.anchor))
    return RelevanceResponse(relevance=[float(s) for s in scores], model=state.model_name)


@router.post("/classify", response_model=ClassifyResponse, responses=_ERRORS)
async def classify(body: ClassifyRequest, scorer: ScorerDep, state: StateDep) -> ClassifyResponse:
    """Query type of each query, with P(OPENENDED)."""
    check_items("query", body.query, state.settings)
    if request_chars(body.query) <= INLINE_CHARS:
        queries = query_texts(body.query, state.settings)
    else:
        queries = await asyncio.to_thread(query_texts, body.query, state.settings)
    probs = await scorer.classify(queries)
    state.metrics.items.labels("/classify").inc(len(queries))
    classifier = scorer.classifier
    openended = classifier.is_openended(probs) if classifier else [True] * len(queries)
    uncertain = classifier.uncertain(probs) if classifier else [False] * len(queries)
    return ClassifyResponse(
        qtype=[QueryType.OPENENDED if o else QueryType.CONSTRAINED for o in openended],
        prob_openended=[float(p) for p in probs],
        uncertain=[bool(u) for u in uncertain],
        model=state.model_name,
    )
