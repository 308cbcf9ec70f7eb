"""Reliability: auth, faults in inference, deadlines, disconnects, worker death, SIGTERM drain.

Fault injection wraps the real exported encoder (raising or slow on chosen batches) and
serves it from a real uvicorn server in this process.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from r3_service.api.app import create_app
from r3_service.config import Settings
from r3_service.encoder import Encoder, load_encoder

pytestmark = pytest.mark.integration


class InjectedEncoder(Encoder):
    """The real encoder, with faults: raise on a marked text, sleep, or kill the worker."""

    def __init__(self, inner: Encoder, delay: float = 0.0) -> None:
        self.inner = inner
        self.profile = inner.profile
        self.delay = delay
        self.seen_ids: set[int] = set()
        self.vocab = inner.tokenizer.get_vocab()  # type: ignore[attr-defined]

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self.inner.tokenize(texts)

    def embed_tokens(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        words = {int(i) for ids in batch for i in ids}
        if self.vocab["poison"] in words:
            raise RuntimeError("secret internal detail")
        if self.vocab["apocalypse"] in words:
            raise SystemExit("worker killed")  # not an Exception: the thread dies
        if self.delay and self.vocab["slow"] in words:
            time.sleep(self.delay)
        self.seen_ids |= words
        return self.inner.embed_tokens(batch)


class InProcessServer:
    def __init__(self, settings: Settings, encoder: Encoder) -> None:
        from tests_support import free_port  # type: ignore[import-not-found]

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(settings, encoder_factory=lambda _: encoder)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError("in-process server not ready")

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def real_encoder(minilm_dir: Path) -> Encoder:
    return load_encoder(minilm_dir)


@pytest.fixture
def serve(real_encoder: Encoder) -> Iterator[type]:
    def start(delay: float = 0.0, **settings: object) -> tuple[InProcessServer, InjectedEncoder]:
        encoder = InjectedEncoder(real_encoder, delay=delay)
        return InProcessServer(Settings(**settings), encoder), encoder  # type: ignore[arg-type]

    yield start  # type: ignore[misc]


def reward(url: str, queries: list[str], timeout: float = 30) -> httpx.Response:
    return httpx.post(
        url + "/reward",
        json={"query": queries, "response": [f"r {q}" for q in queries]},
        timeout=timeout,
    )


def test_failing_batch_answers_its_requests_and_the_next_batches_run(serve) -> None:  # type: ignore[no-untyped-def]
    server, _ = serve()
    with server:
        bad = reward(server.url, ["this has poison in it"])
        assert bad.status_code == 500
        body = bad.json()["error"]
        assert body == {"type": "internal_error", "message": "internal error", "details": []}
        assert "secret" not in bad.text
        assert reward(server.url, ["a healthy query"]).status_code == 200
        assert httpx.get(server.url + "/readyz").status_code == 200


async def test_concurrent_requests_around_a_failing_batch_all_get_answers(serve) -> None:  # type: ignore[no-untyped-def]
    server, _ = serve(max_wait_ms=50)
    with server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            queries = [["poison here"]] + [[f"fine query {i}"] for i in range(15)]
            answers = await asyncio.gather(
                *(client.post("/reward", json={"query": q, "response": ["x"]}) for q in queries)
            )
        codes = [a.status_code for a in answers]
        assert codes[0] == 500 and set(codes) <= {200, 500}
        assert reward(server.url, ["after the storm"]).status_code == 200


def test_deadline_gives_504_and_drops_queued_work(serve) -> None:  # type: ignore[no-untyped-def]
    server, encoder = serve(delay=1.0, request_timeout_s=0.3, max_wait_ms=0)
    with server:

        def slow_request() -> None:
            reward(server.url, ["slow slow slow"])

        first = threading.Thread(target=slow_request)
        first.start()
        time.sleep(0.1)  # the worker is now sleeping on the slow batch
        late = reward(server.url, ["a unique late query about a zebra"])
        assert late.status_code == 504
        assert late.json()["error"]["type"] == "timeout"
        first.join()
        time.sleep(0.3)
        zebra = encoder.vocab["zebra"]
        assert zebra not in encoder.seen_ids  # its texts were dropped, never embedded
        assert reward(server.url, ["fresh"]).status_code == 200


def test_disconnected_client_work_is_dropped(serve) -> None:  # type: ignore[no-untyped-def]
    server, encoder = serve(delay=1.0, max_wait_ms=0)
    with server:
        first = threading.Thread(target=lambda: reward(server.url, ["slow slow"]))
        first.start()
        time.sleep(0.1)
        with pytest.raises(httpx.ReadTimeout):
            reward(server.url, ["an elephant leaves early"], timeout=0.2)
        first.join()
        time.sleep(0.3)
        assert encoder.vocab["elephant"] not in encoder.seen_ids
        assert httpx.get(server.url + "/metrics").status_code == 200
        queue = [
            line
            for line in httpx.get(server.url + "/metrics").text.splitlines()
            if line.startswith("r3_queue_size ")
        ]
        assert float(queue[0].split()[-1]) == 0.0


def test_dead_worker_turns_readyz_red(serve) -> None:  # type: ignore[no-untyped-def]
    server, _ = serve()
    with server:
        with pytest.raises(httpx.HTTPError):
            reward(server.url, ["apocalypse now"], timeout=2)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and httpx.get(server.url + "/readyz").status_code == 200:
            time.sleep(0.05)
        ready = httpx.get(server.url + "/readyz")
        assert ready.status_code == 503
        assert "worker" in ready.json()["error"]["message"]
        after = reward(server.url, ["anyone there"])
        assert after.status_code == 503 and "retry-after" in after.headers


def test_api_keys(server_factory, minilm_dir: Path) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(minilm_dir, env={"R3_API_KEYS": "key-one, key-two"})
    server.wait_ready()
    body = {"query": ["q"], "response": ["r"]}
    missing = httpx.post(server.url + "/reward", json=body)
    wrong = httpx.post(server.url + "/reward", json=body, headers={"Authorization": "Bearer nope"})
    basic = httpx.post(
        server.url + "/reward", json=body, headers={"Authorization": "Basic key-one"}
    )
    for answer in (missing, wrong, basic):
        assert answer.status_code == 401
        assert answer.json()["error"]["message"] == "missing or invalid API key"
        assert answer.headers["www-authenticate"] == "Bearer"
    good = httpx.post(
        server.url + "/reward", json=body, headers={"Authorization": "Bearer key-two"}
    )
    assert good.status_code == 200
    for open_path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(server.url + open_path).status_code == 200
    assert httpx.get(server.url + "/v1/info").status_code == 401


def test_metrics_can_be_protected(server_factory, minilm_dir: Path) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(minilm_dir, env={"R3_API_KEYS": "k", "R3_METRICS_AUTH": "true"})
    server.wait_ready()
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert (
        httpx.get(server.url + "/metrics", headers={"Authorization": "Bearer k"}).status_code == 200
    )


def test_cors_is_off_by_default(live_server: str) -> None:
    answer = httpx.options(
        live_server + "/reward",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in answer.headers


async def test_sigterm_drains_in_flight_requests(server_factory, minilm_dir: Path) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(minilm_dir)
    server.wait_ready()
    long_text = "a long response that takes the model some time to read " * 40
    bodies = [
        {
            "query": [f"q{c} {i}" for i in range(32)],
            "response": [f"{long_text} {c} {i}" for i in range(32)],
        }
        for c in range(6)
    ]
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        tasks = [asyncio.create_task(client.post("/reward", json=b)) for b in bodies]
        await asyncio.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        answers = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(a, httpx.Response) and a.status_code == 200 for a in answers), answers
    # uvicorn drains, then re-raises SIGTERM so the exit status tells how it stopped.
    assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
