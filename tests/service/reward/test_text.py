from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r3_service.reward.text import (
    ALPACA_PREAMBLES,
    DEFAULT_STOP_STRINGS,
    Cut,
    alpaca_query,
    cut_at_stop_strings,
    cut_response,
    find_stop,
    is_alpaca,
    query_text,
    trigrams,
    user_text_from_prompt,
    wordpunct_tokenize,
)

nltk_tokenize = pytest.importorskip("nltk.tokenize").wordpunct_tokenize


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Hello, world!",
        "Don't stop-believing... 3.14 $5",
        "naïve café — 東京 😀!!",
        "tabs\tand\nnewlines  ",
        "a_b __init__ x=1;y=2",
    ],
)
def test_wordpunct_matches_nltk_examples(text: str) -> None:
    assert wordpunct_tokenize(text) == nltk_tokenize(text)


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_wordpunct_matches_nltk_on_any_text(text: str) -> None:
    assert wordpunct_tokenize(text) == nltk_tokenize(text)


def test_wordpunct_hand_example() -> None:
    assert wordpunct_tokenize("It's 3.5, ok?!") == ["It", "'", "s", "3", ".", "5", ",", "ok", "?!"]


def test_trigrams() -> None:
    assert trigrams(["a", "b", "c", "d"]) == ["a b c", "b c d"]
    assert trigrams(["a", "b"]) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer.\n\n\n\nmore", "Answer."),
        ("  Answer.\n\n-- sig", "Answer."),
        ("Answer.\n\n____\nfoot", "Answer."),
        # stripped first, then cut: what precedes the stop string is kept as it is
        ("\n Answer <|user|> next turn", "Answer "),
        ("Answer.\n\nSecond paragraph.", "Answer.\n\nSecond paragraph."),
        ("first \n\n-- then\n\n\n\nlater", "first "),
        ("no stop here", "no stop here"),
        ("Paris.\n\n### Response: Paris.", "Paris.\n\n"),
        ("Paris.\n### Instruction:\nName a city.", "Paris.\n"),
    ],
)
def test_cut_at_default_stop_strings(text: str, expected: str) -> None:
    assert cut_at_stop_strings(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\n\n\n\nAnswer.", "Answer."),
        ("\n\n-- Answer.", "-- Answer."),
        ("\n\n____Answer.", "____Answer."),
        (" \n\n\n\n \nAnswer.\n\n\n\nmore", "Answer."),
    ],
)
def test_leading_newlines_are_stripped_before_the_cut(text: str, expected: str) -> None:
    """A response that starts with a newline stop string keeps its text (the authors' order)."""
    assert cut_at_stop_strings(text) == expected


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        ("  Hi\n\n\n\nmore", Cut(2, 4, 8)),
        ("  Hi \n", Cut(2, 4, 6)),
        ("\n \n", Cut(3, 3, 3)),
        ("", Cut(0, 0, 0)),
        ("\nA<|im_end|>B", Cut(1, 2, 12)),
    ],
)
def test_cut_offsets(text: str, cut: Cut) -> None:
    got = cut_response(text)
    assert got == cut
    assert got.text(text) == cut_at_stop_strings(text)


def test_find_stop_earliest_then_longest() -> None:
    assert find_stop("abc--def\n\nx", ["\n\n", "--"]) == (3, 5)
    assert find_stop("abcd", ["ab", "abc", ""]) == (0, 3)
    assert find_stop("abc", ["", "z"]) is None


def test_cut_uses_earliest_stop_and_custom_list() -> None:
    assert cut_at_stop_strings("a STOP b END c", ["END", "STOP"]) == "a "
    assert cut_at_stop_strings("keep\n\n\n\nall", []) == "keep\n\n\n\nall"
    assert {"\n\n\n\n", "### Instruction:", "### Response:"} <= set(DEFAULT_STOP_STRINGS)


def test_cut_strips_only_newlines_and_spaces() -> None:
    assert cut_at_stop_strings("\t x \n") == "\t x"


