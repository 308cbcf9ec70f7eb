"""The adapters' shared behaviour against the fake server: input conversion, qtype case,
fail-soft policy, per-sample isolation of refused items, pickling, batching primitives."""

from __future__ import annotations

import asyncio
import json
import pickle
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from r3_client import Client, ServiceUnavailableError, UnprocessableEntityError
from r3_client._base import DEFAULT_RETRY_TIMEOUT
from r3_client.integrations import _openrlhf, verl
from r3_client.integrations._batching import LoopBatcher, ThreadBatcher
from r3_client.integrations._common import parse_on_error, to_qtype
from r3_client.integrations.trl import AsyncR3Reward, R3Reward

if TYPE_CHECKING:
    from conftest import FakeServer

BASE = "http://r3.test"  # the fake server in conftest.py


def test_trl_standard_format(server: FakeServer) -> None:
    fn = R3Reward(base_url=BASE, options={"reward_branching": False})
    assert fn.__name__ == "r3_reward"
    out = fn(
        prompts=["p1", "p2"],
        completions=["c-1", "c-2"],
        reference=["ref1", None],
        qtype=["constrained", None],
        completion_ids=[[1], [2]],
        trainer_state=None,
    )
    fn.close()
    assert out == [1.0, 2.0]
    assert server.bodies("/reward") == [
        {
            "query": ["p1", "p2"],
            "response": ["c-1", "c-2"],
            "reference": ["ref1", None],
            "qtype": ["CONSTRAINED", None],
            "options": {"reward_branching": False},
        }
    ]


def test_trl_conversational_format(server: FakeServer) -> None:
    prompts = [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        [{"role": "user", "content": [{"type": "text", "text": "multi"}, {"type": "image"}]}],
    ]
    completions = [
        [{"role": "assistant", "content": "c-3"}],
        [{"role": "assistant", "content": "c-4"}],
    ]
    with Client(base_url=BASE) as client:
        fn = R3Reward(client, name="relevance_reward")
        assert fn(prompts, completions) == [3.0, 4.0]
        assert fn.__name__ == "relevance_reward"
    (body,) = server.bodies("/reward")
    assert body == {
        "query": [
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            [{"role": "user", "content": "multi"}],
        ],
        "response": ["c-3", "c-4"],
    }


def test_trl_all_none_columns_are_omitted(server: FakeServer) -> None:
    fn = R3Reward(base_url=BASE, reference_column="answer")
    fn(["p"], ["c-0"], answer=[None], qtype=[""])
    fn.close()
    assert server.bodies("/reward") == [{"query": ["p"], "response": ["c-0"]}]


def test_trl_length_and_qtype_checks() -> None:
    fn = R3Reward(base_url=BASE)
    with pytest.raises(ValueError):
        fn(["p1", "p2"], ["c"])
    with pytest.raises(ValueError):
        fn(["p"], ["c"], reference=["a", "b"])
    with pytest.raises(ValueError, match="OPENENDED or CONSTRAINED"):
        fn(["p"], ["c"], qtype=["closed"])
    fn.close()


def test_qtype_any_case() -> None:
    assert [to_qtype(v) for v in ("constrained", " OpenEnded ", None, "", "  ")] == [
        "CONSTRAINED",
        "OPENENDED",
        None,
        None,
        None,
    ]
    for bad in ("open", 1, ["CONSTRAINED"]):
        with pytest.raises(ValueError):
            to_qtype(bad)


def test_on_error_values() -> None:
    assert parse_on_error("raise") == "raise"
    assert parse_on_error(" None ") == "none"
    assert parse_on_error("-1.5") == -1.5
    assert parse_on_error(0) == 0.0
    for bad in ("skip", float("nan"), True, None):
        with pytest.raises(ValueError):
            parse_on_error(bad)


def _metrics() -> tuple[dict[str, list[float]], Any]:
    logged: dict[str, list[float]] = {}

    def log_metric(name: str, value: float) -> None:
        logged.setdefault(name, []).append(value)

    return logged, log_metric


def test_trl_fail_soft_after_retries(server: FakeServer, sleeps: list[float]) -> None:
    server.router.routes["reward"].mock(return_value=httpx.Response(503))
    logged, log_metric = _metrics()
    none = R3Reward(base_url=BASE, on_error="none")
    assert none(["p", "q"], ["c-1", "c-2"], log_metric=log_metric) == [None, None]
    assert none.failures == 2 and logged["r3_reward/failed"] == [2.0]
    # the client's own retries ran first: its time budget (waits recorded, not slept)
    assert len(sleeps) >= 3 and sum(sleeps) <= DEFAULT_RETRY_TIMEOUT
    value = R3Reward(base_url=BASE, on_error=-1.0)
    assert value(["p"], ["c-1"]) == [-1.0]
    with pytest.raises(ServiceUnavailableError):
        R3Reward(base_url=BASE)(["p"], ["c-1"])


