"""Prompts as users type them, and the training rewrites."""

from __future__ import annotations

import random

import pytest

from r3_service.classifier.text import head_tail, plain_prompt, split_alpaca
from r3_service.classifier_training.augment import augment, augment_text

ALPACA = (
    "Below is an instruction that describes a task. Write a response.\n\n"
    "### Instruction:\nClassify the sentiment.\n\n### Input:\nI loved it.\n\n### Response:"
)


@pytest.mark.parametrize(
    ("text", "instruction", "given"),
    [
        (
            "Classify the sentiment.\n\n### Input:\nI loved it.",
            "Classify the sentiment.",
            "I loved it.",
        ),
        (ALPACA, "Classify the sentiment.", "I loved it."),
        ("List five foods.\n\n### Input:\n<noinput>", "List five foods.", ""),
        ("Write a poem about the sea.", "Write a poem about the sea.", ""),
        ("### Instruction:\nName a color.\n\n### Response:\nRed", "Name a color.", ""),
    ],
)
def test_split_alpaca(text: str, instruction: str, given: str) -> None:
    assert split_alpaca(text) == (instruction, given)


def test_plain_prompt_writes_the_input_as_a_paragraph() -> None:
    assert plain_prompt(ALPACA) == "Classify the sentiment.\n\nI loved it."
    assert plain_prompt("What is 2+2?") == "What is 2+2?"


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


def test_head_tail_keeps_both_ends() -> None:
    ids = list(range(100))
    assert head_tail(ids, 10) == [0, 1, 2, 3, 4, 95, 96, 97, 98, 99]
    assert head_tail(ids[:8], 10) == ids[:8]
    assert len(head_tail(ids, 11)) == 11
