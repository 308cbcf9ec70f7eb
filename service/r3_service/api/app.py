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
from r3_service.api.docs import install_docs
from r3_service.api.errors import install_error_handlers
from r3_service.api.middleware import (
    AuthMiddleware,
    BodyLimitMiddleware,
    DisconnectMiddleware,
    MetricsMiddleware,
)
from r3_service.api.routes import health, info, openrlhf, reward
from r3_service.api.state import ServiceState
from r3_service.config import Settings
from r3_service.encoder.base import Encoder
from r3_service.engine import EngineConfig, RewardEngine
from r3_service.models import resolve_model_dir

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
    max_batch_tokens, max_batch_size = settings.batch_limits(device)
    return EngineConfig(
        max_batch_tokens=max_batch_tokens,
        max_batch_size=max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queue_texts=settings.max_queue_texts,
        cache_bytes=settings.cache_bytes,
        request_timeout_s=settings.request_timeout_s,
    )


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


def _attach_classifier(state: ServiceState, engine: RewardEngine, folder: Path) -> None:
    """Load the folder's query-type head; without a usable one, untyped items are OPENENDED."""
    from r3_service.classifier.head import HEAD_FILE, load_head

    path = folder / HEAD_FILE
    if not path.is_file():
        logger.warning(
            "no query-type classifier in %s (train one with r3-train-classifier): "
            "items without a qtype are scored as OPENENDED",
            folder,
        )
        return
    try:
        head = load_head(path, encoder=engine.profile.name, embedding_dim=engine.encoder.dim)
    except (ValueError, KeyError, OSError) as exc:
        logger.error(
            "query-type classifier %s unusable (%s): untyped items are OPENENDED", path, exc
        )
        return
    engine.classifier = head
    state.classifier_info = head.info()
    logger.info("query-type classifier loaded: %s", state.classifier_info)


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
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
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
