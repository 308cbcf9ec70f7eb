"""POST /openrlhf/reward: OpenRLHF's remote reward-model protocol (``--remote_rm_url``)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Response

from r3_service.api.schemas import ErrorResponse, OpenRLHFLabel, OpenRLHFRequest, OpenRLHFResponse
from r3_service.api.state import EngineDep, StateDep, observe_rewards
from r3_service.api.validation import check_items, check_same_length, check_texts
from r3_service.engine import RewardItem
from r3_service.reward.formula import QueryType
from r3_service.reward.text import split_prompt_response, user_text_from_prompt

router = APIRouter(tags=["integrations"])


def parse_label(label: str | OpenRLHFLabel | None) -> tuple[str | None, QueryType | None]:
    """(reference, qtype) from an OpenRLHF label: plain text, a JSON object, or nothing."""
    if label is None:
        return None, None
    if isinstance(label, OpenRLHFLabel):
        return label.reference or None, label.qtype
    stripped = label.strip()
    if stripped.startswith("{"):
        try:
            parsed = OpenRLHFLabel.model_validate(json.loads(stripped))
            return parsed.reference or None, parsed.qtype
        except ValueError:
            pass  # not our JSON: the text is the reference
    return (label if stripped else None), None


@router.post(
    "/openrlhf/reward",
    response_model=OpenRLHFResponse,
    responses={code: {"model": ErrorResponse} for code in (422, 503)},
)
async def openrlhf_reward(
    body: OpenRLHFRequest, engine: EngineDep, state: StateDep, response: Response
) -> OpenRLHFResponse:
    """R^3 for OpenRLHF: splits each sequence into prompt and response, labels are references."""
    settings = state.settings
    n = len(body.query)
    check_items("query", body.query, settings)
    check_same_length("prompts", body.prompts, n)
    check_same_length("labels", body.labels, n)
    check_texts("query", body.query, settings)
    check_texts("prompts", body.prompts, settings)
    labels = body.labels or [None] * n
    items = []
    for sequence, prompt, label in zip(body.query, body.prompts, labels):
        reference, qtype = parse_label(label)
        items.append(
            RewardItem(
                query=user_text_from_prompt(prompt),
                response=split_prompt_response(sequence, prompt),
                reference=reference,
                qtype=qtype,
            )
        )
    result = await engine.score(items)
    observe_rewards(state, "/openrlhf/reward", result, response)
    return OpenRLHFResponse(
        rewards=result.rewards,
        scores=result.rewards,
        extra_logs={
            "r3_relevance": result.relevance,
            "r3_length_incentive": result.length_incentive,
            "r3_repetition_penalty": result.repetition_penalty,
        },
    )
