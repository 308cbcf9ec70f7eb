"""Integration: a real uvicorn server (subprocess) on the exported default encoder, over HTTP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from r3_service.encoder import load_encoder, relevance
from r3_service.reward import (
    cut_at_stop_strings,
    interpolate_relevance,
    length_incentive,
    repetition_penalty,
    wordpunct_tokenize,
)

pytestmark = pytest.mark.integration

QUERIES = [
    "Write a short poem about autumn leaves.",
    "Explain why the sky is blue.",
    "Give three tips for staying healthy.",
    "Translate 'good morning' into French.",
]
RESPONSES = [
    "Leaves of amber drift and fall,\ncrimson whispers, nature's call.",
    "Sunlight scatters off air molecules; blue light scatters most, so the sky looks blue.",
    "1. Eat well. 2. Sleep enough. 3. Exercise. Exercise. Exercise. Exercise.",
    "Bonjour.\n\n\n\nUser: and in German?",
]


def post(url: str, path: str, body: object) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=30)


def test_health_ready_info(live_server: str) -> None:
    assert httpx.get(live_server + "/healthz").json() == {"status": "ok"}
    assert httpx.get(live_server + "/readyz").status_code == 200
    info = httpx.get(live_server + "/v1/info").json()
    assert info["model"] == "all-MiniLM-L6-v2"
    assert info["profile"] == {
        "similarity": "cosine",
        "relevance_range": [0.0, 1.0],
        "max_sequence_length": 512,
        "pooling": "mean",
        "truncation": "left",
        "dtype": "fp32",
    }
    assert info["limits"]["max_items_per_request"] == 64  # from R3_MAX_ITEMS_PER_REQUEST
    assert info["version"]


def test_reward_equals_formula_on_local_embeddings(live_server: str, minilm_dir: Path) -> None:
    reference = "Bonjour."
    body = {
        "query": QUERIES,
        "response": RESPONSES,
        "reference": [None, None, None, reference],
        "qtype": ["OPENENDED", "OPENENDED", None, "CONSTRAINED"],
    }
    answer = post(live_server, "/reward", body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["qtype"][3] == "CONSTRAINED"
    assert data["components"]["branch"][3] == "CONSTRAINED"

    encoder = load_encoder(minilm_dir)
    for i in range(3):
        if data["qtype"][i] != "OPENENDED":
            continue
        cut = cut_at_stop_strings(RESPONSES[i])
        tokens = wordpunct_tokenize(cut)
        q, r = encoder.encode([QUERIES[i], cut])
        r_x = float(relevance(q[None], r[None], "cosine")[0])
        expected = r_x * length_incentive(tokens) * repetition_penalty(tokens)
        assert data["rewards"][i] == pytest.approx(expected, abs=1e-5)
        assert data["components"]["relevance"][i] == pytest.approx(r_x, abs=1e-5)
    cut = cut_at_stop_strings(RESPONSES[3])
    assert cut == "Bonjour."
    y, a = encoder.encode([reference, cut])
    r_y = float(relevance(y[None], a[None], "cosine")[0])
    expected = interpolate_relevance(r_y, (0.0, 1.0), 512) * 1.0
    assert data["rewards"][3] == pytest.approx(expected, abs=1e-4)
    assert data["components"]["repetition_penalty"][2] < 1.0  # "Exercise." repeated


def test_chat_query_and_options(live_server: str) -> None:
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Write a  poem\nabout the sea."},
    ]
    plain = post(
        live_server, "/reward", {"query": ["Write a poem about the sea."], "response": ["Waves."]}
    )
    chatted = post(live_server, "/reward", {"query": [chat], "response": ["Waves."]})
    assert chatted.status_code == 200
    assert chatted.json()["rewards"] == pytest.approx(plain.json()["rewards"])
    li_only = post(
        live_server,
        "/reward",
        {
            "query": ["q", "q"],
            "response": ["one two three four", "a b STOP c"],
            "options": {
                "relevance": False,
                "repetition_penalty": False,
                "reward_branching": False,
                "stop_strings": ["STOP"],
            },
        },
    ).json()
    assert li_only["rewards"] == pytest.approx([0.04, 0.02])
    assert li_only["components"]["branch"] == ["UNBRANCHED", "UNBRANCHED"]


def test_constrained_without_reference_falls_back(live_server: str) -> None:
    data = post(
        live_server,
        "/reward",
        {"query": ["What is 2+2?"], "response": ["4"], "qtype": ["CONSTRAINED"]},
    ).json()
    assert data["components"]["branch"] == ["CONSTRAINED_NO_REFERENCE"]
    assert data["qtype"] == ["CONSTRAINED"]


def test_relevance_route(live_server: str) -> None:
    data = post(
        live_server,
        "/relevance",
        {"anchor": ["cats are pets", "cats are pets"], "text": ["dogs and cats", "stock prices"]},
    ).json()
    assert data["relevance"][0] > data["relevance"][1]
    assert -1.0 <= min(data["relevance"]) and max(data["relevance"]) <= 1.0


async def test_32_concurrent_clients_equal_sequential(live_server: str) -> None:
    rng = np.random.default_rng(0)
    bodies = []
    for c in range(32):
        picks = rng.integers(0, len(QUERIES), size=3)
        bodies.append(
            {
                "query": [QUERIES[p] for p in picks],
                "response": [f"{RESPONSES[p]} (client {c})" for p in picks],
            }
        )
    sequential = [post(live_server, "/reward", b).json()["rewards"] for b in bodies]
    async with httpx.AsyncClient(base_url=live_server, timeout=60) as client:
        answers = await asyncio.gather(*(client.post("/reward", json=b) for b in bodies))
    assert all(a.status_code == 200 for a in answers)
    for got, want in zip(answers, sequential):
        np.testing.assert_allclose(got.json()["rewards"], want, atol=1e-5, rtol=0)


def error_of(answer: httpx.Response) -> dict[str, object]:
    body = answer.json()
    assert set(body) == {"error"}
    assert {"type", "message", "details"} <= set(body["error"])
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "field", "index"),
    [
        ({"query": ["a", "b"], "response": ["x"]}, "response", None),  # query[1] has no response
        ({"query": ["a"], "response": ["x"], "reference": ["r", "s"]}, "reference", 1),
        ({"query": ["a", 3], "response": ["x", "y"]}, "query", 1),
        ({"query": ["a"], "response": [None]}, "response", 0),
        (
            {"query": ["a", "b", "c"], "response": ["x"] * 3, "qtype": [None, None, "FOO"]},
            "qtype",
            2,
        ),
        ({"query": [[{"role": "user"}]], "response": ["x"]}, "query.content", 0),
        ({"query": [[{"role": "assistant", "content": "hi"}]], "response": ["x"]}, "query", 0),
        ({"query": [[]], "response": ["x"]}, "query", 0),
        (
            {"query": ["a"], "response": ["x"], "options": {"relevance": "maybe"}},
            "options.relevance",
            None,
        ),
        (
            {"query": ["a"], "response": ["x"], "options": {"max_sequence_length": 0}},
            "options.max_sequence_length",
            None,
        ),
        ({"query": ["a"], "response": ["x"], "options": {"typo": True}}, "options.typo", None),
        ({"query": ["a"] * 65, "response": ["x"] * 65}, "query", 64),
        ({"response": ["x"]}, "query", None),
        ({"query": "a", "response": ["x"]}, "query", None),
        ({"query": ["a"], "response": ["x" * 50_001]}, "response", 0),
    ],
)
def test_bad_reward_input_is_422_naming_field_and_index(
    live_server: str, body: dict[str, object], field: str, index: int | None
) -> None:
    answer = post(live_server, "/reward", body)
    assert answer.status_code == 422, answer.text
    error = error_of(answer)
    assert error["type"] == "validation_error"
    detail = error["details"][0]  # type: ignore[index]
    assert detail["field"] == field
    assert detail["index"] == index
    assert field.split(".")[0] in str(error["message"])


def test_lone_surrogate_is_422(live_server: str) -> None:
    raw = '{"query": ["ok", "bad \\ud800 text"], "response": ["x", "y"]}'
    answer = httpx.post(
        live_server + "/reward", content=raw, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422
    detail = error_of(answer)["details"][0]  # type: ignore[index]
    assert (detail["field"], detail["index"]) == ("query", 1)


def test_odd_but_valid_unicode_is_scored(live_server: str) -> None:
    texts = ["nul\u0000byte", "\u202eRTL override\u202c", "emoji 😀 ﷽", "\u200b"]
    answer = post(live_server, "/reward", {"query": texts, "response": texts})
    assert answer.status_code == 200
    assert all(np.isfinite(answer.json()["rewards"]))


def test_invalid_json_is_400(live_server: str) -> None:
    answer = httpx.post(
        live_server + "/reward", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400
    assert error_of(answer)["type"] == "bad_request"


def test_unknown_route_and_method_use_error_shape(live_server: str) -> None:
    assert error_of(httpx.get(live_server + "/nope"))["type"] == "not_found"
    answer = httpx.get(live_server + "/reward")
    assert answer.status_code == 405 and error_of(answer)["type"] == "method_not_allowed"


def test_metrics_exposes_service_metrics(live_server: str) -> None:
    post(live_server, "/reward", {"query": ["q"], "response": ["r"]})
    answer = post(live_server, "/reward", {"query": ["q"], "response": ["r2"]})  # query cached
    assert float(answer.headers["x-r3-queue-time-ms"]) >= 0
    assert float(answer.headers["x-r3-inference-time-ms"]) >= 0
    copy = "Repeat this exact question back to me please"
    post(live_server, "/reward", {"query": [copy], "response": [copy], "qtype": ["OPENENDED"]})
    text = httpx.get(live_server + "/metrics").text
    for name in (
        "r3_requests_total",
        "r3_request_duration_seconds_bucket",
        "r3_batch_size_bucket",
        "r3_batch_tokens_bucket",
        "r3_batch_text_tokens_total",
        "r3_inference_duration_seconds_bucket",
        "r3_queue_size",
        "r3_cache_hits_total",
        'r3_reward_bucket{branch="OPENENDED"',
        'r3_query_copy_total{qtype="OPENENDED"} ',
    ):
        assert name in text, name
    hits = [line for line in text.splitlines() if line.startswith("r3_cache_hits_total")]
    assert float(hits[0].split()[-1]) >= 1


def test_openapi_schema_documents_routes(live_server: str) -> None:
    spec = httpx.get(live_server + "/openapi.json").json()
    assert {"/reward", "/relevance", "/classify", "/v1/info", "/healthz", "/readyz"} <= set(
        spec["paths"]
    )


def test_oversized_body_is_413(server_factory, minilm_dir: Path) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(minilm_dir, env={"R3_MAX_BODY_BYTES": "2048"})
    server.wait_ready()
    body = json.dumps({"query": ["q" * 3000], "response": ["r"]})
    answer = httpx.post(
        server.url + "/reward", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 413
    assert error_of(answer)["type"] == "request_too_large"

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(4):
            yield b'{"query": ["' + b"q" * 1000
        yield b'"], "response": ["r"]}'

    streamed = httpx.post(
        server.url + "/reward", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    assert (
        httpx.post(server.url + "/reward", json={"query": ["q"], "response": ["r"]}).status_code
        == 200
    )


async def test_full_queue_answers_503_with_retry_after_and_drops_nothing(
    server_factory,
    minilm_dir: Path,  # type: ignore[no-untyped-def]
) -> None:
    server = server_factory(minilm_dir, env={"R3_MAX_QUEUE_TEXTS": "24", "R3_MAX_WAIT_MS": "20"})
    server.wait_ready()
    bodies = [
        {
            "query": [f"query {c} {i}" for i in range(6)],
            "response": [f"resp {c} {i} " * 40 for i in range(6)],
        }
        for c in range(24)
    ]
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        answers = await asyncio.gather(*(client.post("/reward", json=b) for b in bodies))
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 503}
    assert 200 in codes and 503 in codes
    rejected = [
        line
        for line in httpx.get(server.url + "/metrics").text.splitlines()
        if line.startswith('r3_rejected_requests_total{reason="queue_full"}')
    ]
    assert float(rejected[0].split()[-1]) == codes.count(503)
    for answer in answers:
        if answer.status_code == 503:
            assert int(answer.headers["retry-after"]) >= 1  # from the measured drain rate
            assert error_of(answer)["type"] == "overloaded"  # healthy, only full
        else:
            assert len(answer.json()["rewards"]) == 6
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_serves_contriever_style_export(server_factory, tiny_bert_dir: Path) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(tiny_bert_dir)
    server.wait_ready()
    info = httpx.get(server.url + "/v1/info").json()
    assert info["profile"]["similarity"] == "dot"
    assert info["profile"]["relevance_range"] == [0.0, 3.5]
    body = {"query": ["q"], "response": ["r"], "reference": ["r"], "qtype": ["CONSTRAINED"]}
    data = httpx.post(server.url + "/reward", json=body).json()
    encoder = load_encoder(tiny_bert_dir)
    vec = encoder.encode(["r"])[0]
    r_y = float(vec @ vec)  # plain dot product, reference == response
    assert data["components"]["relevance"][0] == pytest.approx(r_y, rel=1e-5)
    assert data["rewards"][0] == pytest.approx(r_y / 3.5 * 5.12, rel=1e-5)
