"""What the app holds between requests, and the dependencies that hand it out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request, Response

from r3_service.api.errors import APIError
from r3_service.config import Settings
from r3_service.metrics import Metrics
from r3_service.scoring import RewardBatch, RewardScorer


@dataclass
class ServiceState:
    """Settings, metrics and (once loaded) the scorer of one app."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    scorer: RewardScorer | None = None
    model_name: str = ""
    classifier_info: dict[str, object] | None = None
    load_error: str | None = None
    ready: bool = False


def observe_rewards(
    state: ServiceState, route: str, result: RewardBatch, response: Response
) -> None:
    """Reward metrics, and where the request's time went as response headers."""
    metrics = state.metrics
    metrics.items.labels(route).inc(len(result.rewards))
    for reward, qtype, branch, copied in zip(
        result.rewards, result.qtype, result.branch, result.copies_query
    ):
        metrics.reward.labels(qtype.value, branch.value).observe(reward)
        if copied:
            metrics.query_copy.labels(qtype.value).inc()
    response.headers["X-R3-Queue-Time-Ms"] = f"{result.timing.queue_seconds * 1000:.2f}"
    response.headers["X-R3-Inference-Time-Ms"] = f"{result.timing.inference_seconds * 1000:.2f}"


async def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.r3
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_scorer(state: StateDep) -> RewardScorer:
    """The scorer, or 503 while the model loads (or after it failed to)."""
    if not state.ready or state.scorer is None:
        reason = state.load_error or "model is loading"
        raise APIError(503, f"not ready: {reason}", headers={"Retry-After": "5"})
    return state.scorer


ScorerDep = Annotated[RewardScorer, Depends(get_scorer)]
