"""Prompts as a classifier sees them: the Alpaca split, plain prompts, head and tail."""

from __future__ import annotations

import pytest

from r3_service.classifier.text import head_tail, plain_prompt, split_alpaca

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


def test_head_tail_keeps_both_ends() -> None:
    ids = list(range(100))
    assert head_tail(ids, 10) == [0, 1, 2, 3, 4, 95, 96, 97, 98, 99]
    assert head_tail(ids[:8], 10) == ids[:8]
    assert len(head_tail(ids, 11)) == 11
