"""Query text as a classifier sees it (pure Python): the contract between training and serving.

AlpacaFarm stores a prompt as an instruction and an optional ``### Input:`` block.
No user sends that marker, so the classifier trains on, and serves, the plain text:
the instruction, a blank line, then the input (``plain_prompt``), cut to its first and last
tokens when long (``head_tail``). Training's rewrites are in
:mod:`r3_service.classifier_training.augment`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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
