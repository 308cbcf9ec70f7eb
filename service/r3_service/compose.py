"""The composition root: encoder, embedding engine, classifier and scorer from ``Settings``.

``create_app`` (and through it every Ray Serve replica) builds its scorer here; nothing else
wires these parts together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from r3_service.classifier.runtime import QueryClassifier
from r3_service.config import Settings
from r3_service.encoder.base import Encoder
from r3_service.engine import EmbeddingEngine
from r3_service.metrics import Metrics
from r3_service.models import resolve_model_dir
from r3_service.scoring import RewardScorer

logger = logging.getLogger(__name__)

#: Builds the encoder; tests pass their own (fault injection, slow encoders).
EncoderFactory = Callable[[Settings], Encoder]


def load_default_encoder(settings: Settings) -> Encoder:
    """Resolve the model folder (exporting the default on first start) and open it."""
    from r3_service.encoder import load_encoder

    folder = resolve_model_dir(settings.model, settings.cache_dir)
    return load_encoder(folder, **settings.encoder_options())


def _refusal(exc: Exception) -> RuntimeError:
    return RuntimeError(
        f"query-type classifier unusable: {exc}. Refusing to start; set "
        "R3_ALLOW_NO_CLASSIFIER=true to score untyped items as OPENENDED"
    )


def check_classifier(settings: Settings, folder: Path) -> None:
    """Raise RuntimeError when the classifier is missing or unusable and that is not
    allowed (``R3_ALLOW_NO_CLASSIFIER``); opens no ONNX session, so it runs before the
    port opens."""
    from r3_service.classifier.runtime import check_classifier as check_files

    if settings.allow_no_classifier:
        return
    try:
        check_files(folder, settings.classifier)
    except Exception as exc:
        raise _refusal(exc) from exc


def load_query_classifier(
    settings: Settings, folder: Path, encoder: Encoder
) -> tuple[QueryClassifier | None, dict[str, Any]]:
    """The classifier for the model in ``folder``, and what /v1/info says about it.

    A missing or unusable classifier would score every untyped item as OPENENDED, a
    different reward formula: that needs ``R3_ALLOW_NO_CLASSIFIER=true``, else this raises.
    """
    from r3_service.classifier.runtime import load_classifier, require_classifier

    try:
        classifier = load_classifier(
            require_classifier(folder, settings.classifier),
            encoder,
            request_timeout_s=settings.request_timeout_s,
            **settings.encoder_options(classifier=True),
        )
    except Exception as exc:
        if not settings.allow_no_classifier:
            raise _refusal(exc) from exc
        logger.error("%s: untyped items are scored as OPENENDED (R3_ALLOW_NO_CLASSIFIER)", exc)
        return None, {"kind": "none", "untyped_items": "OPENENDED", "error": str(exc)}
    info = {**classifier.info(), "untyped_items": "classified"}
    logger.info("query-type classifier loaded from %s: %s", classifier.source, info)
    return classifier, info


def build_scorer(
    settings: Settings, metrics: Metrics, factory: EncoderFactory = load_default_encoder
) -> tuple[RewardScorer, dict[str, Any] | None]:
    """Open the encoder, the classifier of its folder (if it has one) and start them.

    Returns the running scorer and the classifier's description (None when the encoder
    has no folder, as with test encoders)."""
    encoder = factory(settings)
    encoder.warmup()
    device = getattr(encoder, "device", "cpu")
    engine = EmbeddingEngine(
        encoder, settings.engine_config(device), on_batch=metrics.observe_batch
    )
    classifier, info = None, None
    folder = getattr(encoder, "folder", None)
    if isinstance(folder, Path):
        classifier, info = load_query_classifier(settings, folder, encoder)
        if classifier is not None:
            classifier.counter = metrics.qtype_decisions
    scorer = RewardScorer(engine, classifier)
    scorer.start()
    return scorer, info
