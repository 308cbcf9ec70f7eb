"""Query text as users type it, and label-preserving rewrites for training (pure Python).

AlpacaFarm stores a prompt as an instruction and an optional ``### Input:`` block.
No user sends that marker, so the classifier trains on, and serves, the plain text:
the instruction, a blank line, then the input. :func:`augment_text` rewrites a
prompt into other forms of the same task (a request in question form, chat-style,
a context sentence first, the input before the instruction, lower case), so that
the model learns the task and not the phrasing.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

# The input and response markers are searched from their "#"s; the whitespace before them
# goes with ``rstrip`` (a leading ``\s*`` searched at every place of a long run of
# whitespace is quadratic: 40,000 spaces took 40 s).
_INPUT_BLOCK = re.compile(r"#{2,4}\s*Input\s*:\s*", re.IGNORECASE)
_INSTRUCTION_MARK = re.compile(r"^\s*#{2,4}\s*Instruction\s*:\s*", re.IGNORECASE)
_RESPONSE_MARK = re.compile(r"#{2,4}\s*Response\s*:", re.IGNORECASE)
_EMPTY_INPUT = re.compile(r"^\W*(?:no\s*input|none|n/?a|empty)\W*$", re.IGNORECASE)
_PREAMBLE = re.compile(
    r"^Below is an instruction that describes a task.*?(?=#{2,4}\s*Instruction)",
    re.IGNORECASE | re.DOTALL,
)


def head_tail(ids: Sequence[int], max_length: int) -> list[int]:
    """Keep the first and last ``max_length // 2`` tokens of a longer sequence.

    The task is usually stated at the start and sometimes asked at the end, after a
    pasted text; both ends survive. ``ids`` include [CLS] ... [SEP].
    """
    ids = list(ids)
    if len(ids) <= max_length:
        return ids
    head = max_length // 2
    return ids[:head] + ids[len(ids) - (max_length - head) :]


def split_alpaca(text: str) -> tuple[str, str]:
    """(instruction, input) of an Alpaca-format prompt; ``input`` is "" without a block.

    The template's preamble and ``### Instruction:`` / ``### Response:`` markers are
    dropped; a placeholder input such as ``<noinput>`` counts as none.
    """
    body = _INSTRUCTION_MARK.sub("", _PREAMBLE.sub("", text))
    response = _RESPONSE_MARK.search(body)
    if response:  # the marker, the whitespace before it and everything after it go
        body = body[: response.start()].rstrip()
    block = _INPUT_BLOCK.search(body)
    instruction = (body[: block.start()] if block else body).strip()
    given = body[block.end() :].strip() if block else ""
    if _EMPTY_INPUT.match(given):
        given = ""
    return instruction, given


def plain_prompt(text: str) -> str:
    """The prompt as a user types it: the Alpaca input block becomes a paragraph."""
    instruction, given = split_alpaca(text)
    return f"{instruction}\n\n{given}" if given else instruction


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
