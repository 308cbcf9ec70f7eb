"""The query-type classifier over HTTP: /classify, its use by /reward, /v1/info, no head."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

STORY = "Write a story about a dragon."
SENTIMENT = "Classify the sentiment: I loved it."


def test_classify_obvious_cases(live_server: str) -> None:
    chat = [{"role": "system", "content": "Be helpful."}, {"role": "user", "content": STORY}]
    answer = httpx.post(live_server + "/classify", json={"query": [STORY, SENTIMENT, chat]})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["qtype"] == ["OPENENDED", "CONSTRAINED", "OPENENDED"]
    assert data["prob_openended"][0] > 0.5 > data["prob_openended"][1]
    assert data["prob_openended"][2] == pytest.approx(data["prob_openended"][0])


def test_info_names_the_classifier(live_server: str) -> None:
    classifier = httpx.get(live_server + "/v1/info").json()["classifier"]
    assert classifier["encoder"] == "all-MiniLM-L6-v2"
    assert classifier["shifted_split_accuracy"] > 0.75


def test_reward_uses_head_for_untyped_items_and_given_qtype_wins(live_server: str) -> None:
    body = {
        "query": [SENTIMENT, SENTIMENT, STORY],
        "response": ["Positive", "Positive", "Once upon a time a dragon slept."],
        "reference": ["Positive", "Positive", None],
        "qtype": [None, "OPENENDED", None],
    }
    data = httpx.post(live_server + "/reward", json=body).json()
    assert data["qtype"] == ["CONSTRAINED", "OPENENDED", "OPENENDED"]
    assert data["components"]["branch"] == ["CONSTRAINED", "OPENENDED", "OPENENDED"]
    # response == reference under cosine: F(1) = 5.12
    assert data["rewards"][0] == pytest.approx(5.12, abs=1e-3)
    omitted = httpx.post(
        live_server + "/reward",
        json={"query": [SENTIMENT], "response": ["Positive"], "reference": ["Positive"]},
    ).json()
    assert omitted["rewards"] == pytest.approx(data["rewards"][:1])


@pytest.mark.parametrize(
    ("body", "field", "index"),
    [
        ({"query": ["ok", 5]}, "query", 1),
        ({"query": [[{"role": "assistant", "content": "x"}]]}, "query", 0),
        ({"query": ["a"] * 65}, "query", 64),
        ({}, "query", None),
        ({"query": ["a"], "extra": 1}, "extra", None),
    ],
)
def test_classify_validation_errors(
    live_server: str, body: dict[str, object], field: str, index: int | None
) -> None:
    answer = httpx.post(live_server + "/classify", json=body)
    assert answer.status_code == 422
    detail = answer.json()["error"]["details"][0]
    assert (detail["field"], detail["index"]) == (field, index)


def test_folder_without_head_serves_untyped_as_openended(
    server_factory, tiny_bert_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    assert not (tiny_bert_dir / "qtype_head.json").exists()
    server = server_factory(tiny_bert_dir)
    server.wait_ready()
    assert httpx.get(server.url + "/v1/info").json()["classifier"] is None
    data = httpx.post(
        server.url + "/reward",
        json={"query": [SENTIMENT], "response": ["Positive"], "reference": ["Positive"]},
    ).json()
    assert data["qtype"] == ["OPENENDED"]
    classified = httpx.post(server.url + "/classify", json={"query": [SENTIMENT]}).json()
    assert classified["qtype"] == ["OPENENDED"]
    log = server.log_path.read_text()
    assert "no query-type classifier" in log
