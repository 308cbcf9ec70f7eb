"""Fidelity to the authors' reward over HTTP: cut order, Alpaca prompts, relevance off,
and what ``/reward`` tells a trainer about each response (where it was cut, copies)."""

from __future__ import annotations

import httpx
import pytest

from r3_client import Client
from r3_service.reward.text import ALPACA_PREAMBLES, DEFAULT_STOP_STRINGS

pytestmark = pytest.mark.integration

LI_RP = {"relevance": False}


def reward(url: str, body: dict[str, object]) -> dict[str, object]:
    answer = httpx.post(url + "/reward", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    data: dict[str, object] = answer.json()
    return data


def test_relevance_off_scores_every_item_li_times_rp(live_server: str) -> None:
    data = reward(
        live_server,
        {
            "query": ["Write a poem.", "What is 2+2?", "What is 2+2?"],
            "response": ["a b a b a b", "It is four", "It is four"],
            "reference": [None, "Four.", None],
            "qtype": ["OPENENDED", "CONSTRAINED", None],
            "options": LI_RP,
        },
    )
    # "a b a b a b": LI 0.06, RP 2/4; "It is four": LI 0.03, RP 1 (not F(1) = 5.12 for MiniLM)
    assert data["rewards"] == pytest.approx([0.03, 0.03, 0.03])
    assert data["components"]["branch"] == ["UNBRANCHED"] * 3  # type: ignore[index]


def test_leading_newline_stop_string_is_stripped_first(live_server: str) -> None:
    data = reward(
        live_server,
        {
            "query": ["q", "q"],
            "response": ["\n\n\n\nOne two three.\n\n--\nsig", "One two three."],
            "options": {"relevance": False, "repetition_penalty": False},
        },
    )
    assert data["rewards"] == pytest.approx([0.04, 0.04])  # One two three . : 4 tokens
    assert data["cut"] == {"start": [4, 0], "end": [18, 14], "stop_end": [22, 14]}


def test_cut_offsets_and_copies_through_the_client(live_server: str) -> None:
    responses = [
        "  The sea is calm.\n### Instruction:\nWrite more.",
        "What is the capital of France?",
        "Paris.",
        "Waves STOP more",
    ]
    with Client(base_url=live_server) as client:
        res = client.reward(
            query=["Describe the sea.", "What is the capital of France?", "Capital of France?"]
            + ["Describe the sea."],
            response=responses,
        )
        custom = client.reward(
            query=["q"], response=[responses[3]], options={"stop_strings": ["STOP"]}
        )
        info = client.info()
    assert res.cut is not None and custom.cut is not None
    assert res.cut.scored(responses) == [
        "The sea is calm.\n",
        "What is the capital of France?",
        "Paris.",
        "Waves STOP more",
    ]
    assert res.cut.stop_end == [2 + 17 + 16, 30, 6, 15]
    assert responses[0][: res.cut.stop_end[0]].endswith("### Instruction:")
    assert res.copies_query == [False, True, False, False]
    assert custom.cut.scored(responses[3:]) == ["Waves "] and custom.cut.stop_end == [10]
    assert info.stop_strings == list(DEFAULT_STOP_STRINGS)


def test_alpaca_query_option_matches_the_normalised_query(live_server: str) -> None:
    row = "Categorize the following items.\n\n### Input:\nChair : Knife, Fork"
    body = {"response": ["Furniture: chair. Kitchen: knife, fork."], "qtype": ["OPENENDED"]}
    alpaca = reward(live_server, {**body, "query": [row], "options": {"query_format": "alpaca"}})
    plain = reward(
        live_server, {**body, "query": ["Categorize the following items. ChairKnife, Fork"]}
    )
    raw = reward(live_server, {**body, "query": [row]})
    assert alpaca["rewards"] == pytest.approx(plain["rewards"], abs=1e-6)
    assert raw["rewards"] != pytest.approx(plain["rewards"], abs=1e-6)  # the option matters


def test_openrlhf_route_recognises_the_alpaca_template(live_server: str) -> None:
    prompt = (
        f"{ALPACA_PREAMBLES[0]}\n\n### Instruction:\nTranslate into French.\n\n"
        "### Input:\ngood morning\n\n### Response:"
    )
    response = " Bonjour.\n\n### Instruction:\nTranslate into German."
    got = httpx.post(
        live_server + "/openrlhf/reward",
        json={"query": [prompt + response], "prompts": [prompt], "labels": None},
        timeout=30,
    ).json()["rewards"]
    expected = reward(
        live_server,
        {
            "query": ["Translate into French. good morning"],
            "response": ["Bonjour.\n\n"],
            "qtype": [None],
        },
    )["rewards"]
    assert got == pytest.approx(expected, abs=1e-6)
