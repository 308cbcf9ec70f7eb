"""Sync client: requests, results, env fallbacks, chunking."""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import respx

import r3_client
from r3_client import (
    APIResponseValidationError,
    ClassifyResult,
    Client,
    Info,
    InternalServerError,
    InvalidInputError,
    R3Error,
    RelevanceResult,
    RewardResult,
)

if TYPE_CHECKING:
    from conftest import FakeServer

BASE = "http://r3.test"  # the fake server in conftest.py


def test_reward_request_and_result(server: FakeServer) -> None:
    with Client(base_url=BASE, api_key="sk-test") as client:
        res = client.reward(
            query=["q-1", [{"role": "user", "content": "hi"}]],
            response=["r-1", "r-2"],
            reference=["ref", None],
            qtype=["CONSTRAINED", None],
            options={"length_incentive": False, "stop_strings": ["</s>"]},
        )
    assert isinstance(res, RewardResult)
    assert res.rewards == [1.0, 2.0]
    assert res.qtype == ["CONSTRAINED", "OPENENDED"]
    assert res.components.relevance == [0.5, 0.5]
    assert res.components.length_incentive == [0.0, 0.0]
    assert res.components.repetition_penalty == [0.0, 0.0]
    assert res.components.branch == ["OPENENDED", "OPENENDED"]
    assert res.model == "fake-model"

    (body,) = server.bodies("/reward")
    assert body == {
        "query": ["q-1", [{"role": "user", "content": "hi"}]],
        "response": ["r-1", "r-2"],
        "reference": ["ref", None],
        "qtype": ["CONSTRAINED", None],
        "options": {"length_incentive": False, "stop_strings": ["</s>"]},
    }
    req = server.router.routes["reward"].calls.last.request
    assert req.headers["authorization"] == "Bearer sk-test"
    assert req.headers["user-agent"] == f"r3-client/{r3_client.__version__}"
    assert req.headers["content-type"] == "application/json"


def test_optional_fields_omitted(server: FakeServer) -> None:
    with Client(base_url=BASE) as client:
        client.reward(query=["q"], response=["r-0"])
    (body,) = server.bodies("/reward")
    assert body == {"query": ["q"], "response": ["r-0"]}


def test_no_auth_header_without_key(server: FakeServer) -> None:
    with Client(base_url=BASE) as client:
        client.reward(query=["q"], response=["r-0"])
    for call in server.router.calls:
        assert "authorization" not in call.request.headers