def test_trl_on_error_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R3_ON_ERROR", "0.25")
    assert R3Reward(base_url=BASE).on_error == 0.25
    assert AsyncR3Reward(base_url=BASE, on_error="raise").on_error == "raise"


def test_refused_sample_fails_alone(server: FakeServer) -> None:
    """A 422 for a batch is retried sample by sample: only the bad sample gets the value."""

    def reward(request: httpx.Request) -> httpx.Response:
        if "bad" in json.loads(request.content)["response"]:
            return httpx.Response(422, json={"error": {"type": "x", "message": "bad"}})
        return server._reward(request)

    server.router.routes["reward"].mock(side_effect=reward)
    fn = R3Reward(base_url=BASE, on_error=0.0)
    assert fn(["p"] * 3, ["c-1", "bad", "c-3"]) == [1.0, 0.0, 3.0]
    assert fn.failures == 1
    with pytest.raises(UnprocessableEntityError):
        R3Reward(base_url=BASE)(["p"] * 2, ["c-1", "bad"])


def test_trl_async_reward_logs_components(server: FakeServer) -> None:
    fn = AsyncR3Reward(base_url=BASE)
    logged, log_metric = _metrics()
    extra: dict[str, list[Any]] = {}

    async def call() -> list[float | None]:
        out = await fn(
            ["p", "q"],
            ["c-5", "c-6"],
            log_metric=log_metric,
            log_extra=lambda k, v: extra.setdefault(k, v),
        )
        await fn.aclose()
        return out

    assert asyncio.run(call()) == [5.0, 6.0]
    assert logged["r3_reward/relevance"] == [0.5]  # the fake server's relevance
    assert logged["r3_reward/failed"] == [0.0]
    assert extra["r3_reward/relevance"] == [0.5, 0.5]
    assert extra["r3_reward/constrained"] == [0.0, 0.0]


def test_trl_rewards_pickle(server: FakeServer) -> None:
    with Client(base_url=BASE, api_key="k") as client:
        fn = R3Reward(client, on_error="none", name="r3")
        fn(["p"], ["c-1"])
        copy = pickle.loads(pickle.dumps(fn))
    assert (copy.__name__, copy.on_error) == ("r3", "none")
    assert copy(["p"], ["c-2"]) == [2.0]  # its own client, same URL and key
    assert server.requests[-1].headers["authorization"] == "Bearer k"
    copy.close()
    acopy = pickle.loads(pickle.dumps(AsyncR3Reward(base_url=BASE)))
    assert asyncio.run(acopy(["p"], ["c-3"])) == [3.0]


# -- batching primitives -------------------------------------------------------------------


def test_thread_batcher_fills_batches_exactly() -> None:
    sent: list[list[int]] = []
    batcher: ThreadBatcher[int, int] = ThreadBatcher(
        lambda items: sent.append(list(items)) or [i * 10 for i in items],
        window_s=600.0,  # batches go out because they are full, never by time
        max_items=4,
    )
    results: dict[int, int] = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.submit(i)))
        for i in range(12)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: i * 10 for i in range(12)}
    assert sorted(len(b) for b in sent) == [4, 4, 4]
    assert batcher.batches_sent == 3


def test_thread_batcher_failure_reaches_every_caller() -> None:
    def send(items: Any) -> list[int]:
        raise RuntimeError("down")

    batcher: ThreadBatcher[int, int] = ThreadBatcher(send, window_s=0.0, max_items=8)
    with pytest.raises(RuntimeError, match="down"):
        batcher.submit(1)


def test_loop_batcher_gathers_coroutines() -> None:
    sent: list[list[int]] = []

    async def send(items: Any) -> list[int]:
        sent.append(list(items))
        return [i + 1 for i in items]

    async def main() -> list[int]:
        batcher: LoopBatcher[int, int] = LoopBatcher(send, window_s=600.0, max_items=5)
        return list(await asyncio.gather(*(batcher.submit(i) for i in range(10))))

    assert asyncio.run(main()) == [i + 1 for i in range(10)]
    assert sent == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_loop_batcher_window_sends_a_partial_batch() -> None:
    async def send(items: Any) -> list[int]:
        return list(items)

    async def main() -> int:
        batcher: LoopBatcher[int, int] = LoopBatcher(send, window_s=0.0, max_items=100)
        return await batcher.submit(7)

    assert asyncio.run(main()) == 7


# -- veRL ------------------------------------------------------------------------------------


@pytest.fixture
def verl_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("R3_BASE_URL", BASE)
    verl.set_client(None)
    verl.configure()
    yield
    verl.get_client().close()
    verl.set_client(None)
    verl.configure()


def test_verl_compute_score_returns_components(server: FakeServer, verl_client: None) -> None:
    score = asyncio.run(
        verl.compute_score(
            "gsm8k", "s-7", "42", extra_info={"question": "what?", "qtype": "constrained"}
        )
    )
    assert score == {
        "score": 7.0,
        "r3_relevance": 0.5,
        "r3_length_incentive": 0.0,
        "r3_repetition_penalty": 0.0,
        "r3_constrained": 0.0,  # the fake server answers branch "OPENENDED"
        "r3_failed": 0.0,
    }
    assert server.bodies("/reward") == [
        {"query": ["what?"], "response": ["s-7"], "reference": ["42"], "qtype": ["CONSTRAINED"]}
    ]


