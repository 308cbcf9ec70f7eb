"""Contract test: the real client against a live server.

Needs the ``live_server`` fixture (a base URL string) from ``tests/conftest.py``,
which starts uvicorn with a real model.
"""

from __future__ import annotations

import math

import pytest

from r3_client import AsyncClient, Client, UnprocessableEntityError

pytestmark = pytest.mark.integration


def _finite(values: list[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def test_info_and_health(live_server: str) -> None:
    with Client(base_url=live_server) as client:
        client.wait_until_ready(timeout=120)
        assert client.health() is True
        assert client.ready() is True
        info = client.info()
    assert info.model
    assert info.version
    assert info.limits.max_items_per_request is not None
    assert info.limits.max_items_per_request >= 1
    assert info.limits.max_chars_per_text is not None
    assert info.limits.max_body_bytes is not None
    assert info.profile.similarity in {"dot", "cosine"}
    assert info.profile.relevance_range is not None


def test_reward(live_server: str) -> None:
    with Client(base_url=live_server) as client:
        res = client.reward(
            query=[
                "Explain why the sky is blue.",
                [{"role": "user", "content": "What is 2 + 2?"}],
                "Name the capital of France.",
            ],
            response=[
                "Sunlight scatters off air molecules; blue light scatters the most.",
                "4",
                "Paris is the capital of France.",
            ],
            reference=[None, "4", "Paris"],
            qtype=["OPENENDED", "CONSTRAINED", None],
        )
        model = client.info().model
    assert len(res.rewards) == 3 and _finite(res.rewards)
    assert res.qtype[:2] == ["OPENENDED", "CONSTRAINED"]
    assert all(q in {"OPENENDED", "CONSTRAINED"} for q in res.qtype)
    c = res.components
    assert len(c.relevance) == len(c.length_incentive) == len(c.repetition_penalty) == 3
    assert len(c.branch) == 3 and all(isinstance(b, str) and b for b in c.branch)
    assert _finite(c.relevance + c.length_incentive + c.repetition_penalty)
    assert res.model == model


def test_reward_options_and_validation(live_server: str) -> None:
    with Client(base_url=live_server) as client:
        res = client.reward(
            query=["Describe a cat."],
            response=["A cat is a small furry animal. A cat is a small furry animal."],
            options={"length_incentive": False, "repetition_penalty": False},
        )
        assert len(res.rewards) == 1 and _finite(res.rewards)
        with pytest.raises(UnprocessableEntityError) as ei:
            client.reward(query=["q"], response=["r"], qtype=["NOT_A_TYPE"])
    assert ei.value.status_code == 422
    assert isinstance(ei.value.body, dict) and "error" in ei.value.body
    assert ei.value.details and ei.value.details[0]["field"].startswith("qtype")


def test_relevance_orders_related_text_higher(live_server: str) -> None:
    with Client(base_url=live_server) as client:
        res = client.relevance(
            anchor=["How do I bake bread?", "How do I bake bread?"],
            text=[
                "Mix flour, water, yeast and salt, knead, let it rise, then bake.",
                "The stock market closed lower on Tuesday.",
            ],
        )
    assert len(res.relevance) == 2 and _finite(res.relevance)
    assert res.relevance[0] > res.relevance[1]
    assert res.model


def test_classify(live_server: str) -> None:
    with Client(base_url=live_server) as client:
        res = client.classify(
            query=["Write a poem about autumn.", "What is the boiling point of water in Celsius?"]
        )
    assert len(res.qtype) == 2
    assert all(q in {"OPENENDED", "CONSTRAINED"} for q in res.qtype)
    assert all(0.0 <= p <= 1.0 for p in res.prob_openended)
    assert res.uncertain is not None and len(res.uncertain) == 2


def test_classify_chunks_keep_the_uncertain_flags(live_server: str) -> None:
    queries = [f"Question {i}: what is {i} plus {i}?" for i in range(5)]
    with Client(base_url=live_server) as client:
        whole = client.classify(query=queries)
    with Client(base_url=live_server, max_items_per_request=2) as client:
        chunked = client.classify(query=queries)
    assert chunked.uncertain == whole.uncertain and chunked.qtype == whole.qtype


def test_chunked_batch_matches_single_requests(live_server: str) -> None:
    queries = [f"Tell me fact number {i} about the ocean." for i in range(7)]
    responses = [f"Ocean fact {i}: the ocean covers most of Earth." for i in range(7)]
    with Client(base_url=live_server) as client:
        whole = client.reward(query=queries, response=responses)
    with Client(base_url=live_server, max_items_per_request=2, max_concurrency=3) as client:
        chunked = client.reward(query=queries, response=responses)
    assert chunked.rewards == pytest.approx(whole.rewards, rel=1e-4, abs=1e-5)
    assert chunked.qtype == whole.qtype


@pytest.mark.asyncio
async def test_async_client(live_server: str) -> None:
    async with AsyncClient(base_url=live_server, max_items_per_request=2) as client:
        res = await client.reward(
            query=["Say hi.", "Say bye.", "Count to three."],
            response=["Hi!", "Bye!", "One, two, three."],
        )
        rel = await client.relevance(anchor=["cats"], text=["Cats are felines."])
    assert len(res.rewards) == 3 and _finite(res.rewards)
    assert len(rel.relevance) == 1


def test_batch_over_server_limit_is_split(live_server: str) -> None:
    with Client(base_url=live_server) as client:
        limit = client.info().limits.max_items_per_request
        assert limit is not None
        n = min(limit * 2 + 3, 1000)
        res = client.reward(
            query=[f"Question {i}?" for i in range(n)],
            response=[f"Answer {i}." for i in range(n)],
        )
    assert len(res.rewards) == n and _finite(res.rewards)
