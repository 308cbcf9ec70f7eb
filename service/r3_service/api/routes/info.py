"""GET /v1/info: model, profile, limits, version."""

from __future__ import annotations

from fastapi import APIRouter

from r3_service import __version__
from r3_service.api.schemas import InfoResponse, LimitsInfo, ProfileInfo
from r3_service.api.state import ScorerDep, StateDep

router = APIRouter(tags=["info"])


@router.get("/v1/info", response_model=InfoResponse)
async def info(scorer: ScorerDep, state: StateDep) -> InfoResponse:
    """What is served and under which limits."""
    s = state.settings
    engine = scorer.engine
    profile = engine.profile
    return InfoResponse(
        model=state.model_name,
        version=__version__,
        device=getattr(engine.encoder, "device", "cpu"),
        backend=getattr(engine.encoder, "backend", "onnxruntime"),
        precision=getattr(engine.encoder, "precision", profile.dtype),
        profile=ProfileInfo(
            similarity=profile.similarity,
            relevance_range=profile.relevance_range,
            max_sequence_length=profile.max_length,
            pooling=profile.pooling,
            truncation=profile.truncation,
            dtype=profile.dtype,
        ),
        limits=LimitsInfo(
            max_items_per_request=s.max_items_per_request,
            max_chars_per_text=s.max_chars_per_text,
            max_body_bytes=s.max_body_bytes,
            max_batch_tokens=engine.config.max_batch_tokens,
            max_batch_size=engine.config.max_batch_size,
            max_queue_texts=s.max_queue_texts,
            request_timeout_s=s.request_timeout_s,
        ),
        classifier=(
            {**scorer.classifier.info(), "untyped_items": "classified"}
            if scorer.classifier is not None
            else state.classifier_info
        ),
    )