def test_query_text_plain_string_unchanged() -> None:
    assert query_text("  What is  R3?\n") == "  What is  R3?\n"


def test_query_text_joins_user_turns_and_collapses_whitespace() -> None:
    chat = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Tell me\n about  cats."},
        {"role": "assistant", "content": "Cats are great."},
        {"role": "user", "content": " And dogs? "},
    ]
    assert query_text(chat) == "Tell me about cats. And dogs?"


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (
            "<|im_start|>system\nBe nice<|im_end|>\n<|im_start|>user\nHello  there<|im_end|>\n"
            "<|im_start|>assistant\nHi!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
            "<|im_start|>assistant\n",
            "Hello there Bye",
        ),
        (
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nsys<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            "What is 2+2?",
        ),
        ("<|user|>\nTell me a joke\n<|assistant|>\n", "Tell me a joke"),
        ("<s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nHi there [/INST]", "Hi there"),
        ("Plain\n prompt", "Plain prompt"),
        ("Plain : prompt </s>", "Plain : prompt"),
        (
            f"<s>{ALPACA_PREAMBLES[0]}\n\n### Instruction:\nWrite an if-else statement.\n\n"
            "### Input:\nBoolean variable : x\n\n### Response:",
            "Write an if-else statement. Boolean variablex",
        ),
        (
            f"{ALPACA_PREAMBLES[1]}\n\n### Instruction:\nName three colours.\n\n### Response:\n",
            "Name three colours.",
        ),
        (
            "<|im_start|>user\nSort these.\n\n### Input:\n3, 1, 2<|im_end|>\n"
            "<|im_start|>assistant\n",
            "Sort these. 3, 1, 2",
        ),
    ],
)
def test_user_text_from_rendered_prompt(prompt: str, expected: str) -> None:
    assert user_text_from_prompt(prompt) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the template is dropped, the input block joins the instruction with a space
        (
            f"{ALPACA_PREAMBLES[0]}\n\n### Instruction:\nWrite an if-else statement.\n\n"
            "### Input:\nBoolean variable : x\n\n### Response:",
            "Write an if-else statement. Boolean variablex",
        ),
        # a training row as stored: instruction and input block, no template
        (
            "Categorize the following items.\n\n### Input:\nChair, Knife, Fork",
            "Categorize the following items. Chair, Knife, Fork",
        ),
        # "</s>" and " : " removed, newlines, colons and spaces stripped at both ends
        (": Hello </s>world :\n", "Hello world"),
        ("a : b", "ab"),
        ("\n:: x\t y  ::\n", "x y"),
        # "### Input:" without a newline is not an input block
        ("Say hi. ### Input: now", "Say hi. ### Input: now"),
        ("", ""),
    ],
)
def test_alpaca_query_hand_values(text: str, expected: str) -> None:
    assert alpaca_query(text) == expected


def test_is_alpaca() -> None:
    assert is_alpaca("### Instruction:\nx") and is_alpaca("x\n\n### Input:\ny")
    assert not is_alpaca("x ### Input: y") and not is_alpaca("plain")


def test_split_prompt_response() -> None:
    from r3_service.reward.text import split_prompt_response

    assert split_prompt_response("PROMPT answer", "PROMPT") == " answer"
    assert split_prompt_response("<s>PROMPT answer</s>", "PROMPT") == " answer</s>"
    assert split_prompt_response("PROMPX answer", "PROMPT") == "X answer"


@pytest.mark.parametrize(
    ("query", "response", "expected"),
    [
        ("What is the capital of France?", "What is the capital of France?", True),
        ("What is the capital of France?", "what is the capital of france", True),
        (
            "What is the capital of France?",
            "The capital of France is Paris, a city on the Seine.",
            False,
        ),
        ("Name a color.", "color", True),
        ("Name a color.", "Blue", False),
        ("Anything", "", False),
    ],
)
def test_copies_query(query: str, response: str, expected: bool) -> None:
    from r3_service.reward.text import copies_query

    assert copies_query(query, response) is expected
