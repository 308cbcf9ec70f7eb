"""The retry budget is time, not a count: restarts of 30 s and more are ridden through.

Sleeps are recorded, not slept (conftest ``sleeps``); the budget counts them, so these
tests run in milliseconds while the client waits tens of seconds of its own time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fake_replies import ok_reward

import r3_client._base
from r3_client import APIConnectionError, AsyncClient, Client, ServiceUnavailableError
from r3_client._base import DEFAULT_RETRY_TIMEOUT

if TYPE_CHECKING:
    from conftest import FakeServer

BASE = "http://r3.test"


def _refusals(seconds: float) -> list[Any]:
    """Connection errors for as many retries as the default backoff needs to wait ``seconds``."""
    waits, total = [], 0.0
    while total < seconds:
        delay = min(0.5 * 2 ** len(waits), 8.0)
        waits.append(delay)
        total += delay
    return [httpx.ConnectError("connection refused")] * len(waits)


def test_default_client_rides_through_a_35_second_restart(
    server: FakeServer, sleeps: list[float]
) -> None:
    server.router.routes["reward"].side_effect = [*_refusals(35.0), ok_reward()]
    with Client(base_url=BASE) as client:
        assert client.reward(query=["q"], response=["r"]).rewards == [0.25]
    assert sum(sleeps) >= 35.0
    assert sleeps[:4] == [0.5, 1.0, 2.0, 4.0] and max(sleeps) == 8.0  # exponential, capped


async def test_async_client_rides_through_a_35_second_restart(
    server: FakeServer, sleeps: list[float]
) -> None:
    server.router.routes["reward"].side_effect = [*_refusals(35.0), ok_reward()]
    async with AsyncClient(base_url=BASE) as client:
        assert (await client.reward(query=["q"], response=["r"])).rewards == [0.25]
    assert sum(sleeps) >= 35.0


def test_gives_up_when_the_time_budget_is_spent(server: FakeServer, sleeps: list[float]) -> None:
    server.router.routes["reward"].side_effect = httpx.ConnectError("connection refused")
    with Client(base_url=BASE) as client, pytest.raises(APIConnectionError):
        client.reward(query=["q"], response=["r"])
    assert DEFAULT_RETRY_TIMEOUT - 8.0 < sum(sleeps) <= DEFAULT_RETRY_TIMEOUT


def test_the_budget_is_configurable(server: FakeServer, sleeps: list[float]) -> None:
    server.router.routes["reward"].side_effect = httpx.ConnectError("connection refused")
    with Client(base_url=BASE, retry_timeout=5.0) as client, pytest.raises(APIConnectionError):
        client.reward(query=["q"], response=["r"])
    assert sleeps == [0.5, 1.0, 2.0]  # the next wait (4 s) would pass 5 s
    with Client(base_url=BASE, retry_timeout=0.0) as client, pytest.raises(APIConnectionError):
        client.reward(query=["q"], response=["r"])


def test_max_retries_still_caps_the_count(server: FakeServer, sleeps: list[float]) -> None:
    server.router.routes["reward"].side_effect = httpx.ConnectError("connection refused")
    with Client(base_url=BASE, max_retries=2) as client, pytest.raises(APIConnectionError):
        client.reward(query=["q"], response=["r"])
    assert len(sleeps) == 2


def test_retry_after_is_honoured_with_jitter(
    server: FakeServer, sleeps: list[float], make_error: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(r3_client._base.random, "random", lambda: 1.0)  # the most jitter
    busy = make_error(503, headers={"Retry-After": "10"})
    server.router.routes["reward"].side_effect = [busy, busy, ok_reward()]
    with Client(base_url=BASE) as client:
        client.reward(query=["q"], response=["r"])
    assert sleeps == [pytest.approx(11.0), pytest.approx(11.0)]  # at most 10% later


def test_retry_after_past_the_budget_is_raised_at_once(
    server: FakeServer, sleeps: list[float], make_error: Any
) -> None:
    busy = make_error(503, headers={"Retry-After": "45"})
    server.router.routes["reward"].side_effect = [busy, busy, ok_reward()]
    with Client(base_url=BASE) as client, pytest.raises(ServiceUnavailableError) as info:
        client.reward(query=["q"], response=["r"])
    assert sleeps == [45.0]  # 45 s fit the 60 s budget once, not twice
    assert info.value.retry_after == 45.0


def test_a_504_is_never_resent_at_once(
    server: FakeServer, sleeps: list[float], make_error: Any
) -> None:
    late = make_error(504, "request timed out")
    server.router.routes["reward"].side_effect = [late, late, late, ok_reward()]
    with Client(base_url=BASE) as client:
        client.reward(query=["q"], response=["r"])
    assert sleeps == [2.0, 4.0, 8.0]


def test_the_adapters_inherit_the_client_defaults() -> None:
    from r3_client.integrations._common import client_options
    from r3_client.integrations.trl import R3Reward

    for client in (Client(**client_options()), R3Reward(base_url=BASE).client):
        assert client.retry_timeout == DEFAULT_RETRY_TIMEOUT and client.max_retries is None
        client.close()
