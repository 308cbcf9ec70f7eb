"""Hostile input, fuzzing from the OpenAPI schema, a bounded load test and a memory soak."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

JSON = {"content-type": "application/json"}


def is_error_shape(answer: httpx.Response) -> bool:
    body = answer.json()
    return set(body) == {"error"} and {"type", "message", "details"} <= set(body["error"])


HOSTILE = [
    ("NaN in a text field", '{"query": [NaN], "response": ["x"]}', 422),
    (
        "Infinity as an option",
        '{"query": ["q"], "response": ["x"], "options": {"max_sequence_length": Infinity}}',
        422,
    ),
    ("deeply nested arrays", "[" * 100_000 + "]" * 100_000, 400),
    ("nested garbage in query", '{"query": [[["deep"]]], "response": ["x"]}', 422),
    ("object instead of list", '{"query": {"a": 1}, "response": ["x"]}', 422),
    ("body is a list", '[{"query": ["q"]}]', 422),
    ("empty body", "", 422),
    ("truncated JSON", '{"query": ["q"], "resp', 400),
    ("numbers as texts", '{"query": [1e400], "response": [true]}', 422),
    (
        "chat message with extra keys",
        '{"query": [[{"role": "user", "content": "hi", "x": 1}]], "response": ["x"]}',
        422,
    ),
    ("null items", '{"query": null, "response": null}', 422),
    (
        "huge stop string list",
        json.dumps({"query": ["q"], "response": ["x"], "options": {"stop_strings": ["s"] * 1000}}),
        422,
    ),
    (
        "negative max_sequence_length",
        '{"query": ["q"], "response": ["x"], "options": {"max_sequence_length": -5}}',
        422,
    ),
    ("bad qtype", '{"query": ["q"], "response": ["x"], "qtype": ["closed"]}', 422),
]


@pytest.mark.parametrize(("name", "raw", "status"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_request(live_server: str, name: str, raw: str, status: int) -> None:
    answer = httpx.post(live_server + "/reward", content=raw.encode(), headers=JSON, timeout=30)
    assert answer.status_code == status, (name, answer.text[:300])
    assert is_error_shape(answer)


def test_wrong_content_type_is_4xx(live_server: str) -> None:
    answer = httpx.post(
        live_server + "/reward", content=b"query=a", headers={"content-type": "text/plain"}
    )
    assert 400 <= answer.status_code < 500 and is_error_shape(answer)


def test_text_at_the_character_limit_is_scored(live_server: str) -> None:
    # The limit is characters; the encoder keeps only the last 512 tokens (left truncation).
    long_text = ("word " * 10_000)[:50_000]
    answer = httpx.post(
        live_server + "/reward", json={"query": ["q"], "response": [long_text]}, timeout=60
    )
    assert answer.status_code == 200
    assert answer.json()["components"]["length_incentive"] == [100.0]


@pytest.mark.parametrize("mode", ["POSITIVE", "NEGATIVE"])
def test_fuzz_from_openapi_schema_never_5xx(live_server: str, mode: str) -> None:
    """Schemathesis cases from /openapi.json for every POST route: valid bodies and
    invalid ones; the answer is never a 5xx, and errors have the one error shape."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(live_server + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    posts = [op for op in operations if op.method.upper() == "POST"]
    assert {op.path for op in posts} >= {"/reward", "/relevance", "/classify", "/openrlhf/reward"}
    seen: dict[int, int] = {}
    for operation in posts:
        strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode[mode])

        @settings(
            max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        @given(case=strategy)
        def check(case) -> None:  # type: ignore[no-untyped-def]
            answer = case.call(base_url=live_server, timeout=60)
            seen[answer.status_code] = seen.get(answer.status_code, 0) + 1
            assert answer.status_code < 500, (case.path, case.body, answer.text[:300])
            if answer.status_code >= 400:
                body = json.loads(answer.content)
                assert set(body) == {"error"} and "details" in body["error"]

        check()
    if mode == "NEGATIVE":
        assert any(400 <= status < 500 for status in seen), seen
    else:
        assert seen.get(200, 0) > 0, seen


@pytest.mark.slow
async def test_load_64_clients_x_50_requests(server_factory, minilm_dir: Path) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(minilm_dir, env={"R3_MAX_QUEUE_TEXTS": "32"})
    server.wait_ready()
    codes: list[int] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:

        async def one_client(c: int) -> None:
            for i in range(50):
                answer = await client.post(
                    "/reward", json={"query": [f"query {c % 8}"], "response": [f"answer {c} {i}"]}
                )
                codes.append(answer.status_code)
                if answer.status_code == 200:
                    assert len(answer.json()["rewards"]) == 1
                else:
                    assert answer.status_code in (429, 503)
                    assert int(answer.headers["retry-after"]) >= 1

        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(one_client(c) for c in range(64))), 300)
    assert len(codes) == 64 * 50
    log.info(
        "load: %d requests in %.1f s: %d x 200, %d x 503",
        len(codes),
        time.monotonic() - started,
        codes.count(200),
        codes.count(503),
    )
    assert codes.count(200) > len(codes) // 2
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert time.monotonic() - started < 300


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
def test_memory_stays_bounded_over_a_soak(server_factory, minilm_dir: Path) -> None:  # type: ignore[no-untyped-def]
    cache_bytes = 2 * 1024 * 1024
    server = server_factory(minilm_dir, env={"R3_CACHE_BYTES": str(cache_bytes)})
    server.wait_ready()
    client = httpx.Client(base_url=server.url, timeout=60)

    def round_of(r: int) -> None:
        queries = [f"unique soak query number {r}-{i} about topic {i % 17}" for i in range(64)]
        answer = client.post("/reward", json={"query": queries, "response": ["short"] * 64})
        assert answer.status_code == 200

    for r in range(10):
        round_of(r)
    before = rss_bytes(server.proc.pid)
    for r in range(10, 60):  # 3,200 distinct queries: ~5 MB of embeddings through a 2 MB cache
        round_of(r)
    after = rss_bytes(server.proc.pid)
    metrics = client.get("/metrics").text
    held = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("r3_cache_bytes ")
    )
    client.close()
    log.info("soak: RSS %d -> %d MB, cache holds %d bytes", before >> 20, after >> 20, held)
    assert held <= cache_bytes
    assert after - before < 40 * 1024 * 1024, (before, after)
