"""No pattern or parse on the request path is super-linear in the request's text.

Every function that reads request text (prompt templates, Alpaca normalisation, stop
strings, tokens, OpenRLHF labels, the query-type classifier's features and its prompt
cleaning, the body checks) is fed adversarial strings, long runs of partial markers, and
must take at most ``US_PER_CHAR`` microseconds per character. The bound is generous for
linear code (a few hundredths of a microsecond per character on the 2-core machine) and far
below what the quadratic patterns took: ``"[INST]" * 16_666`` (100,000 characters) in the
Llama-2 pattern 190 us per character, 40,000 spaces in the classifier's trailer pattern
2,900 us per character.

The rewritten matchers give what the old regexes gave; hypothesis checks them against the
old patterns (kept here as the reference) on short strings, where those are fast.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r3_service.api.body import check_json_body
from r3_service.api.errors import APIError
from r3_service.api.routes.openrlhf import parse_label, response_of
from r3_service.classifier import features
from r3_service.classifier.features import query_features, split_query, strip_preamble
from r3_service.classifier.text import split_alpaca
from r3_service.reward.text import (
    alpaca_query,
    cut_response,
    user_text_from_prompt,
    wordpunct_tokenize,
)

#: Characters of each adversarial string.
LENGTH = 100_000
#: Microseconds per character allowed (linear code took 0.05 to 2.5 on the 2-core machine).
US_PER_CHAR = 25.0

#: Pieces of markers, whole and cut short, and the runs that made regexes backtrack.
PIECES = (
    "[INST]", "[/INST", "<<SYS>>", "<</SYS", "<|im_start|>", "<|im_start|>user", "<|im_end|",
    "<|start_header_id|>", "<|start_header_id|>user", "<|end_header_id|>", "<|eot_id|",
    "<|user|>", "<|assistant|", "### Input:", "### Instruction:", "### Response:", "##", "#",
    "\n", " ", "\t", "\n ", ". ", "! ", ") ", "thanks ", "thank you", "hi ", "please ",
    "input", "input :", ":", ": ", "\\u", "\\ud800", '{"', '"', "[", "{", "a", "1", "?", "</s>",
)  # fmt: skip


def per_char_us(fn: Callable[[str], object], text: str) -> float:
    """Microseconds per character of ``fn(text)``; a 4xx for bad input is an answer too (a
    label that starts with "{" and is not JSON is refused, as it should be)."""
    started = time.perf_counter()
    try:
        fn(text)
    except APIError as exc:
        assert 400 <= exc.status < 500, exc
    return (time.perf_counter() - started) / len(text) * 1e6


REQUEST_TEXT_FUNCTIONS: dict[str, Callable[[str], object]] = {
    "user_text_from_prompt": user_text_from_prompt,
    "alpaca_query": alpaca_query,
    "cut_response": cut_response,
    "wordpunct_tokenize": wordpunct_tokenize,
    "response_of": lambda text: response_of(text + "x", text[: len(text) // 2] + "y"),
    "parse_label": lambda text: parse_label(text, 0),
    "classifier_features": query_features,
    "classifier_prompt": split_alpaca,
    "body_checks": lambda text: check_json_body(
        json.dumps({"query": [text]}).encode(), 32, 10 * LENGTH
    ),
}


@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("name", sorted(REQUEST_TEXT_FUNCTIONS))
def test_runs_of_one_piece_take_linear_time(name: str, piece: str) -> None:
    text = "a" + piece * (LENGTH // len(piece)) + "z"
    assert per_char_us(REQUEST_TEXT_FUNCTIONS[name], text) < US_PER_CHAR, (name, piece)


@settings(max_examples=20, deadline=None, database=None)
@given(pattern=st.lists(st.sampled_from(PIECES), min_size=1, max_size=6))
def test_runs_of_mixed_pieces_take_linear_time(pattern: list[str]) -> None:
    unit = "".join(pattern)
    text = unit * (LENGTH // len(unit) + 1)
    for name, fn in REQUEST_TEXT_FUNCTIONS.items():
        assert per_char_us(fn, text) < US_PER_CHAR, (name, pattern)


def test_stop_strings_near_misses_take_linear_time() -> None:
    """64 caller stop strings of 99 characters, each missing by its last one."""
    stops = ["a" * 98 + chr(ord("b") + i) for i in range(64)]
    text = "a" * 50_000
    assert per_char_us(lambda t: cut_response(t, stops), text) < US_PER_CHAR


# -- the rewritten matchers against the regexes they replace --------------------------------

OLD_TEMPLATES = (
    re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>|$)", re.S),
    re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n*(.*?)(?:<\|eot_id\|>|$)", re.S),
    re.compile(r"<\|(user|assistant|system)\|>\n?(.*?)(?=<\|(?:user|assistant|system)\|>|$)", re.S),
)
OLD_LLAMA2 = re.compile(r"\[INST\](.*?)\[/INST\]", re.S)
OLD_SYS_BLOCK = re.compile(r"<<SYS>>.*?<</SYS>>", re.S)
OLD_SPECIAL = re.compile(r"<s>|</s>|<\|begin_of_text\|>|<\|endoftext\|>")
OLD_SPECIAL_BUT_EOS = re.compile(r"<s>|<\|begin_of_text\|>|<\|endoftext\|>")


def old_user_text_from_prompt(prompt: str) -> str:
    from r3_service.reward.text import _user_turn, collapse_whitespace, is_alpaca, query_text

    for pattern in OLD_TEMPLATES:
        turns = [(m.group(1), m.group(2)) for m in pattern.finditer(prompt)]
        if turns:
            return query_text(
                [{"role": r, "content": _user_turn(c) if r == "user" else c} for r, c in turns]
            )
    inst = OLD_LLAMA2.findall(prompt)
    if inst:
        return collapse_whitespace(" ".join(_user_turn(OLD_SYS_BLOCK.sub(" ", t)) for t in inst))
    if is_alpaca(prompt):
        return alpaca_query(OLD_SPECIAL_BUT_EOS.sub(" ", prompt))
    return collapse_whitespace(OLD_SPECIAL.sub(" ", prompt))


OLD_INPUT_MARKER = re.compile(
    r"(?:\n\s*#{1,4}\s*input\s*:?\s*\n?|\n\s*input\s*:|^\s*input\s*:)", re.IGNORECASE | re.MULTILINE
)
OLD_TRAILER = re.compile(r"(?:[\s.!)]|\b(?:thanks|thank you|thx|ty|pls|please)\b)*$", re.IGNORECASE)
OLD_PREAMBLE = re.compile("^" + features._PREAMBLE_RE.pattern, re.IGNORECASE)
OLD_INPUT_BLOCK = re.compile(r"\s*#{2,4}\s*Input\s*:\s*", re.IGNORECASE)
OLD_INSTRUCTION_MARK = re.compile(r"^\s*#{2,4}\s*Instruction\s*:\s*", re.IGNORECASE)
OLD_RESPONSE_MARK = re.compile(r"\s*#{2,4}\s*Response\s*:.*\Z", re.IGNORECASE | re.DOTALL)


def old_strip_preamble(text: str) -> str:
    original, previous = text, None
    text = text.lstrip()
    while previous != text:
        previous = text
        text = OLD_PREAMBLE.sub("", text, count=1).lstrip()
    return text if text else original


def old_split_alpaca(text: str) -> tuple[str, str]:
    from r3_service.classifier.text import _EMPTY_INPUT, _PREAMBLE

    body = OLD_RESPONSE_MARK.sub("", OLD_INSTRUCTION_MARK.sub("", _PREAMBLE.sub("", text)))
    parts = OLD_INPUT_BLOCK.split(body, maxsplit=1)
    given = parts[1].strip() if len(parts) > 1 else ""
    return parts[0].strip(), "" if _EMPTY_INPUT.match(given) else given


TEXTS = st.lists(
    st.sampled_from(
        (*PIECES, "Input", "INPUT:", "ſ", "K", "ty", "thx", "x", "so ", "hello, ", "\r", "\x0b")
    ),
    max_size=14,
).map("".join)


@settings(max_examples=400, deadline=None, database=None)
@given(text=TEXTS)
def test_prompt_templates_read_as_the_old_patterns_did(text: str) -> None:
    assert user_text_from_prompt(text) == old_user_text_from_prompt(text)


@settings(max_examples=400, deadline=None, database=None)
@given(text=TEXTS)
def test_classifier_matchers_find_what_the_old_patterns_found(text: str) -> None:
    marker = OLD_INPUT_MARKER.search(text)
    assert features._input_marker(text) == (marker.span() if marker else None)
    assert features._strip_trailer(text) == OLD_TRAILER.sub("", text)
    assert strip_preamble(text) == old_strip_preamble(text)
    assert split_alpaca(text) == old_split_alpaca(text)
    split_query(text)  # runs on anything
