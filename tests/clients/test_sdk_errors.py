"""Retries, Retry-After, backoff and the exception mapping (sync and async)."""

from __future__ import annotations

import email.utils
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fake_replies import ok_reward

from r3_client import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    R3Error,
    RateLimitError,
    RequestTooLargeError,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from r3_client._base import parse_retry_after

if TYPE_CHECKING:
    from conftest import FakeServer

BASE = "http://r3.test"  # the fake server in conftest.py

RETRYABLE = [408, 429, 502, 503, 504]
FINAL_ERROR = {
    408: APIError,
    429: RateLimitError,
    502: InternalServerError,
    503: ServiceUnavailableError,
    504: InternalServerError,
}


def _set(server: FakeServer, route: str, *responses: Any) -> None:
    server.router.routes[route].side_effect = list(responses)


@pytest.mark.parametrize("status", RETRYABLE)
def test_retry_honours_retry_after_seconds(
    server: FakeServer, sleeps: list[float], make_error: Any, status: int
) -> None:
    _set(server, "reward", make_error(status, headers={"Retry-After": "2"}), ok_reward())
    with Client(base_url=BASE) as client:
        res = client.reward(query=["q"], response=["r"])
    assert res.rewards == [0.25]
    assert server.router.routes["reward"].call_count == 2
    assert sleeps == [2.0]


@pytest.mark.parametrize("status", RETRYABLE)
@pytest.mark.asyncio
async def test_async_retry_honours_retry_after(
    server: FakeServer, sleeps: list[float], make_error: Any, status: int
) -> None:
    _set(server, "reward", make_error(status, headers={"Retry-After": "1.5"}), ok_reward())
    async with AsyncClient(base_url=BASE) as client:
        res = await client.reward(query=["q"], response=["r"])
    assert res.rewards == [0.25]
    assert sleeps == [1.5]


def test_retry_after_http_date(server: FakeServer, sleeps: list[float], make_error: Any) -> None:
    date = email.utils.formatdate(time.time() + 10, usegmt=True)
    _set(server, "reward", make_error(503, headers={"Retry-After": date}), ok_reward())
    with Client(base_url=BASE) as client:
        client.reward(query=["q"], response=["r"])
    assert len(sleeps) == 1 and 8.0 <= sleeps[0] <= 10.0


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 42, usegmt=True), now=now) == 42.0
    assert parse_retry_after(email.utils.formatdate(now - 42, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize("status", RETRYABLE)
def test_backoff_then_typed_error(
    server: FakeServer, sleeps: list[float], make_error: Any, status: int
) -> None:
    server.router.routes["reward"].side_effect = None
    server.router.routes["reward"].return_value = make_error(status, "busy")
    with Client(base_url=BASE, max_retries=3) as client, pytest.raises(APIError) as ei:
        client.reward(query=["q"], response=["r"])
    assert type(ei.value) is FINAL_ERROR[status]
    assert ei.value.status_code == status
    assert server.router.routes["reward"].call_count == 4
    # jitter disabled by the fixture; a 504 (the same heavy request) backs off longer
    assert sleeps == ([2.0, 4.0, 8.0] if status == 504 else [0.5, 1.0, 2.0])


def test_max_retries_zero(server: FakeServer, sleeps: list[float], make_error: Any) -> None:
    _set(server, "reward", make_error(503, headers={"Retry-After": "1"}), ok_reward())
    with Client(base_url=BASE, max_retries=0) as client, pytest.raises(ServiceUnavailableError):
        client.reward(query=["q"], response=["r"])
    assert sleeps == []


def test_long_retry_after_is_not_waited(
    server: FakeServer, sleeps: list[float], make_error: Any
) -> None:
    _set(server, "reward", make_error(429, headers={"Retry-After": "3600"}), ok_reward())
    with Client(base_url=BASE) as client, pytest.raises(RateLimitError) as ei:
        client.reward(query=["q"], response=["r"])
    assert ei.value.retry_after == 3600.0
    assert sleeps == []


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, APIError),
        (413, RequestTooLargeError),
        (422, UnprocessableEntityError),
        (500, InternalServerError),
        (501, InternalServerError),
    ],
)
def test_non_retryable_status_maps_to_exception(
    server: FakeServer, sleeps: list[float], make_error: Any, status: int, exc: type[APIError]
) -> None:
    _set(server, "reward", make_error(status, "bad input"), ok_reward())
    with Client(base_url=BASE) as client, pytest.raises(exc) as ei:
        client.reward(query=["q"], response=["r"])
    err = ei.value
    assert type(err) is exc
    assert err.status_code == status
    assert err.message == "bad input"
    assert err.body == {
        "error": {
            "type": f"http_{status}",
            "message": "bad input",
            "details": [{"field": "response", "index": 1, "message": "bad input"}],
        }
    }
    assert err.type == f"http_{status}"
    assert err.details[0]["index"] == 1
    assert f"HTTP {status}" in str(err)
    assert server.router.routes["reward"].call_count == 1
    assert sleeps == []


