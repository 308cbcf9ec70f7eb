"""The HTTP layer: a thin ``create_app()`` around the engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from r3_service import __version__
from r3_service.api.body import ElementLimits
from r3_service.api.docs import install_docs
from r3_service.api.errors import install_error_handlers
from r3_service.api.middleware import (
    AuthMiddleware,
    BodyMiddleware,
    DisconnectMiddleware,
    MetricsMiddleware,
)
from r3_service.api.routes import health, info, openrlhf, reward
from r3_service.api.state import ServiceState
from r3_service.config import Settings
from r3_service.encoder.base import Encoder
from r3_service.engine import EngineConfig, RewardEngine
from r3_service.models import is_exported, resolve_model_dir

logger = logging.getLogger(__name__)

#: Builds the encoder; tests pass their own (fault injection, slow encoders).
EncoderFactory = Callable[[Settings], Encoder]


def load_default_encoder(settings: Settings) -> Encoder:
    """Resolve the model folder (exporting the default on first start) and open it."""
    from r3_service.encoder import load_encoder

    folder = resolve_model_dir(settings.model, settings.cache_dir)
    return load_encoder(
        folder, provider=settings.provider, intra_op_threads=settings.intra_op_threads
    )


def engine_config(settings: Settings, device: str) -> EngineConfig:
    return settings.engine_config(device)


def _build_engine(state: ServiceState, factory: EncoderFactory) -> RewardEngine:
    encoder = factory(state.settings)
    encoder.warmup()
    device = getattr(encoder, "device", "cpu")
    engine = RewardEngine(
        encoder, engine_config(state.settings, device), on_batch=state.metrics.observe_batch
    )
    folder = getattr(encoder, "folder", None)
    if isinstance(folder, Path):
        _attach_classifier(state, engine, folder)
    engine.start()
    return engine


def _check_classifier(settings: Settings, folder: Path) -> None:
    """Raise RuntimeError when the classifier is missing or unusable and that is not allowed."""
    from r3_service.classifier.runtime import check_classifier

    if settings.allow_no_classifier:
        return
    try:
        check_classifier(folder, settings.classifier)
    except Exception as exc:
        raise RuntimeError(
            f"query-type classifier unusable: {exc}. Refusing to start; set "
            "R3_ALLOW_NO_CLASSIFIER=true to score untyped items as OPENENDED"
        ) from exc


def _attach_classifier(state: ServiceState, engine: RewardEngine, folder: Path) -> None:
    """Load the query-type classifier; without one, refuse unless allow_no_classifier.

    A missing or unusable classifier would score every untyped item as OPENENDED, a
    different reward formula: that needs ``R3_ALLOW_NO_CLASSIFIER=true``.
    """
    from prometheus_client import Counter

    from r3_service.classifier.runtime import find_classifier, load_classifier

    settings = state.settings
    path = find_classifier(folder, settings.classifier)
    try:
        if path is None:
            raise FileNotFoundError(
                f"no query-type classifier in {folder} (train one with r3-train-classifier, "
                "or set R3_CLASSIFIER)"
            )
        classifier = load_classifier(
            path,
            engine.encoder,
            request_timeout_s=settings.request_timeout_s,
            provider=settings.provider,
            intra_op_threads=settings.intra_op_threads,
        )
    except Exception as exc:
        if not settings.allow_no_classifier:
            raise RuntimeError(
                f"query-type classifier unusable: {exc}. Refusing to start; set "
                "R3_ALLOW_NO_CLASSIFIER=true to score untyped items as OPENENDED"
            ) from exc
        logger.error("%s: untyped items are scored as OPENENDED (R3_ALLOW_NO_CLASSIFIER)", exc)
        state.classifier_info = {"kind": "none", "untyped_items": "OPENENDED", "error": str(exc)}
        return
    classifier.counter = Counter(
        "r3_qtype_decisions",
        "Query types decided by the classifier for untyped items; 'uncertain' counts those "
        "inside the abstain band (scored by the blend rule).",
        ["decision"],
        registry=state.metrics.registry,
    )
    classifier.register_metrics(state.metrics.registry)
    classifier.start()
    engine.classifier = classifier
    state.classifier_info = {**classifier.info(), "untyped_items": "classified"}
    logger.info(
        "query-type classifier loaded from %s: %s", classifier.source, state.classifier_info
    )


def create_app(
    settings: Settings | None = None, *, encoder_factory: EncoderFactory | None = None
) -> FastAPI:
    """The ASGI app. The model loads in the background; /readyz turns green when warmed."""
    settings = settings or Settings()
    state = ServiceState(settings=settings)
    factory = encoder_factory or load_default_encoder

    async def load() -> None:
        try:
            engine = await asyncio.to_thread(_build_engine, state, factory)
        except Exception as exc:
            logger.exception("model failed to load")
            state.load_error = f"model failed to load: {type(exc).__name__}"
            return
        state.engine = engine
        state.model_name = engine.profile.name
        state.ready = True
        logger.info("ready: serving %s", state.model_name)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.model is not None and encoder_factory is None and is_exported(settings.model):
            # Refuse to start (before the port opens) without a usable classifier.
            await asyncio.to_thread(_check_classifier, settings, Path(settings.model))
        task = asyncio.create_task(load())
        try:
            yield
        finally:
            state.ready = False
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if state.engine is not None:
                await asyncio.to_thread(state.engine.stop)

    app = FastAPI(
        title="R3 reward service",
        version=__version__,
        description="Regularized Relevance Reward (arXiv 2402.03469) for preference-free RLHF.",
        lifespan=lifespan,
        docs_url=None,  # served by install_docs, from packaged assets
        redoc_url=None,
    )
    install_docs(app)
    app.state.r3 = state
    install_error_handlers(app)
    app.include_router(reward.router)
    app.include_router(openrlhf.router)
    app.include_router(info.router)
    app.include_router(health.router)
    # Added last = outermost: metrics see every answer, auth runs before the body is read.
    app.add_middleware(DisconnectMiddleware)
    app.add_middleware(
        BodyMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
        max_depth=settings.max_json_depth,
        max_chars=settings.max_chars_per_text,
        limits=ElementLimits(
            max_items=settings.max_items_per_request,
            max_item_elements=settings.max_item_elements,
            max_values=settings.max_json_values,
        ),
    )
    if settings.api_key_list:
        open_paths = {"/healthz", "/readyz"} | (set() if settings.metrics_auth else {"/metrics"})
        app.add_middleware(
            AuthMiddleware, keys=settings.api_key_list, open_paths=frozenset(open_paths)
        )
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
