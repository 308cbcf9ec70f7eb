from __future__ import annotations

import numpy as np
import pytest

from r3_service.classifier.features import (
    FEATURE_NAMES,
    query_features,
    split_query,
    strip_preamble,
    text_features,
)


def _on(text: str) -> set[str]:
    return {name for name, value in zip(FEATURE_NAMES, query_features(text)) if value}


@pytest.mark.parametrize(
    ("text", "instruction", "given"),
    [
        ("Write a story about a dragon.", "Write a story about a dragon.", ""),
        ("Classify this.\n\n### Input:\nI loved it.", "Classify this.", "I loved it."),
        ("Classify this.\nInput: I loved it.", "Classify this.", "I loved it."),
        ("List five foods.\n\n### Input:\n<noinput>", "List five foods.", ""),
        ("Summarize the text:\n\nThe council met.", "Summarize the text:", "The council met."),
        (
            "Translate to French: Where is the station?",
            "Translate to French:",
            "Where is the station?",
        ),
        ("Context: for school.\n\nWrite a poem.", "Write a poem.", "Context: for school."),
        ("Hi! Could you please write a poem?", "write a poem?", ""),
    ],
)
def test_split_query(text: str, instruction: str, given: str) -> None:
    assert split_query(text) == (instruction, given)


def test_long_pasted_text_then_short_question() -> None:
    pasted = " ".join(["word"] * 80)
    instruction, given = split_query(pasted + "\n\nWhat is the main idea of this text?")
    assert instruction == "What is the main idea of this text?"
    assert given == pasted


def test_strip_preamble() -> None:
    assert strip_preamble("Hey, quick question: can you help me translate this") == "translate this"
    assert strip_preamble("I was wondering if you could explain X") == "explain X"
    assert strip_preamble("Thanks!") == "Thanks!"  # nothing left: keep the text


def test_feature_flags() -> None:
    assert {"lead_open_verb", "creative_noun"} <= _on("Write a story about a dragon.")
    assert {"lead_closed_verb", "closed_noun", "has_input"} <= _on(
        "Classify the sentiment: I loved it."
    )
    assert {"starts_wh_fact", "ends_with_question", "math"} <= _on("What is 15% of 80?")
    assert {"lead_closed_verb", "given_text"} <= _on(
        "Given a sentence, correct the grammar.\n\n### Input:\nShe go home."
    )
    assert {"polite_request", "lead_open_verb"} <= _on("hey can u suggest some ideas for a party")
    assert "code" in _on("Write a Python function that reverses a string.")


def test_text_features_matrix() -> None:
    x = text_features(["Write a poem.", "", "Name the capital of France."])
    assert x.shape == (3, len(FEATURE_NAMES))
    assert x.dtype == np.float32
    assert np.all(np.isfinite(x))
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
