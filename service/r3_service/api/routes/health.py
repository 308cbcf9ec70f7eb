"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from r3_service.api.errors import error_response
from r3_service.api.state import ServiceState, StateDep
from r3_service.engine.batching import Batcher
from r3_service.engine.engine import RewardEngine

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


def worker_batchers(engine: RewardEngine) -> list[tuple[str, Batcher]]:
    """The engine's batcher and, for a fine-tuned classifier, the classifier's own."""
    batchers = [("inference", engine.batcher)]
    typing = getattr(engine.classifier, "engine", None)
    if typing is not None:
        batchers.append(("query-type classifier", typing.batcher))
    return batchers


def not_ready_reason(state: ServiceState) -> str | None:
    """Why the service cannot serve now (None when ready); /readyz and Ray Serve's check."""
    if not state.ready or state.engine is None:
        return state.load_error or "model is loading"
    for name, batcher in worker_batchers(state.engine):
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
    """Copy the engine's queue, cache and worker tallies into the metrics registry.

    Queue and drain figures are the inference worker's; hung batches and expired texts
    count both workers (inference and the classifier's), the running time is the longer.
    """
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
        workers = [b for _, b in worker_batchers(engine)]
        state.metrics.sync_worker(
            pending_tokens=batcher.pending_tokens,
            drain_rate=batcher.drain_rate,
            running_for=max(b.running_for() for b in workers),
            hung_batches=sum(b.hung_batches for b in workers),
            expired_texts=sum(b.expired_texts for b in workers),
        )
        state.metrics.sync_admission(engine.admitted_requests, engine.late_requests)


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    """Prometheus text exposition."""
    refresh_metrics(state)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
