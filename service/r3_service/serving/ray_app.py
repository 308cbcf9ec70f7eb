"""R^3 as a Ray Serve application: the service's own FastAPI app behind Serve's ingress.

Each replica builds ``create_app()`` with its own engine and ONNX Runtime session, so the
routes, validation, errors, auth and ``/metrics`` are those of ``r3-serve``. Serve routes
requests over replicas, autoscales them on ongoing requests, and health-checks them with
``not_ready_reason`` (the logic of ``/readyz``). On scale-down or redeploy Serve stops
routing to a replica, waits for its ongoing requests, then the app's lifespan finishes the
engine's queue: the drain of ``r3-serve`` on SIGTERM.

Start it with ``serve run deploy/ray/serve.yaml``, ``serve run
r3_service.serving.ray_app:build_app num_replicas=2``, or from a Ray job with
``serve.run(build_app(RayServeArgs(...)))``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, Field, model_validator
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.handle import DeploymentHandle

from r3_service.api.app import create_app
from r3_service.api.routes.health import not_ready_reason
from r3_service.api.state import ServiceState
from r3_service.config import Settings
from r3_service.models import resolve_model_dir
from r3_service.serving.asgi_call import RawResponse, call_asgi
from r3_service.serving.model_ship import ModelStore, fetch_model
from r3_service.serving.ray_metrics import RayMetricsMirror

logger = logging.getLogger(__name__)

#: Response header naming the replica that answered (Serve routes behind one address).
REPLICA_HEADER = "x-r3-replica"


class RayServeArgs(BaseModel):
    """Arguments of ``build_app`` (``serve run ... key=value`` or the config's ``args``)."""

    model: Path | None = Field(
        default=None,
        description="Exported folder on the node that builds the app; unset: the embedded "
        "default, exported there once.",
    )
    ship_model: bool = Field(
        default=True,
        description="Copy the folder to each node through the object store; false: replicas "
        "open `model` directly (a shared filesystem).",
    )
    num_replicas: int = Field(default=1, ge=1, description="Replicas without autoscaling.")
    min_replicas: int = Field(default=1, ge=0, description="Autoscaling floor.")
    max_replicas: int | None = Field(
        default=None, ge=1, description="Set to autoscale between min and max replicas."
    )
    target_ongoing_requests: float = Field(
        default=8.0, gt=0, description="Autoscaling target of ongoing requests per replica."
    )
    max_ongoing_requests: int = Field(
        default=64, ge=1, description="Requests a replica takes at once; the engine batches them."
    )
    num_cpus: float = Field(default=1.0, ge=0, description="CPUs per replica (ORT threads).")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs per replica; 0.5 shares one.")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Service settings for every replica (names of Settings, e.g. max_wait_ms); "
        "R3_* variables of the replicas' runtime_env apply too.",
    )
    health_check_period_s: float = Field(default=5.0, gt=0)
    metrics_interval_s: float = Field(
        default=5.0, ge=0, description="Copy r3_* metrics to Ray's metrics every N s; 0: off."
    )

    def replica_args(self, model: Path | None) -> dict[str, Any]:
        """What a replica needs; replica counts stay out, so scaling restarts no replica."""
        fields = {"settings", "num_cpus", "num_gpus", "metrics_interval_s"}
        return {**self.model_dump(mode="json", include=fields), "model": model and str(model)}

    @model_validator(mode="after")
    def _check_range(self) -> RayServeArgs:
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        return self


def replica_settings(args: RayServeArgs, env: dict[str, str] | None = None) -> Settings:
    """The replica's Settings: CUDA when it holds a GPU, ORT threads = its CPUs."""
    env = dict(os.environ) if env is None else env
    overrides = dict(args.settings)
    if "provider" not in overrides and "R3_PROVIDER" not in env:
        overrides["provider"] = "cuda" if args.num_gpus > 0 else "cpu"
    if "intra_op_threads" not in overrides and "R3_INTRA_OP_THREADS" not in env:
        overrides["intra_op_threads"] = max(1, round(args.num_cpus))
    if args.model is not None:
        overrides["model"] = args.model
    return Settings(**overrides)


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside a Serve replica (unit tests)
        return f"local-{os.getpid()}"


