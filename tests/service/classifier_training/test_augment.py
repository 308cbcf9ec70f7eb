"""Label-preserving rewrites of prompts for training (classifier_training.augment)."""

from __future__ import annotations

import random

from r3_service.classifier_training.augment import augment, augment_text


def test_rewrites_keep_the_input_and_change_the_form() -> None:
    rng = random.Random(0)
    text = "Classify the sentiment.\n\n### Input:\nI loved it."
    variants = [augment_text(text, rng) for _ in range(200)]
    assert all("i loved it" in v.lower() for v in variants)
    assert not any("### input" in v.lower() for v in variants)
    # question forms of an imperative task, and the input placed first, both occur
    assert any(v.lower().startswith(("can you", "could you", "would you")) for v in variants)
    assert any(v.lower().startswith(("i loved it", '"i loved it', "text:")) for v in variants)


def test_question_stays_a_question() -> None:
    rng = random.Random(1)
    for _ in range(50):
        assert "capital of france" in augment_text("What is the capital of France?", rng).lower()


def test_augment_reports_sources() -> None:
    texts = ["Write a poem.", "Name a color.\n\n### Input:\nsky"]
    variants, source = augment(texts, copies=3, seed=0)
    assert len(variants) == len(source) > 0
    assert set(source) <= {0, 1}
    for v, i in zip(variants, source):
        assert ("sky" in v.lower()) == (i == 1)
