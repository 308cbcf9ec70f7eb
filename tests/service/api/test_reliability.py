"""Reliability: auth, faults in inference, deadlines, overload, hung batches, disconnects,
worker death, SIGTERM drain.

Fault injection wraps the real exported encoder (raising, slow or hanging on marked
texts) and serves it from a real uvicorn server in this process, built by the service's
own ``build_server``. Tests wait on events and states (``until``), never on fixed delays.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest
from tests_support import free_port, poll_until

from r3_service.api.app import create_app
from r3_service.config import Settings
from r3_service.encoder import Encoder, load_encoder
from r3_service.server import build_server

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.compile(rf"^{re.escape(name)}(\{{(.*)\}})? (\S+)$")
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        match = pattern.match(line)
        if match and ",".join(sorted((match.group(2) or "").split(","))) == wanted:
            return float(match.group(3))
    return 0.0


class InjectedEncoder(Encoder):
    """The real encoder, with faults: raise on a marked text, slow down, hang, or die."""

    def __init__(self, inner: Encoder, delay: float = 0.0) -> None:
        self.inner = inner
        self.profile = inner.profile
        self.delay = delay
        self.seen_ids: set[int] = set()
        self.vocab = inner.tokenizer.get_vocab()  # type: ignore[attr-defined]
        self.slow_started = threading.Event()
        self.release = threading.Event()

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self.inner.tokenize(texts)

    def embed_tokens(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        words = {int(i) for ids in batch for i in ids}
        if self.vocab["poison"] in words:
            raise RuntimeError("secret internal detail")
        if self.vocab["apocalypse"] in words:
            raise SystemExit("worker killed")  # not an Exception: the thread dies
        if self.delay and self.vocab["slow"] in words:
            self.slow_started.set()
            self.release.wait(self.delay)
        if self.vocab["hang"] in words:
            self.slow_started.set()
            self.release.wait(120)
        self.seen_ids |= words
        return self.inner.embed_tokens(batch)


class InProcessServer:
    def __init__(self, settings: Settings, encoder: Encoder) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = settings.model_copy(update={"port": self.port, "log_level": "warning"})
        app = create_app(settings, encoder_factory=lambda _: encoder)
        self.server, _ = build_server(settings, app)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def ready(self) -> bool:
        try:
            return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        poll_until(self.ready, "the in-process server to be ready", 60)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def real_encoder(minilm_dir: Path) -> Encoder:
    return load_encoder(minilm_dir)


@pytest.fixture
def serve(
    real_encoder: Encoder,
) -> Iterator[Callable[..., tuple[InProcessServer, InjectedEncoder]]]:
    encoders: list[InjectedEncoder] = []

    def start(delay: float = 0.0, **settings: object) -> tuple[InProcessServer, InjectedEncoder]:
        encoder = InjectedEncoder(real_encoder, delay=delay)
        encoders.append(encoder)
        return InProcessServer(Settings(**settings), encoder), encoder  # type: ignore[arg-type]

    yield start
    for encoder in encoders:  # never leave a worker blocked
        encoder.release.set()


def reward(
    url: str, queries: list[str], timeout: float = 30, qtype: str | None = None
) -> httpx.Response:
    """POST /reward; untyped unless ``qtype`` (then the classifier's worker is not involved)."""
    body: dict[str, object] = {"query": queries, "response": [f"r {q}" for q in queries]}
    if qtype is not None:
        body["qtype"] = [qtype] * len(queries)
    return httpx.post(url + "/reward", json=body, timeout=timeout)


def in_background(fn: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=fn)
    thread.start()
    return thread


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
    server, encoder = serve(delay=30.0, request_timeout_s=0.5, hung_batch_s=60, max_wait_ms=0)
    with server:
        # Typed: the 0.5 s deadline is the engine's to keep, not eaten by the classifier's
        # worker typing the query first (which took longer than 0.5 s on a busy machine).
        # The worker's first job is the start-up calibration, which can outlast the 0.5 s
        # deadline on a busy machine: the slow request must reach the encoder, not wait.
        poll_until(
            lambda: metric(server.url, "r3_drain_rate_tokens_per_second") > 0, "calibration", 60
        )
        answers: list[httpx.Response] = []
        first = in_background(
            lambda: answers.append(reward(server.url, ["slow slow slow"], qtype="OPENENDED"))
        )
        assert encoder.slow_started.wait(10), [
            (a.status_code, a.text) for a in answers
        ]  # the worker is now inside the slow batch
        late = reward(server.url, ["a unique late query about a zebra"], qtype="OPENENDED")
        assert late.status_code == 504
        assert late.json()["error"]["type"] == "timeout"
        encoder.release.set()
        first.join()
        # Anything queued before this request would have run before it: the zebra never did.
        assert reward(server.url, ["fresh"]).status_code == 200
        assert encoder.vocab["zebra"] not in encoder.seen_ids
        assert metric(server.url, "r3_queue_size") == 0
        # Both were admitted (the worker looked idle), then missed their deadline: counted.
        assert metric(server.url, "r3_admitted_late_requests_total") == 2
        assert metric(server.url, "r3_admitted_requests_total") == 3


def test_long_texts_that_cannot_fit_the_deadline_are_413_before_any_work(serve) -> None:  # type: ignore[no-untyped-def]
    """Issue 22: many 50,000-character responses, within every limit, are refused from
    their lengths (413, no Retry-After) on an idle server, not run until a 504."""
    server, encoder = serve(request_timeout_s=1.0)
    with server:
        words = "zebra " * 8_000  # 48,000 characters, 512 tokens once truncated
        body = {
            "query": [f"question {i}" for i in range(64)],
            "response": [f"{i} {words}" for i in range(64)],
            "qtype": ["OPENENDED"] * 64,
        }
        answer = httpx.post(server.url + "/reward", json=body, timeout=60)
        assert answer.status_code == 413, answer.text
        assert "R3_REQUEST_TIMEOUT_S" in answer.json()["error"]["message"]
        assert "retry-after" not in answer.headers
        assert metric(server.url, "r3_rejected_requests_total", reason="too_large") == 1
        assert encoder.vocab["zebra"] not in encoder.seen_ids


def test_disconnected_client_work_is_dropped_and_counted_499(serve) -> None:  # type: ignore[no-untyped-def]
    server, encoder = serve(delay=30.0, hung_batch_s=60, max_wait_ms=0)
    with server:
        first = in_background(lambda: reward(server.url, ["slow slow"]))
        assert encoder.slow_started.wait(10)
        with pytest.raises(httpx.ReadTimeout):
            reward(server.url, ["an elephant leaves early"], timeout=0.3)
        poll_until(
            lambda: metric(server.url, "r3_requests_total", route="/reward", status="499") == 1,
            timeout=30,
        )
        encoder.release.set()
        first.join()
        assert reward(server.url, ["fresh"]).status_code == 200
        assert encoder.vocab["elephant"] not in encoder.seen_ids
        assert metric(server.url, "r3_queue_size") == 0
        assert metric(server.url, "r3_requests_total", route="/reward", status="500") == 0


def test_dead_worker_turns_readyz_red(serve) -> None:  # type: ignore[no-untyped-def]
    server, _ = serve()
    with server:
        with pytest.raises(httpx.HTTPError):
            reward(server.url, ["apocalypse now"], timeout=2)
        poll_until(lambda: httpx.get(server.url + "/readyz").status_code == 503, "readyz red", 10)
        assert "worker" in httpx.get(server.url + "/readyz").json()["error"]["message"]
        after = reward(server.url, ["anyone there"])
        assert after.status_code == 503 and "retry-after" in after.headers


def test_hung_batch_turns_readyz_red_counts_and_refuses(serve) -> None:  # type: ignore[no-untyped-def]
    server, encoder = serve(request_timeout_s=30, hung_batch_s=0.5, max_wait_ms=0)
    with server:
        stuck = in_background(lambda: reward(server.url, ["hang here"], timeout=60))
        assert encoder.slow_started.wait(10)
        poll_until(lambda: httpx.get(server.url + "/readyz").status_code == 503, "readyz red", 10)
        message = httpx.get(server.url + "/readyz").json()["error"]["message"]
        assert "running for" in message
        assert metric(server.url, "r3_hung_batches_total") == 1
        assert metric(server.url, "r3_batch_running_seconds") > 0.5
        refused = reward(server.url, ["a new request meanwhile"])
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["type"] == "service_unavailable"  # not just busy
        assert metric(server.url, "r3_rejected_requests_total", reason="stalled") == 1
        encoder.release.set()
        stuck.join()
        poll_until(lambda: httpx.get(server.url + "/readyz").status_code == 200, "readyz green", 10)
        assert reward(server.url, ["back to work"]).status_code == 200
        assert metric(server.url, "r3_hung_batches_total") == 1


async def test_overload_is_refused_early_not_timed_out(serve) -> None:  # type: ignore[no-untyped-def]
    """The hostile trial: a short deadline and far more work than fits in it. Before,
    every request ran and got 504; now the excess is refused at once with Retry-After."""
    server, _ = serve(request_timeout_s=4.0)
    with server:
        poll_until(lambda: metric(server.url, "r3_drain_rate_tokens_per_second") > 0, "rate", 30)
        # Three times what the measured drain rate gets through in the deadline (at least
        # 64 requests): overload on a machine of any speed. A request costs about 600.
        rate = metric(server.url, "r3_drain_rate_tokens_per_second")
        count = max(64, math.ceil(3 * rate * 4.0 / 600))
        bodies = [
            {
                "query": [f"overload {c} question {i} about topic {i % 7}" for i in range(10)],
                "response": [f"answer {c} {i} " + "with some words " * 8 for i in range(10)],
            }
            for c in range(count)
        ]
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            answers = await asyncio.gather(*(client.post("/reward", json=b) for b in bodies))
        codes = [a.status_code for a in answers]
        log.info(
            "overload: %d x 10 items, drain rate %.0f tokens/s, deadline 4 s: "
            "%d x 200, %d x 503, %d x 504",
            count,
            rate,
            codes.count(200),
            codes.count(503),
            codes.count(504),
        )
        assert set(codes) <= {200, 503, 504}, codes
        assert codes.count(200) >= 1 and codes.count(503) >= 1
        assert codes.count(504) < codes.count(200), codes  # formerly every request
        for answer in answers:
            if answer.status_code == 503:
                assert int(answer.headers["retry-after"]) >= 1
                assert "overloaded" in answer.json()["error"]["message"]
                assert answer.json()["error"]["type"] == "overloaded"
        assert metric(server.url, "r3_rejected_requests_total", reason="deadline") == codes.count(
            503
        )


async def test_small_request_is_not_stuck_behind_a_large_one(serve) -> None:  # type: ignore[no-untyped-def]
    server, _ = serve()
    with server:
        big = {
            "query": [f"big request query {i}" for i in range(200)],
            "response": [
                f"a longer answer number {i} " + "with many words " * 12 for i in range(200)
            ],
        }
        order: list[str] = []
        took: dict[str, float] = {}
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:

            async def post(name: str, body: dict[str, object]) -> None:
                started = time.monotonic()
                answer = await client.post("/reward", json=body)
                assert answer.status_code == 200, answer.text
                took[name] = time.monotonic() - started
                order.append(name)

            large = asyncio.ensure_future(post("large", big))
            while metric(server.url, "r3_queue_size") == 0:  # the large request is queued
                assert not large.done(), large.exception()  # answered or refused: say so
                await asyncio.sleep(0.01)
            await post("small", {"query": ["one small query"], "response": ["one answer"]})
            assert order == ["small"]
            await large
        assert order == ["small", "large"]
        log.info(
            "head of line: 1 item %.2f s next to 200 items %.2f s", took["small"], took["large"]
        )


def test_request_larger_than_the_queue_is_413_naming_the_limit(serve) -> None:  # type: ignore[no-untyped-def]
    server, _ = serve(max_queue_texts=64)
    with server:
        answer = reward(server.url, [f"query {i}" for i in range(40)])  # 80 texts at once
        assert answer.status_code == 413
        assert "R3_MAX_QUEUE_TEXTS" in answer.json()["error"]["message"]
        assert "retry-after" not in answer.headers
        assert reward(server.url, [f"query {i}" for i in range(20)]).status_code == 200


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
    # A long deadline: this is about the drain, and admission must not refuse any of the six.
    server = server_factory(minilm_dir, env={"R3_REQUEST_TIMEOUT_S": "600"})
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
        while metric(server.url, "r3_requests_in_flight", route="/reward") < len(bodies):
            # Until all six are being served; one answered first would keep the count
            # below six for ever: say so instead of waiting for the test timeout.
            assert not any(t.done() for t in tasks), [t.result() for t in tasks if t.done()]
            await asyncio.sleep(0.01)
        server.proc.send_signal(signal.SIGTERM)
        answers = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(a, httpx.Response) and a.status_code == 200 for a in answers), answers
    # uvicorn drains, then re-raises SIGTERM so the exit status tells how it stopped.
    assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
