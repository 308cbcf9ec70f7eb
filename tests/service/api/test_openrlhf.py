"""POST /openrlhf/reward against the live server: label rule, split, scores, extra_logs.

OpenRLHF's own request code is exercised in tests/clients/test_framework_openrlhf.py; here the
route's rules are checked item by item against POST /reward on the same items.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from r3_service.api.errors import APIError
from r3_service.api.routes.openrlhf import (
    MAX_LABEL_DEPTH,
    check_label,
    parse_label,
    read_items,
    response_of,
)
from r3_service.config import Settings
from r3_service.engine import RequestTimeoutError

pytestmark = pytest.mark.integration

SYSTEM = "<|im_start|>system\nYou are a helpful assistant. Answer briefly.<|im_end|>\n"


def chatml(question: str) -> str:
    return f"{SYSTEM}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


PROMPT = chatml("Write a haiku about rain.")
RESPONSE = "Soft rain on the roof,\npuddles hold the grey sky still,\nthe garden drinks deep."
ADD = chatml("What is 2+2?")


def post(url: str, path: str, body: dict[str, Any], **params: str) -> httpx.Response:
    return httpx.post(url + path, json=body, params=params, timeout=60)


def direct(url: str, rows: list[tuple[str, str, str | None, str | None]]) -> list[float]:
    """/reward on (query, response, reference, qtype) rows."""
    answer = post(
        url,
        "/reward",
        {
            "query": [r[0] for r in rows],
            "response": [r[1] for r in rows],
            "reference": [r[2] for r in rows],
            "qtype": [r[3] for r in rows],
        },
    )
    assert answer.status_code == 200, answer.text
    rewards: list[float] = answer.json()["rewards"]
    return rewards


def test_sequence_scores_like_reward_route(live_server: str) -> None:
    body = {"query": [PROMPT + RESPONSE + "<|im_end|>"], "prompts": [PROMPT], "labels": [""]}
    answer = post(live_server, "/openrlhf/reward", body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert set(data) == {"rewards", "scores", "extra_logs"}
    reward = direct(live_server, [("Write a haiku about rain.", RESPONSE, None, "OPENENDED")])
    assert data["rewards"] == pytest.approx(reward, abs=1e-6)
    assert data["scores"] == pytest.approx([min(1.0, max(0.0, reward[0] / 5.12))], abs=1e-6)
    assert set(data["extra_logs"]) == {
        "r3_relevance",
        "r3_length_incentive",
        "r3_repetition_penalty",
    }


# label -> the (reference, qtype) it must mean; response "4" to "What is 2+2?"
ANSWER = "The answer is 4."
LABEL_CASES: list[tuple[Any, str | None, str | None]] = [
    ("The answer is 4.", "The answer is 4.", None),
    (
        '{"reference": "The answer is 4.", "qtype": "constrained"}',
        "The answer is 4.",
        "CONSTRAINED",
    ),
    ({"reference": "The answer is 4.", "qtype": "Constrained"}, "The answer is 4.", "CONSTRAINED"),
    ({"qtype": "openended"}, None, "OPENENDED"),
    ({"reference": 4, "qtype": "CONSTRAINED"}, "4", "CONSTRAINED"),
    (8, "8", None),
    (2.5, "2.5", None),
    (None, None, None),
    ("   ", None, None),
    (["4", "four"], "4", None),
    ([], None, None),
    ("{4} is the answer", "{4} is the answer", None),
    # text that does not start like a JSON object ('{"' or '{}') is a reference
    ("{1, 2, 3}", "{1, 2, 3}", None),
]


def test_label_rule_for_every_json_type(live_server: str) -> None:
    n = len(LABEL_CASES)
    body = {"query": [ADD + "4"] * n, "prompts": [ADD] * n, "labels": [c[0] for c in LABEL_CASES]}
    answer = post(live_server, "/openrlhf/reward", body)
    assert answer.status_code == 200, answer.text
    expected = direct(live_server, [("What is 2+2?", "4", ref, qt) for _, ref, qt in LABEL_CASES])
    assert answer.json()["rewards"] == pytest.approx(expected, abs=1e-6)
    # the structured label really switched branch: CONSTRAINED scores far above OPENENDED here
    assert answer.json()["rewards"][1] > 5 * answer.json()["rewards"][3]


def test_missing_labels_column(live_server: str) -> None:
    answer = post(live_server, "/openrlhf/reward", {"query": [ADD + "4"], "prompts": [ADD]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["rewards"] == pytest.approx(
        direct(live_server, [("What is 2+2?", "4", None, None)]), abs=1e-6
    )


@pytest.mark.parametrize(
    ("label", "field", "words"),
    [
        ('{"reference": "4", "qtype": "closed"}', "labels.qtype", "OPENENDED or CONSTRAINED"),
        ({"reference": "4", "qtype": 3}, "labels.qtype", "OPENENDED or CONSTRAINED"),
        ('{"reference": "4", "qtpye": "CONSTRAINED"}', "labels.qtpye", "unknown key"),
        ({"answer": "4"}, "labels.answer", "unknown key"),
        ({"reference": {"text": "4"}}, "labels.reference", "string"),
        # a label object cut short: before, scored as a plain reference (0.85 for 5.12)
        ('{"reference": "4", "qtype": "CONSTRAINED"', "labels", "starts like a JSON object"),
        ('{"reference": "4"} and more', "labels", "starts like a JSON object"),
        ({"reference": "4", "qtype": "conſtrained"}, "labels.qtype", "OPENENDED or CONSTRAINED"),
        ([[[[[[[[["deep"]]]]]]]]], "labels", "nested deeper"),
        ('{"reference": ' * 20 + '"x"' + "}" * 20, "labels", "nested deeper"),
        ("x" * 70_000, "labels", "too long"),
        ({"reference": "x" * 70_000}, "labels", "too long"),
    ],
)
def test_bad_labels_are_422_naming_the_field(
    live_server: str, label: Any, field: str, words: str
) -> None:
    body = {"query": [ADD + "4", ADD + "4"], "prompts": [ADD, ADD], "labels": ["4", label]}
    answer = post(live_server, "/openrlhf/reward", body)
    assert answer.status_code == 422, answer.text
    (detail,) = answer.json()["error"]["details"]
    assert (detail["field"], detail["index"]) == (field, 1)
    assert words in detail["message"]


def test_reading_items_stops_at_the_request_deadline() -> None:
    """Prompt parsing runs under the request's deadline: past it, 504 between items."""
    n = 4
    args = (["[INST] q [/INST] a"] * n, ["[INST] q [/INST]"] * n, [None] * n, Settings())
    assert len(read_items(*args, deadline=time.monotonic() + 60)) == n
    with pytest.raises(RequestTimeoutError):
        read_items(*args, deadline=time.monotonic() - 1)


