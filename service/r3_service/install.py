"""Giving an exported folder its query-type classifier, at export time (``r3-export``,
deploy scripts): the shipped fine-tuned one for the embedded default, a head trained with
the folder's own encoder for any other. Serving never imports this module (it trains).
"""

from __future__ import annotations

import logging
from pathlib import Path

from r3_service.encoder.profile import EncoderProfile
from r3_service.models import install_shipped_classifier

logger = logging.getLogger(__name__)


def install_classifier(folder: Path, profile: EncoderProfile, *, data: Path | None = None) -> Path:
    """Give an exported folder the query-type classifier that matches its encoder.

    The one place that decides it (every export goes through here): the embedded default
    gets the shipped fine-tuned classifier (``install_shipped_classifier``); any other
    encoder gets a head trained on ``data`` (default: the packaged AlpacaFarm prompts) with
    that folder's own encoder. Returns the classifier's path.
    """
    from r3_service.classifier.build import shipped_adapter_path

    if data is None and shipped_adapter_path(profile.name).is_file():
        return install_shipped_classifier(Path(folder), profile)
    return _train_classifier(Path(folder), profile, data)


def _train_classifier(folder: Path, profile: EncoderProfile, data: Path | None) -> Path:
    from r3_service.classifier.head import HEAD_FILE
    from r3_service.classifier_training.splits import file_sha256, load_rows
    from r3_service.classifier_training.train import train_head
    from r3_service.data import ALPACAFARM_QTYPE
    from r3_service.encoder import load_encoder

    source = data or ALPACAFARM_QTYPE
    logger.info("training the query-type classifier for %s on %s", profile.name, source)
    encoder = load_encoder(folder, provider="cpu")
    texts, labels = load_rows(source)
    head = train_head(
        texts,
        labels,
        lambda batch: encoder.encode(batch),
        encoder=profile.name,
        data_sha256=file_sha256(source),
    )
    return head.save(folder / HEAD_FILE)


def install_default_head(folder: Path) -> None:
    """Former name (deploy scripts call it): installs the folder's query-type classifier."""
    install_classifier(folder, EncoderProfile.load(folder))
