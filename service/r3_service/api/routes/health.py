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
    if not state.ready or state.scorer is None:
        return state.load_error or "model is loading"
    for name, batcher in state.scorer.workers():
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
    """Copy the scorer's tallies into the metrics registry (``Metrics.refresh``)."""
    if state.scorer is not None:
        state.metrics.refresh(state.scorer)


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    """Prometheus text exposition."""
    refresh_metrics(state)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
