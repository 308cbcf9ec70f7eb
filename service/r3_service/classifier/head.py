"""The query-type head: a calibrated logistic model on the query embedding plus text features.

Runtime needs numpy only. The head file (JSON) holds the weights, the feature
names, the encoder it was trained for, the training data's hash and the
validation metrics.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from r3_service.classifier.features import FEATURE_NAMES, FEATURES_VERSION, text_features

logger = logging.getLogger(__name__)

HEAD_FILE = "qtype_head.json"
FORMAT_VERSION = 1
OPENENDED = "OPENENDED"
CONSTRAINED = "CONSTRAINED"
LABELS: tuple[str, str] = (CONSTRAINED, OPENENDED)


def prepare_embeddings(embeddings: np.ndarray, norm: str) -> np.ndarray:
    """Embeddings as the head consumes them: float64, L2-normalised when ``norm == "l2"``."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got shape {x.shape}")
    if norm == "l2":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    elif norm != "none":
        raise ValueError(f"unknown embedding norm {norm!r}")
    return x


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, as float64 (tanh form: no overflow for large |z|)."""
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64))))


@dataclass
class QTypeHead:
    """Logistic head: P(OPENENDED) = sigmoid(((x - mean) / scale) . coef + intercept) / T).

    ``x`` is the prepared embedding followed by the text features named in
    ``feature_names``; ``T`` is ``temperature``.
    """

    encoder: str
    embedding_dim: int
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    temperature: float = 1.0
    threshold: float = 0.5
    embedding_norm: str = "l2"
    feature_names: tuple[str, ...] = FEATURE_NAMES
    features_version: int = FEATURES_VERSION
    labels: tuple[str, str] = LABELS
    data_sha256: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        width = self.embedding_dim + len(self.feature_names)
        for name in ("mean", "scale", "coef"):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.shape != (width,):
                raise ValueError(f"{name} has shape {value.shape}, expected ({width},)")
            setattr(self, name, value)
        if tuple(self.feature_names) != FEATURE_NAMES or self.features_version != FEATURES_VERSION:
            raise ValueError("head was trained with other text features than this version has")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")

    # -- inference -------------------------------------------------------------------------

    def design(self, embeddings: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """Raw (unstandardised) inputs: prepared embeddings next to the text features."""
        emb = prepare_embeddings(embeddings, self.embedding_norm)
        if emb.shape[1] != self.embedding_dim:
            raise ValueError(
                f"head for {self.encoder} expects {self.embedding_dim}-d embeddings, "
                f"got {emb.shape[1]}"
            )
        if emb.shape[0] != len(texts):
            raise ValueError(f"{emb.shape[0]} embeddings for {len(texts)} texts")
        return np.hstack([emb, text_features(texts).astype(np.float64)])

    def decision_function(self, embeddings: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """Uncalibrated logits of OPENENDED."""
        x = (self.design(embeddings, texts) - self.mean) / self.scale
        return np.asarray(x @ self.coef + self.intercept, dtype=np.float64)

    def predict_proba(self, embeddings: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """Calibrated P(OPENENDED) for each query, float64 of shape (n,)."""
        return sigmoid(self.decision_function(embeddings, texts) / self.temperature)

    def __call__(self, embeddings: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """Same as :meth:`predict_proba` (the engine's classifier signature)."""
        return self.predict_proba(embeddings, texts)

    def predict(self, embeddings: np.ndarray, texts: Sequence[str]) -> list[str]:
        """``"OPENENDED"`` or ``"CONSTRAINED"`` for each query."""
        proba = self.predict_proba(embeddings, texts)
        return [OPENENDED if p >= self.threshold else CONSTRAINED for p in proba]

    def info(self) -> dict[str, Any]:
        """A short summary for logs and the service's info endpoint."""
        shifted = self.metrics.get("shifted_split", {})
        random_split = self.metrics.get("random_split", {})
        return {
            "encoder": self.encoder,
            "format_version": self.format_version,
            "data_sha256": self.data_sha256,
            "threshold": self.threshold,
            "temperature": round(self.temperature, 4),
            "shifted_split_accuracy": shifted.get("accuracy"),
            "random_split_accuracy": random_split.get("accuracy"),
        }

    # -- serialisation ---------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; weights rounded to 7 significant digits."""
        data = asdict(self)
        for name in ("mean", "scale", "coef"):
            data[name] = [float(f"{v:.7g}") for v in getattr(self, name)]
        data["feature_names"] = list(self.feature_names)
        data["labels"] = list(self.labels)
        data["model"] = "logistic"
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QTypeHead:
        """Inverse of :meth:`to_json`."""
        data = dict(data)
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported qtype head format_version {version!r}")
        model = data.pop("model", "logistic")
        if model != "logistic":
            raise ValueError(f"unsupported qtype head model {model!r}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["feature_names"] = tuple(known.get("feature_names", FEATURE_NAMES))
        known["labels"] = tuple(known.get("labels", LABELS))
        return cls(**known)

    def save(self, path: Path | str) -> Path:
        """Write the head as JSON to ``path`` (a file, or a model folder -> ``qtype_head.json``)."""
        target = Path(path)
        if target.is_dir():
            target = target / HEAD_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        logger.info("wrote query-type head to %s", target)
        return target


def load_head(
    path: Path | str, *, encoder: str | None = None, embedding_dim: int | None = None
) -> QTypeHead:
    """Load a head from a JSON file, or from ``qtype_head.json`` inside a model folder.

    With ``encoder`` / ``embedding_dim`` given, a head trained for another encoder is
    refused (ValueError).
    """
    source = Path(path)
    if source.is_dir():
        source = source / HEAD_FILE
    head = QTypeHead.from_json(json.loads(source.read_text()))
    if encoder is not None and head.encoder != encoder:
        raise ValueError(f"{source}: head trained for encoder {head.encoder!r}, not {encoder!r}")
    if embedding_dim is not None and head.embedding_dim != embedding_dim:
        raise ValueError(
            f"{source}: head expects {head.embedding_dim}-d embeddings, "
            f"the encoder gives {embedding_dim}"
        )
    return head
