"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from r3_service.api.errors import error_response
from r3_service.api.state import StateDep

router = APIRouter(tags=["health"])

#: The worker must beat at least this often while alive (it wakes every second).
WATCHDOG_S = 30.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(state: StateDep) -> Response | dict[str, str]:
    """The model is loaded and warmed, and the inference worker is alive."""
    if not state.ready or state.engine is None:
        reason = state.load_error or "model is loading"
        return error_response(503, f"not ready: {reason}", headers={"Retry-After": "5"})
    batcher = state.engine.batcher
    if not batcher.alive:
        return error_response(503, "not ready: inference worker died")
    if batcher.queued == 0 and time.monotonic() - batcher.last_beat > WATCHDOG_S:
        return error_response(503, "not ready: inference worker stalled")
    return {"status": "ready"}


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    """Prometheus text exposition."""
    engine = state.engine
    if engine is not None:
        state.metrics.sync(
            queued=engine.batcher.queued,
            cache_hits=engine.cache.hits,
            cache_misses=engine.cache.misses,
            cache_bytes=engine.cache.bytes,
            dedup=engine.dedup_hits,
        )
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
