from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from r3_service.classifier.features import FEATURE_NAMES
from r3_service.classifier.head import HEAD_FILE, QTypeHead, load_head, prepare_embeddings

DIM = 8
WIDTH = DIM + len(FEATURE_NAMES)


def make_head(**overrides: object) -> QTypeHead:
    rng = np.random.default_rng(0)
    kwargs: dict[str, object] = dict(
        encoder="toy",
        embedding_dim=DIM,
        mean=rng.normal(size=WIDTH),
        scale=rng.uniform(0.5, 2.0, size=WIDTH),
        coef=rng.normal(size=WIDTH),
        intercept=0.1,
        temperature=1.5,
        data_sha256="ab" * 32,
        metrics={"shifted_split": {"accuracy": 0.8}, "random_split": {"accuracy": 0.85}},
    )
    kwargs.update(overrides)
    return QTypeHead(**kwargs)  # type: ignore[arg-type]


def test_predict_proba_range_and_labels() -> None:
    head = make_head()
    texts = ["Write a poem.", "Classify: good.", "What is 2+2?"]
    emb = np.random.default_rng(1).normal(size=(3, DIM)).astype(np.float32)
    proba = head.predict_proba(emb, texts)
    assert proba.shape == (3,)
    assert np.all((proba > 0) & (proba < 1))
    np.testing.assert_allclose(head(emb, texts), proba)
    labels = head.predict(emb, texts)
    assert labels == ["OPENENDED" if p >= 0.5 else "CONSTRAINED" for p in proba]


def test_round_trip(tmp_path: Path) -> None:
    head = make_head()
    path = head.save(tmp_path)  # a folder -> qtype_head.json inside
    assert path == tmp_path / HEAD_FILE
    again = load_head(tmp_path)
    emb = np.random.default_rng(2).normal(size=(2, DIM))
    texts = ["Write a story.", "Name a color."]
    np.testing.assert_allclose(
        again.predict_proba(emb, texts), head.predict_proba(emb, texts), rtol=1e-5
    )
    data = json.loads(path.read_text())
    assert data["format_version"] == 1
    assert data["labels"] == ["CONSTRAINED", "OPENENDED"]
    assert again.info()["shifted_split_accuracy"] == 0.8


def test_refuses_mismatches(tmp_path: Path) -> None:
    head = make_head()
    with pytest.raises(ValueError, match="expects 8-d"):
        head.predict_proba(np.zeros((1, DIM + 1)), ["x"])
    with pytest.raises(ValueError, match="texts"):
        head.predict_proba(np.zeros((2, DIM)), ["x"])
    path = head.save(tmp_path / "h.json")
    with pytest.raises(ValueError, match="encoder"):
        load_head(path, encoder="other")
    with pytest.raises(ValueError, match="embeddings"):
        load_head(path, embedding_dim=384)
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="format_version"):
        load_head(path)
    with pytest.raises(ValueError, match="shape"):
        make_head(coef=np.zeros(3))


def test_prepare_embeddings() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(prepare_embeddings(x, "l2"), [[0.6, 0.8], [0.0, 0.0]])
    np.testing.assert_allclose(prepare_embeddings(x, "none"), x)
    with pytest.raises(ValueError):
        prepare_embeddings(x, "cosine")
