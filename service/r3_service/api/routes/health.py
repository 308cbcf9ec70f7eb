"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from r3_service.api.errors import error_response
from r3_service.api.state import ServiceState, StateDep

router = APIRouter(tags=["health"])

#: The worker must beat at least this often while alive (it wakes every second).
WATCHDOG_S = 30.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


def not_ready_reason(state: ServiceState) -> str | None:
    """Why the service cannot serve now (None when ready); /readyz and Ray Serve's check."""
    if not state.ready or state.engine is None:
        return state.load_error or "model is loading"
    batcher = state.engine.batcher
    if not batcher.alive:
        return "inference worker died"
    if batcher.queued == 0 and time.monotonic() - batcher.last_beat > WATCHDOG_S:
        return "inference worker stalled"
    return None


@router.get("/readyz", response_model=None)
async def readyz(state: StateDep) -> Response | dict[str, str]:
    """The model is loaded and warmed, and the inference worker is alive."""
    reason = not_ready_reason(state)
    if reason is not None:
        headers = {"Retry-After": "5"} if not state.ready else None
        return error_response(503, f"not ready: {reason}", headers=headers)
    return {"status": "ready"}


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    """Prometheus text exposition."""
    refresh_metrics(state)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def refresh_metrics(state: ServiceState) -> None:
    """Copy the engine's queue and cache counters into the metrics registry."""
    engine = state.engine
    if engine is not None:
        state.metrics.sync(
            queued=engine.batcher.queued,
            cache_hits=engine.cache.hits,
            cache_misses=engine.cache.misses,
            cache_bytes=engine.cache.bytes,
            dedup=engine.dedup_hits,
        )