class ReplicaHeader:
    """ASGI middleware adding ``X-R3-Replica`` to every answer."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app = app
        self.value = replica.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((REPLICA_HEADER.encode(), self.value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, tagged)


class R3Replica:
    """One replica: its own engine and ONNX session behind the service's FastAPI app."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self, args: dict[str, Any], store: DeploymentHandle | None = None
    ) -> None:
        parsed = RayServeArgs.model_validate(args)
        settings = replica_settings(parsed)
        if store is not None:
            folder = await fetch_model(store, settings.cache_dir)
            settings = settings.model_copy(update={"model": folder})
        self.settings = settings
        self.replica_id = _replica_id()
        self.r3_app = create_app(settings)
        self.r3_app.add_middleware(ReplicaHeader, replica=self.replica_id)
        self.state: ServiceState = self.r3_app.state.r3
        self._loaded = False
        self._mirror = RayMetricsMirror(self.state, self.replica_id, parsed.metrics_interval_s)

    def __serve_build_asgi_app__(self) -> Any:
        return self.r3_app

    async def _wait_loaded(self) -> None:
        """Until the app's background load has finished (or failed)."""
        deadline = time.monotonic() + max(600.0, self.settings.request_timeout_s)
        while not self.state.ready and self.state.load_error is None:
            if time.monotonic() > deadline:
                raise RuntimeError("not ready: model still loading")
            await asyncio.sleep(0.05)
        self._loaded = True
        self._mirror.start()

    async def check_health(self) -> None:
        """Serve's health check: the readiness logic of ``/readyz``; raising fails it."""
        if not self._loaded:
            await self._wait_loaded()
        reason = not_ready_reason(self.state)
        if reason is not None:
            raise RuntimeError(f"not ready: {reason}")

    async def handle_request(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> RawResponse:
        """One HTTP request through the same app, for callers holding a Serve handle."""
        return await call_asgi(self.r3_app, method, path, headers, body)

    def __del__(self) -> None:
        mirror = getattr(self, "_mirror", None)
        if mirror is not None:
            mirror.stop()


def _deployment(cls: type) -> Deployment:
    """``serve.deployment(cls)``, typed (its annotation says it returns a decorator)."""
    return cast(Deployment, serve.deployment(cls))


def _scaling(args: RayServeArgs) -> dict[str, Any]:
    """A fixed replica count, or autoscaling on ongoing requests when max_replicas is set."""
    if args.max_replicas is None:
        return {"num_replicas": args.num_replicas}
    return {
        "autoscaling_config": {
            "min_replicas": args.min_replicas,
            "initial_replicas": max(args.min_replicas, 1),
            "max_replicas": args.max_replicas,
            "target_ongoing_requests": args.target_ongoing_requests,
        }
    }


def _store_app(folder: Path) -> Application:
    """The ModelStore deployment, pinned to this node (where the folder is)."""
    import ray

    if not ray.is_initialized():
        ray.init(namespace="serve")
    node_id = ray.get_runtime_context().get_node_id()
    store = _deployment(ModelStore).options(
        name="R3ModelStore",
        num_replicas=1,
        ray_actor_options={"num_cpus": 0, "label_selector": {"ray.io/node-id": node_id}},
    )
    return store.bind(str(folder))


def build_app(args: RayServeArgs | dict[str, Any]) -> Application:
    """The Serve application: ``R3Reward`` replicas (and the model store when shipping)."""
    args = RayServeArgs.model_validate(args)  # config files and `serve run` pass a dict
    settings = Settings(**{**args.settings, **({"model": args.model} if args.model else {})})
    # Resolved (the default exported) once, here on the building node.
    folder = resolve_model_dir(settings.model, settings.cache_dir)
    deployment = _deployment(serve.ingress()(R3Replica)).options(
        name="R3Reward",
        **_scaling(args),
        max_ongoing_requests=args.max_ongoing_requests,
        ray_actor_options={"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
        health_check_period_s=args.health_check_period_s,
        health_check_timeout_s=30.0,
        graceful_shutdown_wait_loop_s=0.5,
        graceful_shutdown_timeout_s=settings.request_timeout_s + 5.0,
    )
    if args.ship_model:  # each replica opens its node's copy
        return deployment.bind(args.replica_args(None), _store_app(folder))
    return deployment.bind(args.replica_args(folder))
