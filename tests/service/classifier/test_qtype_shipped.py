"""The head that ships for the embedded default encoder (all-MiniLM-L6-v2)."""

from __future__ import annotations

import json
from pathlib import Path

from r3_service.classifier.features import FEATURE_NAMES
from r3_service.classifier.head import (
    HEAD_FILE,
    OPENENDED,
    load_head,
    load_shipped_head,
    shipped_head_path,
)

OBVIOUS = [
    ("Write a story about a dragon.", "OPENENDED"),
    ("Write a poem about the ocean at night.", "OPENENDED"),
    ("Can you suggest some fun activities for a rainy weekend?", "OPENENDED"),
    ("Classify the sentiment: I loved it.", "CONSTRAINED"),
    ("Translate 'good morning' into French.", "CONSTRAINED"),
    ("What is the capital of Australia?", "CONSTRAINED"),
    ("Sort these numbers in ascending order: 42, 7, 19, 3.", "CONSTRAINED"),
]


def test_shipped_head_file() -> None:
    path = shipped_head_path()
    assert path.is_file()
    assert path.stat().st_size < 300_000
    data = json.loads(path.read_text())
    for key in ("format_version", "encoder", "embedding_dim", "data_sha256", "labels",
                "metrics", "threshold", "coef", "feature_names"):  # fmt: skip
        assert key in data
    assert data["encoder"] == "all-MiniLM-L6-v2"
    assert data["embedding_dim"] == 384
    assert len(data["data_sha256"]) == 64
    assert data["feature_names"] == list(FEATURE_NAMES)
    head = load_shipped_head()
    metrics = head.metrics
    assert metrics["shifted_split"]["accuracy"] >= 0.8
    assert metrics["random_split"]["accuracy"] >= 0.8
    assert sum(map(sum, metrics["shifted_split"]["confusion_matrix"])) == 2000


def test_shipped_head_classifies_obvious_cases(minilm_dir: Path) -> None:
    """Through the real export: the service's ONNX encoder and the head copied next to it."""
    from r3_service.encoder import load_encoder

    assert (minilm_dir / HEAD_FILE).is_file()
    encoder = load_encoder(minilm_dir)
    head = load_head(minilm_dir, encoder=encoder.profile.name, embedding_dim=encoder.dim)
    texts = [text for text, _ in OBVIOUS]
    proba = head.predict_proba(encoder.encode(texts), texts)
    for (text, expected), p in zip(OBVIOUS, proba):
        assert (p >= head.threshold) == (expected == OPENENDED), (text, float(p))
