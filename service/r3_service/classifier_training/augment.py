"""Label-preserving rewrites of prompts, for training classifiers (pure Python)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from r3_service.classifier.text import plain_prompt, split_alpaca

# -- rewrites --------------------------------------------------------------------------------
# Phrases differ on purpose from bench/classifier_baselines.py stress rewrites and from the
# out-of-source set, so those measure transfer rather than memorised templates.

_REQUESTS = (
    "Can you {}?", "Could you {}?", "Would you {}?", "Can you please {}?", "Please {}.",
    "I'd like you to {}.", "I need you to {}.", "I want you to {}.", "{}, please.",
    "Your task: {}.", "{} for me.", "Are you able to {}?", "Go ahead and {}.",
)  # fmt: skip
_QUESTION_WRAPS = (
    "Tell me: {}", "I'd like to know: {}", "{} Please answer.", "Question: {}",
    "Do you know: {}", "Here's my question. {}", "{}",
)  # fmt: skip
_BEFORE = (
    "Hello.", "Hi there!", "Good morning.", "I have a request.", "Here is something I need.",
    "This is for a class I'm taking.", "My colleague asked me about this.",
    "I'm working on a side project.", "This came up at work today.", "Hey.",
)  # fmt: skip
_AFTER = ("Thanks!", "Thank you.", "Appreciate it.", "Cheers.", "Thanks a lot!")
_INPUT_AFTER = ("\n\n", "\n", ": ", " ", ":\n", "\n\nText: ", "\nHere it is: ")
_INPUT_BEFORE = ("{g}\n\n{i}", "Text:\n{g}\n\n{i}", "{g}\n\n---\n{i}", '"{g}"\n{i}')


def _lower_first(text: str) -> str:
    if text[:1].isupper() and not text[1:2].isupper():
        return text[:1].lower() + text[1:]
    return text


def _as_request(instruction: str, rng: random.Random) -> str:
    """Imperative -> request ("Write a poem." -> "Could you write a poem?")."""
    body = _lower_first(instruction.strip().rstrip(".!:;"))
    return rng.choice(_REQUESTS).format(body)


def _as_wrapped_question(question: str, rng: random.Random) -> str:
    return rng.choice(_QUESTION_WRAPS).format(question.strip())


def augment_text(text: str, rng: random.Random) -> str:
    """One label-preserving rewrite of an (Alpaca or plain) prompt."""
    instruction, given = split_alpaca(text)
    if instruction.endswith("?"):
        if rng.random() < 0.6:
            instruction = _as_wrapped_question(instruction, rng)
    elif rng.random() < 0.7:
        instruction = _as_request(instruction, rng)
    if rng.random() < 0.25:
        instruction = rng.choice(_BEFORE) + rng.choice((" ", "\n")) + instruction
    if rng.random() < 0.15:
        instruction = instruction + " " + rng.choice(_AFTER)
    if given:
        if rng.random() < 0.3:
            out = rng.choice(_INPUT_BEFORE).format(g=given, i=instruction)
        else:
            out = instruction.rstrip(":") + rng.choice(_INPUT_AFTER) + given
    else:
        out = instruction
    if rng.random() < 0.2:
        out = out.lower()
    if rng.random() < 0.2:
        out = out.rstrip(".!?")
    return out


def augment(
    texts: Sequence[str],
    copies: int,
    seed: int = 0,
    *,
    rewrite: Callable[[str, random.Random], str] = augment_text,
    same: Callable[[str], str] = plain_prompt,
) -> tuple[list[str], list[int]]:
    """``copies`` rewrites of each text (``rewrite``: the fine-tuned classifier's by default):
    the rewrites and the index of their source. Empty rewrites and those equal to
    ``same(text)`` are dropped."""
    rng = random.Random(seed)
    out: list[str] = []
    source: list[int] = []
    for _ in range(copies):
        for i, text in enumerate(texts):
            variant = rewrite(text, rng)
            if variant.strip() and variant != same(text):
                out.append(variant)
                source.append(i)
    return out, source