def test_env_fallbacks(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R3_BASE_URL", BASE + "/")
    monkeypatch.setenv("R3_API_KEY", "env-key")
    with Client() as client:
        assert client.base_url == BASE
        assert client.api_key == "env-key"
        client.reward(query=["q"], response=["r-3"])
    req = server.router.routes["reward"].calls.last.request
    assert req.headers["authorization"] == "Bearer env-key"
    # explicit arguments win over the environment
    explicit = Client(base_url="http://other:9", api_key="arg-key")
    assert (explicit.base_url, explicit.api_key) == ("http://other:9", "arg-key")
    explicit.close()


def test_default_base_url() -> None:
    client = Client()
    assert client.base_url == "http://127.0.0.1:8000"
    assert client.api_key is None
    client.close()


def test_base_url_with_path_prefix() -> None:
    with respx.mock(assert_all_called=False) as router:
        router.get("http://gw.test/r3/v1/info").mock(
            return_value=httpx.Response(200, json={"model": "m", "limits": {}})
        )
        route = router.post("http://gw.test/r3/classify").mock(
            return_value=httpx.Response(200, json={"qtype": ["OPENENDED"], "prob_openended": [0.9]})
        )
        with Client(base_url="http://gw.test/r3/") as client:
            assert client.classify(query=["q"]).qtype == ["OPENENDED"]
        assert route.called


def test_relevance_and_classify(server: FakeServer) -> None:
    with Client(base_url=BASE) as client:
        rel = client.relevance(anchor=["a", "b"], text=["t-3", "t-4"])
        cls = client.classify(query=["q-90", "q-10"])
    assert rel == RelevanceResult(relevance=[3.0, 4.0], model="fake-model")
    assert cls == ClassifyResult(qtype=["OPENENDED", "CONSTRAINED"], prob_openended=[0.9, 0.1])
    assert server.bodies("/relevance") == [{"anchor": ["a", "b"], "text": ["t-3", "t-4"]}]
    assert server.bodies("/classify") == [{"query": ["q-90", "q-10"]}]


def test_info(server: FakeServer) -> None:
    server.limits = {"max_items_per_request": 7, "max_chars_per_text": 100, "other": 1}
    with Client(base_url=BASE) as client:
        info = client.info()
    assert isinstance(info, Info)
    assert info.model == "fake-model"
    assert info.version == "0.0.1"
    assert info.profile.similarity == "cosine"
    assert info.profile.relevance_range == (0.0, 1.0)
    assert info.profile.max_sequence_length == 512
    assert info.limits.max_items_per_request == 7
    assert info.limits.max_chars_per_text == 100
    assert info.limits.max_body_bytes is None
    assert info.limits.extra == {"other": 1}
    assert info.classifier is None
    assert info.raw["model"] == "fake-model"


def test_health_and_ready(server: FakeServer) -> None:
    with Client(base_url=BASE) as client:
        assert client.health() is True
        assert client.ready() is True
        server.router.routes["readyz"].mock(return_value=httpx.Response(503))
        assert client.ready() is False
        server.router.routes["healthz"].mock(side_effect=httpx.ConnectError("refused"))
        assert client.health() is False
    assert server.router.routes["readyz"].call_count == 2  # no retries


def test_wait_until_ready(server: FakeServer, sleeps: list[float]) -> None:
    server.router.routes["readyz"].side_effect = [
        httpx.Response(503),
        httpx.Response(503),
        httpx.Response(200),
    ]
    with Client(base_url=BASE) as client:
        client.wait_until_ready(timeout=30, interval=0.25)
    assert sleeps == [0.25, 0.25]


@pytest.mark.parametrize("n", [1, 3, 10, 11])
def test_chunking_preserves_order(server: FakeServer, n: int) -> None:
    server.limits = {"max_items_per_request": 3}
    queries = [f"q-{i}" for i in range(n)]
    responses = [f"r-{i}" for i in range(n)]
    with Client(base_url=BASE, max_concurrency=3) as client:
        res = client.reward(query=queries, response=responses, reference=queries)
        rel = client.relevance(anchor=queries, text=responses)
        cls = client.classify(query=queries)
    assert res.rewards == [float(i) for i in range(n)]
    assert len(res.qtype) == len(res.components.branch) == n
    assert rel.relevance == [float(i) for i in range(n)]
    assert cls.prob_openended == [i / 100 for i in range(n)]
    bodies = server.bodies("/reward")
    assert len(bodies) == -(-n // 3)
    assert all(len(b["response"]) <= 3 for b in bodies)
    assert all(b["query"] == b["reference"] for b in bodies)
    assert sorted(x for b in bodies for x in b["response"]) == sorted(responses)
    assert server.router.routes["info"].call_count == 1  # limits cached


def test_chunking_by_body_bytes(server: FakeServer) -> None:
    limit = 300
    server.limits = {"max_items_per_request": 100, "max_body_bytes": limit}
    responses = [f"{'x' * (5 + 7 * i)}-{i}" for i in range(12)]
    with Client(base_url=BASE) as client:
        res = client.reward(query=["q"] * 12, response=responses, options={"relevance": True})
    assert res.rewards == [float(i) for i in range(12)]
    reqs = server.router.routes["reward"].calls
    assert len(reqs) > 1
    assert all(len(c.request.content) <= limit for c in reqs)
    assert all(json.loads(c.request.content)["options"] == {"relevance": True} for c in reqs)


def test_sync_chunks_run_concurrently_bounded(server: FakeServer) -> None:
    server.limits = {"max_items_per_request": 1}
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}
    inner = server._reward

    def slow(request: httpx.Request) -> httpx.Response:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.02)
        with lock:
            state["now"] -= 1
        return inner(request)

    server.router.routes["reward"].side_effect = slow
    with Client(base_url=BASE, max_concurrency=2) as client:
        res = client.reward(query=["q"] * 8, response=[f"r-{i}" for i in range(8)])
    assert res.rewards == [float(i) for i in range(8)]
    assert 1 <= state["peak"] <= 2


def test_explicit_max_items_skips_info(server: FakeServer) -> None:
    with Client(base_url=BASE, max_items_per_request=2) as client:
        res = client.reward(query=["q"] * 5, response=[f"r-{i}" for i in range(5)])
    assert res.rewards == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert server.router.routes["info"].call_count == 0
    assert server.router.routes["reward"].call_count == 3


