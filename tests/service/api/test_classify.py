"""The query-type classifier over HTTP: /classify, its use by /reward, /v1/info, refusal."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from r3_service.classifier.runtime import CLASSIFIER_DIR, CONFIG_FILE

pytestmark = pytest.mark.integration

STORY = "Write a story about a dragon."
SENTIMENT = "Classify the sentiment: I loved it."


def test_classify_obvious_cases(live_server: str) -> None:
    chat = [{"role": "system", "content": "Be helpful."}, {"role": "user", "content": STORY}]
    answer = httpx.post(live_server + "/classify", json={"query": [STORY, SENTIMENT, chat]})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["qtype"] == ["OPENENDED", "CONSTRAINED", "OPENENDED"]
    assert data["prob_openended"][0] > 0.65 > 0.35 > data["prob_openended"][1]
    assert data["uncertain"] == [False, False, False]
    assert data["prob_openended"][2] == pytest.approx(data["prob_openended"][0])


def test_info_names_the_classifier(live_server: str) -> None:
    classifier = httpx.get(live_server + "/v1/info").json()["classifier"]
    assert classifier["kind"] == "finetuned" and classifier["members"] == 1
    assert classifier["untyped_items"] == "classified"
    assert classifier["threshold"] == 0.5 and classifier["abstain_band"] == [0.35, 0.65]
    assert classifier["metrics"]["alpacafarm_shifted_5fold_accuracy"]["shifted"] > 0.8
    assert len(classifier["adapter_sha256"]) == 64


def _sample(metrics: str, name: str) -> float:
    line = next(x for x in metrics.splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


def test_decisions_are_counted_and_cached(live_server: str) -> None:
    query = "Summarize the plot of a film you like in one line, then rate it."
    body = {"query": [query] * 8, "response": ["ok"] * 8, "reference": ["fine"] * 8}
    before = httpx.get(live_server + "/metrics").text
    assert httpx.post(live_server + "/reward", json=body).status_code == 200
    assert httpx.post(live_server + "/reward", json=body).status_code == 200
    after = httpx.get(live_server + "/metrics").text
    misses = "r3_qtype_cache_misses_total"
    assert _sample(after, misses) - _sample(before, misses) == 1  # a group and its repeat pay once
    assert _sample(after, "r3_qtype_cache_hits_total") > _sample(
        before, "r3_qtype_cache_hits_total"
    )
    assert "r3_qtype_decisions_total{decision=" in after


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


def test_folder_without_classifier_refuses_to_start(server_factory, tiny_bert_dir: Path) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(tiny_bert_dir, env={"R3_ALLOW_NO_CLASSIFIER": "false"})
    assert server.proc.wait(timeout=60) != 0
    assert "Refusing to start" in server.log_path.read_text()


def test_broken_classifier_refuses_unless_allowed(
    server_factory, tiny_bert_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    (folder / CLASSIFIER_DIR).mkdir()
    (folder / CLASSIFIER_DIR / CONFIG_FILE).write_text('{"format_version": 2, "kind": "fin')
    refused = server_factory(folder, env={"R3_ALLOW_NO_CLASSIFIER": "false"})
    assert refused.proc.wait(timeout=60) != 0
    assert "Refusing to start" in refused.log_path.read_text()

    allowed = server_factory(folder, env={"R3_ALLOW_NO_CLASSIFIER": "true"})
    allowed.wait_ready()
    info = httpx.get(allowed.url + "/v1/info").json()["classifier"]
    assert info["kind"] == "none" and info["untyped_items"] == "OPENENDED"
    data = httpx.post(
        allowed.url + "/reward",
        json={"query": [SENTIMENT], "response": ["Positive"], "reference": ["Positive"]},
    ).json()
    assert data["qtype"] == ["OPENENDED"]
    classified = httpx.post(allowed.url + "/classify", json={"query": [SENTIMENT]}).json()
    assert classified["qtype"] == ["OPENENDED"] and classified["uncertain"] == [False]
