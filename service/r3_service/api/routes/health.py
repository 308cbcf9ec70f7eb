"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from r3_service.api.errors import error_response
from r3_service.api.state import ServiceState, StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


def not_ready_reason(state: ServiceState) -> str | None:
    """Why the service cannot serve now (None when ready); /readyz and Ray Serve's check."""
    if not state.ready or state.engine is None:
        return state.load_error or "model is loading"
    batchers = [("inference", state.engine.batcher)]
    typing = getattr(state.engine.classifier, "engine", None)  # a fine-tuned classifier's own
    if typing is not None:
        batchers.append(("query-type classifier", typing.batcher))
    for name, batcher in batchers:
        if not batcher.alive:
            return f"{name} worker died"
        if batcher.hung:
            running = batcher.running_for()
            return f"{name} batch running for {running:.0f} s (limit {batcher.hung_after:g} s)"
    return None


@router.get("/readyz", response_model=None)
async def readyz(state: StateDep) -> Response | dict[str, str]:
    """The model is loaded and warmed, the worker is alive and no batch is hung."""
    reason = not_ready_reason(state)
    if reason is not None:
        headers = {"Retry-After": "5"} if not state.ready else None
        return error_response(503, f"not ready: {reason}", headers=headers)
    return {"status": "ready"}


def refresh_metrics(state: ServiceState) -> None:
    """Copy the engine's queue, cache and worker tallies into the metrics registry."""
    engine = state.engine
    if engine is not None:
        batcher = engine.batcher
        state.metrics.sync(
            queued=batcher.in_flight_texts,
            cache_hits=engine.cache.hits,
            cache_misses=engine.cache.misses,
            cache_bytes=engine.cache.bytes,
            dedup=engine.dedup_hits,
        )
        state.metrics.sync_worker(
            pending_tokens=batcher.pending_tokens,
            drain_rate=batcher.drain_rate,
            running_for=batcher.running_for(),
            hung_batches=batcher.hung_batches,
            expired_texts=batcher.expired_texts,
        )


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    """Prometheus text exposition."""
    refresh_metrics(state)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
