"""The classifier shipped for the default encoder: a small adapter, built at first start."""

from __future__ import annotations

from pathlib import Path

import pytest

from r3_service.classifier.adapter import load_adapter
from r3_service.classifier.build import shipped_adapter_path
from r3_service.classifier.runtime import CLASSIFIER_DIR, FineTunedClassifier

OBVIOUS = [
    ("Write a story about a dragon.", "OPENENDED"),
    ("Can you suggest some fun activities for a rainy weekend?", "OPENENDED"),
    ("Explain in detail why the sky is blue.", "OPENENDED"),
    ("Classify the sentiment: I loved it.", "CONSTRAINED"),
    ("Translate 'good morning' into French.", "CONSTRAINED"),
    ("What is the capital of Australia?", "CONSTRAINED"),
    ("Sort these numbers in ascending order: 42, 7, 19, 3.", "CONSTRAINED"),
]


def test_shipped_adapter_is_small_and_describes_itself() -> None:
    path = shipped_adapter_path()
    assert path.stat().st_size < 1_000_000
    members, info = load_adapter(path)
    assert len(members) == info["members"] == 1 and info["ensemble_of"] == 3
    assert info["base"] == "all-MiniLM-L6-v2" and info["lora_rank"] == 8
    assert info["threshold"] == 0.5 and info["abstain_band"] == [0.35, 0.65]
    assert 1.0 < info["temperature"] < 5.0
    assert info["metrics"]["alpacafarm_shifted_5fold_accuracy"]["shifted"] >= 0.84
    assert info["metrics"]["out_of_source"]["n"] >= 300
    member = members[0]
    assert member["head.weight"].shape == (1, 384)
    assert sum(k.endswith(".lora_A") for k in member) == 6 * 6


async def test_built_classifier_classifies_obvious_cases(minilm_dir: Path) -> None:
    """Through the real first-start build: merged weights, ONNX export, ONNX Runtime."""
    classifier = FineTunedClassifier(minilm_dir / CLASSIFIER_DIR)
    classifier.start()
    try:
        texts = [text for text, _ in OBVIOUS]
        proba = await classifier.probabilities(texts, classifier.engine)
        again = await classifier.probabilities(texts, classifier.engine)
    finally:
        classifier.stop()
    assert list(again) == list(proba)
    assert classifier.engine.cache.hits >= len(texts)
    for (text, expected), p in zip(OBVIOUS, proba):
        assert (p >= classifier.threshold) == (expected == "OPENENDED"), (text, float(p))


def test_earlier_export_without_classifier_gets_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache exported by an earlier version (encoder only) gets the classifier built once."""
    from r3_service import models
    from r3_service.encoder.profile import PROFILE_FILE

    target = models.default_export_dir(tmp_path)
    target.mkdir(parents=True)
    models.EncoderProfile(name="all-MiniLM-L6-v2").save(target)
    assert (target / PROFILE_FILE).is_file()
    built: list[Path] = []

    def build(folder: Path, profile: object) -> None:
        (folder / CLASSIFIER_DIR).mkdir()
        built.append(folder)

    monkeypatch.setattr(models, "install_shipped_classifier", build)
    assert models.ensure_default_model(tmp_path) == target
    assert models.ensure_default_model(tmp_path) == target
    assert built == [target]
