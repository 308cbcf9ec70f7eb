"""Async client: requests, results, env fallbacks, concurrent chunking."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx
import pytest

import r3_client
from r3_client import AsyncClient, InternalServerError

if TYPE_CHECKING:
    from conftest import FakeServer

BASE = "http://r3.test"  # the fake server in conftest.py

pytestmark = pytest.mark.asyncio


async def test_reward_relevance_classify_info(server: FakeServer) -> None:
    server.limits = {"max_items_per_request": 100}
    async with AsyncClient(base_url=BASE, api_key="k") as client:
        res = await client.reward(
            query=["q"], response=["r-5"], reference=["ref"], options={"relevance": False}
        )
        rel = await client.relevance(anchor=["a"], text=["t-2"])
        cls = await client.classify(query=["q-70"])
        info = await client.info()
        assert await client.health() is True
        assert await client.ready() is True
    assert res.rewards == [5.0] and res.model == "fake-model"
    assert rel.relevance == [2.0]
    assert cls.qtype == ["OPENENDED"] and cls.prob_openended == [0.7]
    assert info.limits.max_items_per_request == 100
    assert server.bodies("/reward") == [
        {"query": ["q"], "response": ["r-5"], "reference": ["ref"], "options": {"relevance": False}}
    ]
    req = server.router.routes["reward"].calls.last.request
    assert req.headers["authorization"] == "Bearer k"
    assert req.headers["user-agent"] == f"r3-client/{r3_client.__version__}"


async def test_env_fallbacks(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R3_BASE_URL", BASE)
    monkeypatch.setenv("R3_API_KEY", "env-key")
    async with AsyncClient() as client:
        await client.classify(query=["q-1"])
    req = server.router.routes["classify"].calls.last.request
    assert req.headers["authorization"] == "Bearer env-key"


async def test_ready_false_on_503_and_connection_error(server: FakeServer) -> None:
    server.router.routes["readyz"].mock(return_value=httpx.Response(503))
    server.router.routes["healthz"].mock(side_effect=httpx.ConnectError("refused"))
    async with AsyncClient(base_url=BASE) as client:
        assert await client.ready() is False
        assert await client.health() is False


@pytest.mark.parametrize("n", [0, 1, 4, 9])
async def test_chunking_order_and_concurrency(server: FakeServer, n: int) -> None:
    server.limits = {"max_items_per_request": 2}
    state = {"now": 0, "peak": 0}
    inner = server._reward

    async def slow(request: httpx.Request) -> httpx.Response:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        # later chunks finish first, so order must come from re-assembly
        body_len = len(request.content)
        await asyncio.sleep(0.001 * (50 - body_len % 50))
        state["now"] -= 1
        return inner(request)

    server.router.routes["reward"].side_effect = slow
    responses = [f"r-{i}" for i in range(n)]
    async with AsyncClient(base_url=BASE, max_concurrency=3) as client:
        res = await client.reward(query=["q"] * n, response=responses)
    assert res.rewards == [float(i) for i in range(n)]
    assert server.router.routes["reward"].call_count == -(-n // 2)
    assert state["peak"] <= 3
    if n >= 6:
        assert state["peak"] >= 2


async def test_limits_fetched_once_under_concurrency(server: FakeServer) -> None:
    server.limits = {"max_items_per_request": 3}
    async with AsyncClient(base_url=BASE) as client:
        results = await asyncio.gather(
            *(
                client.relevance(anchor=["a"] * 7, text=[f"t-{i}" for i in range(7)])
                for _ in range(5)
            )
        )
    assert all(r.relevance == [float(i) for i in range(7)] for r in results)
    assert server.router.routes["info"].call_count == 1
    assert server.router.routes["relevance"].call_count == 15


async def test_failed_chunk_cancels_and_raises(server: FakeServer, make_error: Any) -> None:
    server.limits = {"max_items_per_request": 1}
    inner = server._classify

    async def flaky(request: httpx.Request) -> httpx.Response:
        if b"q-3" in request.content:
            return make_error(500, "kaput")
        await asyncio.sleep(0.01)
        return inner(request)

    server.router.routes["classify"].side_effect = flaky
    async with AsyncClient(base_url=BASE, max_retries=0, max_concurrency=2) as client:
        with pytest.raises(InternalServerError, match="kaput"):
            await client.classify(query=[f"q-{i}" for i in range(8)])


async def test_length_mismatch(server: FakeServer) -> None:
    async with AsyncClient(base_url=BASE) as client:
        with pytest.raises(ValueError):
            await client.reward(query=["a"], response=["b", "c"])
        with pytest.raises(TypeError):
            await client.classify(query="just a string")
    assert not server.router.calls


async def test_wait_until_ready(server: FakeServer, sleeps: list[float]) -> None:
    server.router.routes["readyz"].side_effect = [httpx.Response(503), httpx.Response(200)]
    async with AsyncClient(base_url=BASE) as client:
        await client.wait_until_ready(timeout=10, interval=0.5)
    assert sleeps == [0.5]


async def test_user_http_client_not_closed(server: FakeServer) -> None:
    http = httpx.AsyncClient()
    async with AsyncClient(base_url=BASE, http_client=http) as client:
        await client.classify(query=["q-1"])
    assert not http.is_closed
    await http.aclose()
