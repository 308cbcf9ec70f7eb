from __future__ import annotations

import json
import random
import zlib
from pathlib import Path

import numpy as np
import pytest

from r3_service.classifier_training.calibration import fit_temperature
from r3_service.classifier_training.splits import group_folds, load_rows, random_folds, task_family
from r3_service.classifier_training.train import (
    TrainConfig,
    augment,
    fit_logistic,
    train_head,
)

DIM = 48


def hashed_bow(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in encoder: hashed bag of words, mean over tokens."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        words = text.lower().split() or [""]
        for word in words:
            out[row, zlib.crc32(word.strip(".,?!:").encode()) % DIM] += 1.0
        out[row] /= len(words)
    return out


OPEN_TEMPLATES = [
    "Write a {} about {}.",
    "Compose a {} about {}.",
    "Describe {} in a {}.",
    "Tell me a {} about {}.",
]
CLOSED_TEMPLATES = [
    "Classify the sentiment of this review about {}: it was {}.",
    "Translate the word {} into French, then {}.",
    "What is the capital of {}? Answer {}.",
    "Correct the spelling of {} in: {}.",
]
FORMS = ["story", "poem", "essay", "song"]
TOPICS = ["dragons", "the sea", "a city", "winter", "robots", "friendship", "a garden", "music"]


def synthetic_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 2:
            text = rng.choice(OPEN_TEMPLATES).format(rng.choice(FORMS), rng.choice(TOPICS))
            rows.append({"input": text, "qtype": "OPENENDED"})
        else:
            text = rng.choice(CLOSED_TEMPLATES).format(
                rng.choice(TOPICS), rng.choice(["good", "x"])
            )
            rows.append({"input": text, "qtype": "CONSTRAINED"})
    return rows


def test_fit_logistic_separates() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = (x[:, 0] - 0.5 * x[:, 1] > 0).astype(np.int64)
    coef, intercept = fit_logistic(x, y, np.full(5, 1e-3))
    assert np.mean(((x @ coef + intercept) > 0) == y) > 0.97
    strong, _ = fit_logistic(x, y, np.full(5, 10.0))
    assert np.linalg.norm(strong) < np.linalg.norm(coef)


def test_fit_temperature_shrinks_overconfident_logits() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=2000)
    true_logit = np.where(y == 1, 1.0, -1.0) + rng.normal(size=2000)
    assert fit_temperature(10.0 * true_logit, y) > 3.0
    assert 0.5 < fit_temperature(true_logit, y) < 2.0


def test_group_folds_keep_groups_together() -> None:
    groups = ["a"] * 5 + ["b"] * 3 + ["c"] * 4 + ["d"] * 2 + ["e"]
    folds = group_folds(groups, 3)
    for g in set(groups):
        assert len({int(f) for f, h in zip(folds, groups) if h == g}) == 1
    assert set(folds.tolist()) == {0, 1, 2}
    labels = np.array([0, 1] * 10)
    rf = random_folds(labels, 5)
    assert np.bincount(rf).tolist() == [4] * 5


def test_task_family() -> None:
    assert task_family("Write a poem.") == "write"
    assert task_family("Please, could you classify this?") == "classify"
    assert task_family("What is 2+2?") == "what"


def test_augment_keeps_source_index_and_input() -> None:
    texts = ["Classify the sentiment.\n\n### Input:\nI loved it.", "Write a poem."]
    variants, source = augment(texts, copies=3, seed=0)
    assert len(variants) == len(source) > 0
    for variant, i in zip(variants, source):
        if i == 0:
            assert "I loved it." in variant


def test_training_learns_a_synthetic_set() -> None:
    rows = synthetic_rows(120, seed=0)
    texts = [r["input"] for r in rows]
    labels = np.array([r["qtype"] == "OPENENDED" for r in rows], dtype=np.int64)
    head = train_head(texts, labels, hashed_bow, encoder="hashed-bow", config=TrainConfig(folds=3))
    test = synthetic_rows(60, seed=1)
    test_texts = [r["input"] for r in test]
    predicted = head.predict(hashed_bow(test_texts), test_texts)
    accuracy = np.mean([p == r["qtype"] for p, r in zip(predicted, test)])
    assert accuracy >= 0.95
    assert head.metrics["shifted_split"]["accuracy"] >= 0.9
    assert head.embedding_dim == DIM


def test_embedding_part_learns_what_features_cannot_see() -> None:
    # Same surface form for both classes; only the topic word (seen by the embedding) differs.
    rng = random.Random(0)
    pos = [f"Talk about {w} now." for w in ["zebra", "quartz", "violet", "maple"]]
    neg = [f"Talk about {w} now." for w in ["anchor", "copper", "saffron", "walnut"]]
    texts = [rng.choice(pos) for _ in range(60)] + [rng.choice(neg) for _ in range(60)]
    labels = np.array([1] * 60 + [0] * 60)
    head = train_head(
        texts,
        labels,
        hashed_bow,
        encoder="hashed-bow",
        config=TrainConfig(folds=3, l2_embedding=1e-3, augment_copies=0),
    )
    proba = head.predict_proba(hashed_bow(pos + neg), pos + neg)
    assert np.all(proba[:4] > 0.5) and np.all(proba[4:] < 0.5)


def test_needs_both_labels() -> None:
    with pytest.raises(ValueError, match="both"):
        train_head(["Write a poem."] * 4, np.ones(4, dtype=np.int64), hashed_bow, encoder="x")


def test_load_rows_validates(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"input": "x", "qtype": "MAYBE"}]))
    with pytest.raises(ValueError, match="qtype"):
        load_rows(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"input": "x", "qtype": "openended"}]))
    texts, labels = load_rows(good)
    assert texts == ["x"] and labels.tolist() == [1]
