"""Several base URLs: least-outstanding choice, ejection, failover and re-probing."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from tests_support import free_port

from r3_client import AsyncClient, Client, InternalServerError
from r3_client._endpoints import (
    POOL_BASE_URL,
    EndpointPool,
    Endpoints,
    busy_for,
    is_gateway_error,
)

QUERIES = [f"Explain topic number {i} in a few words." for i in range(24)]
RESPONSES = [f"Topic {i} is about things that matter {'a lot ' * (i % 5)}." for i in range(24)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pool_prefers_least_outstanding_and_takes_turns() -> None:
    pool = EndpointPool(["http://a", "http://b", "http://c"])
    picks = [pool.pick(set()) for _ in range(3)]
    assert sorted(i for i, _ in picks) == [0, 1, 2]  # one each while all are busy
    pool.finish(1, ok=True)
    assert pool.pick(set()) == (1, False)  # the only one with nothing in flight
    for i in (0, 1, 2):
        pool.finish(i, ok=True)
    seen = []
    for _ in range(6):
        index, _ = pool.pick(set())
        pool.finish(index, ok=True)
        seen.append(index)
    assert sorted(seen) == [0, 0, 1, 1, 2, 2]  # ties go round


def test_pool_ejects_probes_after_the_cooldown_and_backs_off() -> None:
    clock = FakeClock()
    pool = EndpointPool(["http://a", "http://b"], eject_s=1.0, max_eject_s=4.0, clock=clock)
    index, _ = pool.pick({1})
    pool.finish(index, ok=False)
    assert [s.healthy for s in pool.stats()] == [False, True]
    assert pool.pick(set()) == (1, False)  # a is ejected
    pool.finish(1, ok=True)
    clock.now += 1.0
    assert pool.pick({1}) == (0, True)  # cooldown over: probe first
    assert pool.pick({1}) == (0, False)  # while one probes, others go unprobed (last resort)
    pool.finish(0, ok=None)
    pool.probed(0, ok=False)  # still down: ejected for 2 s now
    clock.now += 1.5
    assert pool.pick({1}) == (0, False)  # not due yet: only as the last resort
    pool.finish(0, ok=None)
    clock.now += 0.5
    assert pool.pick({1}) == (0, True)
    assert pool.probed(0, ok=True)
    assert pool.stats()[0].healthy and pool.stats()[0].failures == 1
    assert pool.pick({0, 1}) is None


def _full(status: int = 503, retry_after: str | None = "2", kind: str = "overloaded") -> Any:
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    body = {"error": {"type": kind, "message": "queue full", "details": []}}
    return httpx.Response(status, json=body, headers=headers)


def test_a_full_endpoint_is_passed_over_for_its_retry_after_not_ejected() -> None:
    clock = FakeClock()
    pool = EndpointPool(["http://a", "http://b"], eject_s=1.0, max_eject_s=4.0, clock=clock)
    assert pool.pick(set()) == (0, False)
    assert pool.settle(0, _full(retry_after="2")) is False  # try the next one
    a = pool.stats()[0]
    assert (a.healthy, a.busy, a.refusals, a.failures) == (True, True, 1, 0)
    assert pool.pick({0}) == (1, False)
    assert pool.settle(1, httpx.Response(200, json={})) is True
    for _ in range(3):  # while a is full, b takes everything, without probes
        assert pool.pick(set()) == (1, False)
        pool.finish(1, ok=True)
    clock.now += 2.0  # Retry-After over: a is picked again, with no /readyz probe
    assert sorted([pool.pick(set()), pool.pick(set())]) == [(0, False), (1, False)]
    pool.finish(1, ok=True)
    for _ in range(5):  # full again and again: never ejected, never backed off
        pool.settle(0, _full(retry_after="30"))
        assert pool.stats()[0].healthy
        clock.now += 10.0  # at most MAX_BUSY_S (10 s), whatever the Retry-After
        assert pool.pick({1}) == (0, False)
    assert pool.stats()[0].refusals == 6


def test_which_answers_mean_full() -> None:
    assert busy_for(_full()) == 2.0
    assert busy_for(_full(status=429, kind="rate_limited")) == 2.0
    assert busy_for(_full(retry_after=None)) == 1.0  # no Retry-After: the ejection time
    assert busy_for(_full(retry_after="600")) == 10.0
    assert busy_for(_full(kind="service_unavailable")) is None  # not ready, stalled: eject
    assert busy_for(httpx.Response(503, text="busy")) is None  # not the service's
    assert busy_for(httpx.Response(200, json={})) is None
    pool = EndpointPool(["http://a", "http://b"])
    pool.pick(set())
    assert pool.settle(0, _full(kind="service_unavailable")) is False
    assert not pool.stats()[0].healthy and pool.stats()[0].failures == 1


@respx.mock
def test_a_client_goes_to_the_endpoint_with_room_at_once() -> None:
    info = {"model": "m", "version": "0", "profile": {}, "limits": {}, "classifier": None}
    respx.get(url__regex=r"http://[ab]\.test/v1/info").mock(
        return_value=httpx.Response(200, json=info)
    )
    full = respx.post("http://a.test/relevance").mock(return_value=_full(retry_after="5"))
    room = respx.post("http://b.test/relevance").mock(
        return_value=httpx.Response(200, json={"relevance": [0.5], "model": "m"})
    )
    with Client(base_url=["http://a.test", "http://b.test"], max_retries=0) as client:
        for _ in range(4):
            assert client.relevance(anchor=["a"], text=["b"]).relevance == [0.5]
        assert client.endpoints is not None
        a, b = client.endpoints.stats()
    assert full.call_count == 1 and room.call_count == 4  # a is left alone while full
    assert (a.healthy, a.busy, a.refusals) == (True, True, 1)


def test_base_url_forms() -> None:
    assert Endpoints.parse("http://a/").base_url == "http://a"
    assert Endpoints.parse("http://a/").pool is None
    pooled = Endpoints.parse("http://a, http://b/")
    assert pooled.base_url == POOL_BASE_URL
    assert pooled.pool is not None and pooled.pool.urls == ["http://a", "http://b"]
    assert Endpoints.parse(["http://a", "http://b"]).pool is not None
    with pytest.raises(ValueError, match="no URL"):
        Endpoints.parse(" , ")
    with pytest.raises(ValueError, match="http_client"):
        Client(base_url=["http://a", "http://b"], http_client=httpx.Client())


def test_env_var_takes_a_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R3_BASE_URL", "http://a:1,http://b:2")
    with Client() as client:
        assert client.endpoints is not None
        assert client.endpoints.urls == ["http://a:1", "http://b:2"]


def test_gateway_500_is_told_from_the_service_500() -> None:
    plain = httpx.Response(500, text="Internal Server Error")
    ours = httpx.Response(500, json={"error": {"type": "internal_error", "message": "x"}})
    assert is_gateway_error(plain)
    assert not is_gateway_error(ours)
    assert not is_gateway_error(httpx.Response(503, text="busy"))


@respx.mock
def test_client_retries_a_gateway_500_but_not_the_services() -> None:
    route = respx.post("http://gw.test/relevance").mock(
        side_effect=[
            httpx.Response(500, text="Internal Server Error"),
            httpx.Response(200, json={"relevance": [0.5], "model": "m"}),
        ]
    )
    with Client(base_url="http://gw.test", max_items_per_request=8) as client:
        assert client.relevance(anchor=["a"], text=["b"]).relevance == [0.5]
    assert route.call_count == 2
    respx.post("http://svc.test/relevance").mock(
        return_value=httpx.Response(500, json={"error": {"type": "internal", "message": "x"}})
    )
    with Client(base_url="http://svc.test", max_items_per_request=8) as client:
        with pytest.raises(InternalServerError):
            client.relevance(anchor=["a"], text=["b"])


def _score_all(client: Client, threads: int = 6) -> list[float]:
    def one(i: int) -> list[float]:
        result = client.reward(query=QUERIES[i : i + 4], response=RESPONSES[i : i + 4])
        return list(result.rewards)

    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(one, range(0, len(QUERIES), 4)))
    return [r for part in parts for r in part]


@pytest.mark.integration
async def test_async_pool_skips_a_dead_endpoint_without_retries(live_server: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with AsyncClient(base_url=[dead, live_server], max_retries=0) as client:
        for _ in range(4):
            result = await client.reward(query=QUERIES[:4], response=RESPONSES[:4])
            assert len(result.rewards) == 4
        stats = client.endpoints.stats() if client.endpoints else []
    assert stats[0].failures == 1 and not stats[0].healthy  # ejected once, then skipped
    assert stats[1].requests >= 4 and stats[1].failures == 0


@pytest.mark.integration
def test_pool_spreads_fails_over_and_readmits(
    server_factory: Any, minilm_dir: Path, live_server: str
) -> None:
    victim, survivor = server_factory(minilm_dir), server_factory(minilm_dir)
    victim.wait_ready()
    survivor.wait_ready()
    with Client(base_url=live_server) as single:
        expected = list(single.reward(query=QUERIES, response=RESPONSES).rewards)
    with Client(base_url=[victim.url, survivor.url], max_retries=0) as client:
        pool = client.endpoints
        assert pool is not None
        for _ in range(3):
            assert _score_all(client) == pytest.approx(expected, abs=1e-5)
        assert all(s.requests >= 3 and s.failures == 0 for s in pool.stats())
        victim.stop()  # SIGTERM: drains, then the port closes
        for _ in range(3):  # no retries allowed: failover alone answers everything
            assert _score_all(client) == pytest.approx(expected, abs=1e-5)
        assert pool.stats()[0].failures >= 1 and not pool.stats()[0].healthy
        revived = server_factory(minilm_dir, port=victim.port)
        revived.wait_ready()
        before = pool.stats()[0].requests
        # Its ejection time runs out, a /readyz probe passes and it serves again.
        for _ in range(5000):
            client.reward(query=QUERIES[:2], response=RESPONSES[:2])
            if pool.stats()[0].healthy and pool.stats()[0].requests > before:
                break
        assert pool.stats()[0].healthy and pool.stats()[0].requests > before
        assert all(s.in_flight == 0 for s in pool.stats())


def test_adapters_take_several_base_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    from r3_client.integrations import verl
    from r3_client.integrations.trl import R3Reward

    reward = R3Reward(base_url=["http://a:1", "http://b:2"])
    assert reward.client.endpoints is not None
    assert reward.client.endpoints.urls == ["http://a:1", "http://b:2"]
    reward.close()
    monkeypatch.setenv("R3_BASE_URL", "http://a:1,http://b:2")
    verl.set_client(None)
    try:
        pool = verl.get_client().endpoints
        assert pool is not None and pool.urls == ["http://a:1", "http://b:2"]
    finally:
        verl.set_client(None)


def test_a_reward_made_from_a_pool_client_pickles_with_every_url() -> None:
    import pickle

    from r3_client.integrations.trl import R3Reward

    with Client(base_url=["http://a:1", "http://b:2"]) as client:
        reward = R3Reward(client)
        copy = pickle.loads(pickle.dumps(reward))
    try:
        assert copy.client.endpoints is not None
        assert copy.client.endpoints.urls == ["http://a:1", "http://b:2"]
    finally:
        copy.close()


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with 200 over keep-alive; the server counts its connections."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def counting_servers() -> Iterator[list[http.server.ThreadingHTTPServer]]:
    servers = []
    for _ in range(2):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
        server.connections = 0  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_each_endpoint_keeps_its_own_connections(
    counting_servers: list[http.server.ThreadingHTTPServer], asynchronous: bool
) -> None:
    """No endpoint's idle connection is closed to make room for another endpoint's.

    A connection pool shared by the endpoints, when full, closes one host's idle connection
    to open one to the other; under many threads it can close a connection another thread
    has just taken, and that request then hangs until its read timeout.
    """
    urls = [f"http://127.0.0.1:{s.server_address[1]}" for s in counting_servers]
    endpoints = Endpoints.parse(urls)
    limits = httpx.Limits(max_connections=1)  # a full pool at every switch of endpoint
    if asynchronous:
        async with httpx.AsyncClient(
            base_url=POOL_BASE_URL, **endpoints.async_httpx_options(limits)
        ) as aclient:
            codes = [(await aclient.get("/readyz")).status_code for _ in range(10)]
    else:
        with httpx.Client(base_url=POOL_BASE_URL, **endpoints.httpx_options(limits)) as client:
            codes = [client.get("/readyz").status_code for _ in range(10)]
    assert codes == [200] * 10
    assert endpoints.pool is not None
    assert [s.requests for s in endpoints.pool.stats()] == [5, 5]  # in turn
    assert [s.connections for s in counting_servers] == [1, 1]  # type: ignore[attr-defined]