def test_verl_query_sources(server: FakeServer, verl_client: None) -> None:
    np = pytest.importorskip("numpy")
    chat = [{"role": "user", "content": "hello"}]
    raw = np.empty(1, dtype=object)
    raw[0] = chat[0]

    async def main() -> list[dict[str, float]]:
        return list(
            await asyncio.gather(
                verl.compute_score("src", "s-2", None, extra_info={"prompt": chat}),
                verl.compute_score("src", "s-3", np.array(["r"]), {"raw_prompt": raw}),
            )
        )

    verl.configure(window_ms=60_000, max_items=2)  # one request, once both are waiting
    assert [r["score"] for r in asyncio.run(main())] == [2.0, 3.0]
    assert server.bodies("/reward") == [
        {"query": [chat, chat], "response": ["s-2", "s-3"], "reference": [None, "r"]}
    ]


def test_verl_sync_and_batch(server: FakeServer, verl_client: None) -> None:
    assert verl.compute_score_sync("src", "s-4", None, {"question": "q"})["score"] == 4.0
    scores = verl.compute_score_batch(
        data_sources=["a", "b", "c"],
        solution_strs=["s-1", "s-2", "s-3"],
        ground_truths=["x", ["y"], ""],
        extra_infos=[{"question": "q1"}, {"question": "q2"}, {"prompt": "q3"}],
    )
    assert scores == [1.0, 2.0, 3.0]
    body = server.bodies("/reward")[-1]
    assert body["reference"] == ["x", "y", None]
    assert body["query"] == ["q1", "q2", "q3"]


def test_verl_missing_query_and_fail_soft(server: FakeServer, verl_client: None) -> None:
    with pytest.raises(ValueError, match="R3RewardManager"):
        asyncio.run(verl.compute_score("src", "s", "ref", extra_info={}))
    server.router.routes["reward"].mock(return_value=httpx.Response(503))
    verl.configure(on_error="none")
    result = verl.compute_score_sync("src", "s-1", None, {"question": "q"})
    assert result["score"] != result["score"]  # NaN: veRL has no missing reward
    assert result["r3_failed"] == 1.0


# -- OpenRLHF reward function -----------------------------------------------------------------


@pytest.fixture
def openrlhf_server(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def answer(request: httpx.Request) -> httpx.Response:
        server.requests.append(request)
        body = json.loads(request.content)
        rewards = [float(q.rsplit("-", 1)[-1]) for q in body["query"]]
        return httpx.Response(
            200,
            json={
                "rewards": rewards,
                "scores": [r / 10 for r in rewards],
                "extra_logs": {"r3_relevance": [0.5] * len(rewards)},
            },
        )

    route = server.router.post("/openrlhf/reward", name="openrlhf").mock(side_effect=answer)
    monkeypatch.setenv("R3_BASE_URL", BASE)
    _openrlhf.set_client(None)
    yield route
    _openrlhf.set_client(None)


def test_openrlhf_reward_func(
    server: FakeServer, openrlhf_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _openrlhf.reward_func(["p r-3"], ["p"], [{"reference": "x"}])
    assert out == {
        "rewards": [3.0],
        "scores": [0.3],
        "extra_logs": {"r3_failed": [0.0], "r3_relevance": [0.5]},
    }
    assert server.bodies("/openrlhf/reward") == [
        {"query": ["p r-3"], "prompts": ["p"], "labels": [{"reference": "x"}]}
    ]
    monkeypatch.setenv("R3_OPENRLHF_EXTRA_LOGS", "0")
    assert "extra_logs" not in _openrlhf.reward_func(["a r-1", "b r-2"], ["a", "b"], None)


def test_openrlhf_fail_soft(
    server: FakeServer, openrlhf_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    openrlhf_server.mock(return_value=httpx.Response(503))
    with pytest.raises(ServiceUnavailableError):
        _openrlhf.reward_func(["p r-3"], ["p"], ["x"])
    monkeypatch.setenv("R3_ON_ERROR", "0")
    out = _openrlhf.reward_func(["p r-3"], ["p"], ["x"])
    assert out["rewards"] == [0.0] and out["extra_logs"]["r3_failed"] == [1.0]


def test_local_input_errors_are_never_fail_soft(server: FakeServer) -> None:
    """A mistake in the caller's input raises even with a fail-soft value set."""
    from r3_client import InvalidInputError
    from r3_client.integrations._common import Sample, score_samples

    with Client(base_url=BASE) as client:
        bad = [Sample(query=5, response="c-1")]  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            score_samples(client, bad, None, 0.0, "test")
    assert server.bodies("/reward") == []
