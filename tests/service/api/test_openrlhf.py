"""OpenRLHF's remote reward-model protocol against the live server.

The body is the one openrlhf 0.11.2 sends (openrlhf/utils/agent.py,
SingleTurnAgentExecutor._fetch_rewards_via_http): {"query": [prompt + response
decoded with special tokens], "prompts": [prompt], "labels": [label]}; it reads
"rewards", "scores" and "extra_logs" from the answer. OpenRLHF itself cannot be
imported here (it needs deepspeed, flash-attn, ray), so the exact body is used.
"""

from __future__ import annotations

import json

import httpx
import pytest

pytestmark = pytest.mark.integration

PROMPT = (
    "<|im_start|>system\nYou are helpful.<|im_end|>\n"
    "<|im_start|>user\nWrite a haiku about rain.<|im_end|>\n<|im_start|>assistant\n"
)
RESPONSE = "Soft rain on the roof,\npuddles hold the grey sky still,\nthe garden drinks deep."


def test_openrlhf_body_scores_like_reward_route(live_server: str) -> None:
    payload = {"query": [PROMPT + RESPONSE + "<|im_end|>"], "prompts": [PROMPT], "labels": [""]}
    answer = httpx.post(live_server + "/openrlhf/reward", json=payload, timeout=30)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert set(data) == {"rewards", "scores", "extra_logs"}
    direct = httpx.post(
        live_server + "/reward",
        json={
            "query": ["Write a haiku about rain."],
            "response": [RESPONSE],
            "qtype": ["OPENENDED"],
        },
    ).json()
    assert data["rewards"] == pytest.approx(direct["rewards"], abs=1e-6)
    assert data["scores"] == data["rewards"]
    assert data["extra_logs"]["r3_relevance"] == pytest.approx(
        direct["components"]["relevance"], abs=1e-6
    )


def test_openrlhf_labels_are_references(live_server: str) -> None:
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    label = json.dumps({"reference": "Paris", "qtype": "CONSTRAINED"})
    answer = httpx.post(
        live_server + "/openrlhf/reward",
        json={
            "query": [prompt + "Paris", prompt + "Paris"],
            "prompts": [prompt, prompt],
            "labels": [label, "Paris"],
        },
    ).json()
    direct = httpx.post(
        live_server + "/reward",
        json={
            "query": ["What is the capital of France?"],
            "response": ["Paris"],
            "reference": ["Paris"],
            "qtype": ["CONSTRAINED"],
        },
    ).json()
    assert answer["rewards"][0] == pytest.approx(direct["rewards"][0], abs=1e-6)
    assert answer["rewards"][0] == pytest.approx(5.12, abs=1e-3)  # cosine 1 -> F = 5.12


def test_openrlhf_length_mismatch_is_422(live_server: str) -> None:
    answer = httpx.post(
        live_server + "/openrlhf/reward", json={"query": ["a", "b"], "prompts": ["a"]}
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["details"][0]["field"] == "prompts"
