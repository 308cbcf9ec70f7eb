"""Fixtures for the Python client tests: a respx-mocked fake server and a no-op sleep."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from fake_replies import reward_response

try:
    import r3_client
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python" / "src"))

import r3_client._base
import r3_client._client

BASE = "http://r3.test"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs a live R^3 server (live_server)")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("R3_BASE_URL", raising=False)
    monkeypatch.delenv("R3_API_KEY", raising=False)


@pytest.fixture(autouse=True)
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record retry sleeps instead of sleeping; jitter is disabled."""
    recorded: list[float] = []

    def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)

    async def fake_async_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(r3_client._client, "_sleep", fake_sleep)
    monkeypatch.setattr(r3_client._client, "_async_sleep", fake_async_sleep)
    monkeypatch.setattr(r3_client._base.random, "random", lambda: 0.0)
    return recorded


def _num(text: str) -> float:
    """Fake score: the integer after the last '-' in a text ('r-7' -> 7.0)."""
    return float(text.rsplit("-", 1)[-1])


@dataclass
class FakeServer:
    """A respx router that answers like the R^3 service and records requests."""

    router: respx.MockRouter
    limits: dict[str, Any] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if r.url.path == path]

    def info_json(self) -> dict[str, Any]:
        return {
            "model": "fake-model",
            "version": "0.0.1",
            "profile": {
                "similarity": "cosine",
                "relevance_range": [0.0, 1.0],
                "max_sequence_length": 512,
                "pooling": "mean",
            },
            "limits": dict(self.limits),
            "classifier": None,
        }

    def _info(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, json=self.info_json())

    def _reward(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        qtypes = body.get("qtype") or [None] * len(body["response"])
        return reward_response([_num(r) for r in body["response"]], qtypes)

    def _relevance(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        return httpx.Response(
            200, json={"relevance": [_num(t) for t in body["text"]], "model": "fake-model"}
        )

    def _classify(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        probs = [_num(q) / 100 for q in body["query"]]
        return httpx.Response(
            200,
            json={
                "qtype": ["OPENENDED" if p >= 0.5 else "CONSTRAINED" for p in probs],
                "prob_openended": probs,
            },
        )


@pytest.fixture
def server() -> Iterator[FakeServer]:
    """Fake service at ``BASE`` with routes named info/reward/relevance/classify."""
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        fake = FakeServer(router=router)
        router.get("/v1/info", name="info").mock(side_effect=fake._info)
        router.post("/reward", name="reward").mock(side_effect=fake._reward)
        router.post("/relevance", name="relevance").mock(side_effect=fake._relevance)
        router.post("/classify", name="classify").mock(side_effect=fake._classify)
        router.get("/healthz", name="healthz").mock(return_value=httpx.Response(200))
        router.get("/readyz", name="readyz").mock(return_value=httpx.Response(200))
        yield fake


def error_response(
    status: int, message: str = "boom", headers: dict[str, str] | None = None
) -> httpx.Response:
    """A response with the service's error body."""
    body = {
        "error": {
            "type": f"http_{status}",
            "message": message,
            "details": [{"field": "response", "index": 1, "message": message}],
        }
    }
    return httpx.Response(status, json=body, headers=headers)


@pytest.fixture
def make_error() -> Any:
    return error_response