@pytest.mark.asyncio
async def test_async_no_retry_on_422(
    server: FakeServer, sleeps: list[float], make_error: Any
) -> None:
    _set(server, "reward", make_error(422, "invalid"), ok_reward())
    async with AsyncClient(base_url=BASE) as client:
        with pytest.raises(UnprocessableEntityError) as ei:
            await client.reward(query=["q"], response=["r"])
    assert ei.value.body["error"]["message"] == "invalid"
    assert server.router.routes["reward"].call_count == 1
    assert sleeps == []


def test_non_json_error_body(server: FakeServer) -> None:
    server.router.routes["reward"].side_effect = None
    server.router.routes["reward"].return_value = httpx.Response(400, text="plain failure")
    with Client(base_url=BASE) as client, pytest.raises(BadRequestError) as ei:
        client.reward(query=["q"], response=["r"])
    assert ei.value.body == "plain failure"
    assert ei.value.message == "plain failure"
    assert ei.value.type is None


def test_connection_error_retried(server: FakeServer, sleeps: list[float]) -> None:
    _set(server, "reward", httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), ok_reward())
    with Client(base_url=BASE) as client:
        assert client.reward(query=["q"], response=["r"]).rewards == [0.25]
    assert sleeps == [0.5, 2.0]  # a read timeout backs off longer


def test_connection_error_exhausted(server: FakeServer, sleeps: list[float]) -> None:
    server.router.routes["reward"].side_effect = httpx.ConnectError("refused")
    with Client(base_url=BASE, max_retries=2) as client, pytest.raises(APIConnectionError) as ei:
        client.reward(query=["q"], response=["r"])
    assert not isinstance(ei.value, APITimeoutError)
    assert server.router.routes["reward"].call_count == 3
    assert len(sleeps) == 2


@pytest.mark.asyncio
async def test_async_timeout_exhausted(server: FakeServer, sleeps: list[float]) -> None:
    server.router.routes["reward"].side_effect = httpx.ReadTimeout("slow")
    async with AsyncClient(base_url=BASE, max_retries=1) as client:
        with pytest.raises(APITimeoutError):
            await client.reward(query=["q"], response=["r"])
    assert server.router.routes["reward"].call_count == 2
    assert sleeps == [2.0]


def test_info_errors_are_raised(server: FakeServer, make_error: Any) -> None:
    server.router.routes["info"].side_effect = None
    server.router.routes["info"].return_value = make_error(401, "no key")
    with Client(base_url=BASE) as client, pytest.raises(AuthenticationError):
        client.reward(query=["q"], response=["r"])


def test_hierarchy() -> None:
    for cls in (
        APIError,
        APIConnectionError,
        APITimeoutError,
        BadRequestError,
        InternalServerError,
    ):
        assert issubclass(cls, R3Error)
    assert issubclass(UnprocessableEntityError, BadRequestError)
    assert issubclass(ServiceUnavailableError, InternalServerError)
    assert issubclass(APITimeoutError, APIConnectionError)
    for cls in (
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        RequestTooLargeError,
        RateLimitError,
    ):
        assert issubclass(cls, APIError)