def test_label_depth_limit_is_exact() -> None:
    label: Any = "x"
    for _ in range(MAX_LABEL_DEPTH):
        label = [label]
    check_label(label, 0, Settings())  # exactly the limit
    assert parse_label(label, 0) == ("x", None)
    with pytest.raises(APIError) as info:
        check_label([label], 0, Settings())
    assert info.value.status == 422


def test_qtype_is_case_insensitive_on_reward(live_server: str) -> None:
    rows = {"query": ["What is 2+2?"] * 3, "response": ["4"] * 3, "reference": ["4"] * 3}
    lower = post(live_server, "/reward", {**rows, "qtype": ["constrained", "Openended", None]})
    upper = post(live_server, "/reward", {**rows, "qtype": ["CONSTRAINED", "OPENENDED", None]})
    assert lower.status_code == 200, lower.text
    assert lower.json()["rewards"] == upper.json()["rewards"]
    assert lower.json()["qtype"][:2] == ["CONSTRAINED", "OPENENDED"]
    bad = post(live_server, "/reward", {**rows, "qtype": ["constrained", "closed", None]})
    assert bad.status_code == 422
    assert bad.json()["error"]["details"][0]["field"] == "qtype"
    assert bad.json()["error"]["details"][0]["index"] == 1


def test_scores_are_reward_over_f_top_clipped(live_server: str) -> None:
    label = json.dumps({"reference": "Paris", "qtype": "CONSTRAINED"})
    prompt = chatml("What is the capital of France?")
    answer = post(
        live_server,
        "/openrlhf/reward",
        {
            "query": [prompt + "Paris", prompt + "Lyon"],
            "prompts": [prompt] * 2,
            "labels": [label] * 2,
        },
    ).json()
    assert answer["rewards"][0] == pytest.approx(5.12, abs=1e-3)  # cosine 1 -> F = 5.12
    assert answer["scores"][0] == pytest.approx(1.0, abs=1e-3)
    assert 0.0 <= answer["scores"][1] < 1.0
    assert answer["scores"][1] == pytest.approx(
        min(1.0, max(0.0, answer["rewards"][1] / 5.12)), abs=1e-6
    )


def test_extra_logs_can_be_switched_off(live_server: str) -> None:
    body = {"query": [PROMPT + RESPONSE], "prompts": [PROMPT], "labels": [None]}
    off = post(live_server, "/openrlhf/reward", body, extra_logs="false")
    on = post(live_server, "/openrlhf/reward", body, extra_logs="true")
    assert off.status_code == 200, off.text
    assert set(off.json()) == {"rewards", "scores"}
    assert "extra_logs" in on.json()
    assert off.json()["rewards"] == on.json()["rewards"]


@pytest.mark.parametrize("cut", [1, 7, 40, len(SYSTEM) + 5])
def test_left_truncated_prompt(live_server: str, cut: int) -> None:
    """OpenRLHF cuts long prompts from the left but sends the whole prompt in ``prompts``."""
    sequence = PROMPT[cut:] + RESPONSE + "<|im_end|>"
    assert response_of(sequence, PROMPT) == RESPONSE + "<|im_end|>"
    body = {"query": [sequence, "\ufffd" + sequence[3:]], "prompts": [PROMPT] * 2}
    answer = post(live_server, "/openrlhf/reward", body)
    assert answer.status_code == 200, answer.text
    expected = direct(live_server, [("Write a haiku about rain.", RESPONSE, None, "OPENENDED")])
    assert answer.json()["rewards"] == pytest.approx(expected * 2, abs=1e-6)


def test_length_mismatch_is_422(live_server: str) -> None:
    answer = post(live_server, "/openrlhf/reward", {"query": ["a", "b"], "prompts": ["a"]})
    assert answer.status_code == 422
    assert answer.json()["error"]["details"][0]["field"] == "prompts"


def test_split_of_cut_repetitive_prompts() -> None:
    """Only places that can fit are tried: repetitive prompts split right (and stay cheap)."""
    assert response_of("a" * 49_000 + "b", "a" * 50_000) == "b"
    assert response_of("a" * 30_000 + "RESP", "x" * 20 + "a" * 49_980) == "RESP"
    prompt = "Repeat after me. " * 40 + "<|im_start|>assistant\n"
    assert response_of(prompt[301:] + "Done.", prompt) == "Done."