def test_info_404_means_no_chunking(server: FakeServer, make_error: Any) -> None:
    server.router.routes["info"].side_effect = None
    server.router.routes["info"].return_value = make_error(404, "not found")
    with Client(base_url=BASE) as client:
        client.reward(query=["q"] * 50, response=["r-1"] * 50)
        client.reward(query=["q"], response=["r-1"])
    assert server.router.routes["reward"].call_count == 2
    assert server.router.routes["info"].call_count == 1


def test_error_in_one_chunk_propagates(server: FakeServer, make_error: Any) -> None:
    server.limits = {"max_items_per_request": 2}
    inner = server._reward

    def flaky(request: httpx.Request) -> httpx.Response:
        if "r-bad" in json.loads(request.content)["response"]:
            return make_error(500, "kaput")
        return inner(request)

    server.router.routes["reward"].side_effect = flaky
    with Client(base_url=BASE, max_retries=0) as client, pytest.raises(InternalServerError):
        client.reward(query=["q"] * 6, response=["r-1", "r-2", "r-3", "r-bad", "r-5", "r-6"])


def test_empty_batch_sends_nothing(server: FakeServer) -> None:
    with Client(base_url=BASE) as client:
        res = client.reward(query=[], response=[])
        assert client.relevance(anchor=[], text=[]).relevance == []
        assert client.classify(query=[]).qtype == []
    assert res.rewards == [] and res.components.branch == []
    assert res.model == "fake-model"
    assert server.router.routes["reward"].call_count == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"query": ["a", "b"], "response": ["x"]},
        {"query": ["a"], "response": ["x"], "reference": ["r", "s"]},
        {"query": ["a"], "response": ["x"], "qtype": []},
    ],
)
def test_length_mismatch_is_value_error(server: FakeServer, kwargs: dict[str, Any]) -> None:
    with Client(base_url=BASE) as client, pytest.raises(InvalidInputError, match="one entry") as e:
        client.reward(**kwargs)
    assert isinstance(e.value, R3Error) and isinstance(e.value, ValueError)
    assert not server.router.calls


def test_bare_string_is_type_error(server: FakeServer) -> None:
    """Local input errors are the documented R3Error subclass (and still Type/ValueErrors)."""
    with Client(base_url=BASE) as client:
        with pytest.raises(InvalidInputError, match="query must be a list, got str") as e:
            client.reward(query="a", response=["x"])
        assert isinstance(e.value, R3Error) and isinstance(e.value, TypeError)
        with pytest.raises(InvalidInputError, match="anchor=1, text=2"):
            client.relevance(anchor=["a"], text=["x", "y"])
        with pytest.raises(InvalidInputError, match="chat messages must be mappings"):
            client.reward(query=[["not a message"]], response=["x"])
        with pytest.raises(InvalidInputError, match="options must be a mapping"):
            client.reward(query=["q"], response=["x"], options=[1])  # type: ignore[arg-type]
    assert not server.router.calls


def test_malformed_response(server: FakeServer) -> None:
    server.router.routes["reward"].side_effect = None
    server.router.routes["reward"].return_value = httpx.Response(200, json={"rewards": [1.0]})
    with Client(base_url=BASE) as client, pytest.raises(APIResponseValidationError):
        client.reward(query=["q"], response=["r"])


def test_wrong_item_count_in_response(server: FakeServer) -> None:
    server.router.routes["relevance"].side_effect = None
    server.router.routes["relevance"].return_value = httpx.Response(
        200, json={"relevance": [1.0], "model": "m"}
    )
    with Client(base_url=BASE) as client, pytest.raises(APIResponseValidationError):
        client.relevance(anchor=["a", "b"], text=["c", "d"])


def test_user_http_client_not_closed(server: FakeServer) -> None:
    http = httpx.Client()
    with Client(base_url=BASE, http_client=http) as client:
        client.classify(query=["q-1"])
    assert not http.is_closed
    http.close()
    own = Client(base_url=BASE)
    own.close()
    assert own._http.is_closed


def test_constructor_validation() -> None:
    with pytest.raises(InvalidInputError, match="max_retries"):
        Client(max_retries=-1)
    with pytest.raises(InvalidInputError, match="max_concurrency"):
        Client(max_concurrency=0)
    assert "r3.test" in repr(Client(base_url=BASE, api_key="secret"))
    assert "secret" not in repr(Client(base_url=BASE, api_key="secret"))
