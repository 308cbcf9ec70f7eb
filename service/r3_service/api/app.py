"""The HTTP layer: a thin ``create_app()`` around the scorer (built in ``r3_service.compose``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
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
from r3_service.compose import EncoderFactory, build_scorer, check_classifier, load_default_encoder
from r3_service.config import Settings
from r3_service.models import is_exported

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None, *, encoder_factory: EncoderFactory | None = None
) -> FastAPI:
    """The ASGI app. The model loads in the background; /readyz turns green when warmed."""
    settings = settings or Settings()
    state = ServiceState(settings=settings)
    factory = encoder_factory or load_default_encoder

    async def load() -> None:
        try:
            scorer, info = await asyncio.to_thread(build_scorer, settings, state.metrics, factory)
        except Exception as exc:
            logger.exception("model failed to load")
            state.load_error = f"model failed to load: {type(exc).__name__}"
            return
        state.scorer = scorer
        state.classifier_info = info
        state.model_name = scorer.profile.name
        state.ready = True
        logger.info("ready: serving %s", state.model_name)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.model is not None and encoder_factory is None and is_exported(settings.model):
            # Refuse to start (before the port opens) without a usable classifier.
            await asyncio.to_thread(check_classifier, settings, Path(settings.model))
        task = asyncio.create_task(load())
        try:
            yield
        finally:
            state.ready = False
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if state.scorer is not None:
                await asyncio.to_thread(state.scorer.stop)

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
