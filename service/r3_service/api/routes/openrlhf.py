"""POST /openrlhf/reward: OpenRLHF's remote reward protocol (``--reward.remote_url``).

The label rule, the prompt/response split and ``scores`` are documented in
docs/integrations.md ("OpenRLHF").
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from r3_service.api.errors import validation_error
from r3_service.api.schemas import (
    ErrorResponse,
    OpenRLHFRequest,
    OpenRLHFResponse,
    qtype_name,
)
from r3_service.api.state import ScorerDep, ServiceState, StateDep, observe_rewards
from r3_service.api.validation import check_items, check_same_length, check_text, check_texts
from r3_service.config import Settings
from r3_service.engine import QueueFullError, RequestTimeoutError
from r3_service.engine.engine import INLINE_CHARS
from r3_service.reward.formula import QueryType, RewardOptions
from r3_service.reward.text import split_prompt_response, user_text_from_prompt
from r3_service.scoring import RewardBatch, RewardItem, RewardScorer

router = APIRouter(tags=["integrations"])

#: Nesting a label may have (a list of objects is depth 2).
MAX_LABEL_DEPTH = 8
#: The keys of a structured label.
LABEL_KEYS = ("reference", "qtype")
#: How far into the sequence a left-truncated prompt's first, partly decoded, token may reach.
_CUT_SLACK_CHARS = 8
#: Characters of the sequence start that must be found in the prompt to call it a cut prompt.
_CUT_PROBE_CHARS = 32
#: Places in the prompt tried per start offset.
_CUT_CANDIDATES = 16


def _label_depth(label: Any) -> int:
    """Nesting depth of a JSON value (a scalar is 0), computed without recursion."""
    deepest, stack = 0, [(label, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = list(value.values())
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_LABEL_DEPTH:
            stack.extend((child, depth + 1) for child in children)
    return deepest


def check_label(label: Any, index: int, settings: Settings) -> None:
    """A label obeys the per-text character limit and the nesting limit (else 422)."""
    if isinstance(label, str):
        check_text("labels", index, label, settings)
        return
    if _label_depth(label) > MAX_LABEL_DEPTH:
        raise validation_error("labels", index, f"nested deeper than {MAX_LABEL_DEPTH} levels")
    if isinstance(label, (dict, list)):
        check_text("labels", index, json.dumps(label, ensure_ascii=False), settings)


#: Text that starts like a JSON object: "{", then a key's quote or the closing brace.
_OBJECT_START = re.compile(r'\{\s*["}]')


def _as_object(text: str, index: int) -> dict[str, Any] | None:
    """``text`` as a JSON object, or None when it does not start like one.

    Text that starts like an object (``{"``, or ``{}``) must be one: a label cut short
    (``{"reference": "4", "qtype": "CONSTRAINED"``) is a 422, not a reference scored with
    the wrong formula. Other text, ``{1, 2, 3}`` or ``{x} + 1``, is a reference.
    """
    if _OBJECT_START.match(text) is None:
        return None
    try:
        value = json.loads(text)
    except RecursionError:
        value = None
    except ValueError as exc:
        raise validation_error(
            "labels",
            index,
            f"starts like a JSON object but is not one ({exc}); send a label object, or a "
            'reference that starts with "{" inside one: {"reference": "..."}',
        ) from None
    if value is None or _label_depth(value) > MAX_LABEL_DEPTH:
        raise validation_error("labels", index, f"nested deeper than {MAX_LABEL_DEPTH} levels")
    return dict(value)  # text that starts with "{" and parses is an object


def _scalar_text(value: Any) -> str | None:
    """A string, number or boolean as reference text; None for empty text or null."""
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return None


def _parse_object(obj: dict[str, Any], index: int) -> tuple[str | None, QueryType | None]:
    """A structured label ``{"reference", "qtype"}``; any other shape is a 422 naming the key."""
    for key in obj:
        if key not in LABEL_KEYS:
            raise validation_error(
                f"labels.{key}", index, "unknown key; a label object has only reference and qtype"
            )
    reference = obj.get("reference")
    if isinstance(reference, (dict, list)):
        raise validation_error("labels.reference", index, "must be a string, a number or null")
    qtype = obj.get("qtype")
    if qtype is None:
        return _scalar_text(reference), None
    name = qtype_name(qtype)
    if name not in QueryType.__members__:
        raise validation_error(
            "labels.qtype", index, f"must be OPENENDED or CONSTRAINED (any case), got {qtype!r}"
        )
    return _scalar_text(reference), QueryType(name)


def parse_label(label: Any, index: int) -> tuple[str | None, QueryType | None]:
    """(reference, qtype) from one OpenRLHF label, by the rule in docs/integrations.md.

    null or blank text: nothing. A JSON object, or text holding one: ``{"reference",
    "qtype"}``, validated. Other text, numbers and booleans: the reference. A list:
    its first element, by the same rule.
    """
    while isinstance(label, list):
        label = label[0] if label else None
    if isinstance(label, dict):
        return _parse_object(label, index)
    if isinstance(label, str):
        obj = _as_object(label.strip(), index)
        if obj is not None:
            return _parse_object(obj, index)
    return _scalar_text(label), None


def _cut_prompt_end(sequence: str, prompt: str) -> int | None:
    """Where the prompt ends in ``sequence`` when the trainer cut the prompt from the left.

    The sequence then starts (after at most a few characters of a partly decoded token)
    with a suffix of the prompt: the longest such suffix is taken. Only the first few places
    where the sequence's start occurs in the prompt are tried, so repetitive text costs
    little (and falls back to the plain split).
    """
    for start in range(min(_CUT_SLACK_CHARS, len(sequence)) + 1):
        probe = sequence[start : start + min(_CUT_PROBE_CHARS, len(prompt))]
        if not probe:
            return None
        # prompt[found:] must fit in what follows ``start`` in the sequence
        found = prompt.find(probe, max(1, len(prompt) - (len(sequence) - start)))
        for _ in range(_CUT_CANDIDATES):
            if found < 0:
                break
            if sequence.startswith(prompt[found:], start):
                return start + len(prompt) - found
            found = prompt.find(probe, found + 1)
    return None


def response_of(sequence: str, prompt: str) -> str:
    """The response part of ``sequence`` = prompt + response, also when the prompt was cut."""
    if prompt and prompt not in sequence:
        end = _cut_prompt_end(sequence, prompt)
        if end is not None:
            return sequence[end:]
    return split_prompt_response(sequence, prompt)


def read_items(
    sequences: Sequence[str],
    prompts: Sequence[str],
    labels: Sequence[Any],
    settings: Settings,
    deadline: float,
) -> list[RewardItem]:
    """The items of an OpenRLHF request, each checked: the prompt's user turns, the
    response, the label's reference and query type. Past ``deadline`` (the request's, in
    monotonic seconds): :class:`RequestTimeoutError` (504), checked between items."""
    check_texts("query", sequences, settings)
    check_texts("prompts", prompts, settings)
    items = []
    for index, (sequence, prompt, label) in enumerate(zip(sequences, prompts, labels)):
        if time.monotonic() > deadline:
            raise RequestTimeoutError(f"reading item {index} of {len(sequences)} took too long")
        check_label(label, index, settings)
        reference, qtype = parse_label(label, index)
        if reference is not None:
            check_text("labels", index, reference, settings)
        items.append(
            RewardItem(
                query=user_text_from_prompt(prompt),
                response=response_of(sequence, prompt),
                reference=reference,
                qtype=qtype,
            )
        )
    return items


def scores_of(rewards: Sequence[float], options: RewardOptions) -> list[float]:
    """``reward / (max_sequence_length / 100)``, the top of F, clipped to [0, 1]."""
    top = options.max_sequence_length / 100.0
    return [min(1.0, max(0.0, r / top)) if math.isfinite(r) else 0.0 for r in rewards]


async def score_when_admitted(
    scorer: RewardScorer, items: Sequence[RewardItem], state: ServiceState
) -> RewardBatch:
    """Score ``items``, waiting for room while the queue is full (OpenRLHF's client cannot
    honour ``Retry-After``); past the request deadline the 503 goes out."""
    deadline = time.monotonic() + state.settings.request_timeout_s
    delay, waited = 0.005, False
    while True:
        try:
            return await scorer.score(items)
        except QueueFullError:
            if time.monotonic() + delay > deadline:
                raise
            if not waited:
                waited = True
                state.metrics.rejected.labels("queue_full_waiting").inc()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)


@router.post(
    "/openrlhf/reward",
    response_model=OpenRLHFResponse,
    response_model_exclude_none=True,
    responses={code: {"model": ErrorResponse} for code in (401, 413, 422, 503, 504)},
)
async def openrlhf_reward(
    body: OpenRLHFRequest,
    scorer: ScorerDep,
    state: StateDep,
    response: Response,
    extra_logs: Annotated[
        bool, Query(description="false leaves extra_logs out (OpenRLHF 0.8.3-0.8.11).")
    ] = True,
) -> OpenRLHFResponse:
    """R^3 for OpenRLHF: each sequence is split into prompt and response; labels give the
    reference answer and the query type."""
    settings = state.settings
    n = len(body.query)
    check_items("query", body.query, settings)
    check_same_length("prompts", body.prompts, n)
    check_same_length("labels", body.labels, n)
    labels = body.labels if body.labels is not None else [None] * n
    weight = sum(map(len, body.query)) + sum(map(len, body.prompts))
    weight += sum(len(label) if isinstance(label, str) else 64 for label in labels)
    args = (body.query, body.prompts, labels, settings, scorer.engine.deadline())
    if weight <= INLINE_CHARS:
        items = read_items(*args)
    else:  # linear, but tens of milliseconds for a large body: off the event loop
        items = await asyncio.to_thread(read_items, *args)
    result = await score_when_admitted(scorer, items, state)
    observe_rewards(state, "/openrlhf/reward", result, response)
    logs = {
        "r3_relevance": result.relevance,
        "r3_length_incentive": result.length_incentive,
        "r3_repetition_penalty": result.repetition_penalty,
    }
    return OpenRLHFResponse(
        rewards=result.rewards,
        scores=scores_of(result.rewards, RewardOptions()),
        extra_logs=logs if extra_logs else None,
    )
