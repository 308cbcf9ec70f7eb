"""Hostile input, fuzzing from the OpenAPI schema, a bounded load test and a memory soak."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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


# -- body-level checks in any field -------------------------------------------------------


BODY_CHECKS = [
    (
        "lone surrogate in a chat role",
        "/reward",
        '{"query": [[{"role": "us\\udc00er", "content": "hi"}]], "response": ["x"]}',
        422,
        ("query.role", 0),
    ),
    (
        "lone surrogate in a stop string",
        "/reward",
        '{"query": ["q"], "response": ["x"], "options": {"stop_strings": ["\\ud800"]}}',
        422,
        ("options.stop_strings", 0),
    ),
    (
        "lone surrogate in an OpenRLHF label",
        "/openrlhf/reward",
        '{"query": ["a b"], "prompts": ["a"], "labels": ["ok \\udfff"]}',
        422,
        ("labels", 0),
    ),
    (
        "OpenRLHF label longer than the text limit",
        "/openrlhf/reward",
        json.dumps({"query": ["a b"] * 2, "prompts": ["a"] * 2, "labels": ["ok", "y" * 50_001]}),
        422,
        ("labels", 1),
    ),
    (
        "OpenRLHF label object nested 1,000 deep",
        "/openrlhf/reward",
        '{"query": ["a b"], "prompts": ["a"], "labels": [{"reference": '
        + "[" * 1000
        + "]" * 1000
        + "}]}",
        400,
        None,
    ),
    (
        "options nested 40 deep",
        "/reward",
        '{"query": ["q"], "response": ["x"], "options": {"stop_strings": '
        + "[" * 40
        + "]" * 40
        + "}}",
        400,
        None,
    ),
]


@pytest.mark.parametrize(
    ("name", "path", "raw", "status", "where"), BODY_CHECKS, ids=[c[0] for c in BODY_CHECKS]
)
def test_body_checks_cover_every_field(
    live_server: str, name: str, path: str, raw: str, status: int, where: tuple[str, int] | None
) -> None:
    answer = httpx.post(live_server + path, content=raw.encode(), headers=JSON, timeout=30)
    assert answer.status_code == status, (name, answer.text[:300])
    assert is_error_shape(answer)
    if where is not None:
        detail = answer.json()["error"]["details"][0]
        assert (detail["field"], detail["index"]) == where


# -- strict types, one spelling of fields, UTF-8 only -------------------------------------

WRONG_TYPES = [
    ({"max_sequence_length": True}, "options.max_sequence_length"),
    ({"max_sequence_length": "512"}, "options.max_sequence_length"),
    ({"max_sequence_length": 512.0}, "options.max_sequence_length"),
    ({"relevance": "off"}, "options.relevance"),
    ({"relevance": 0}, "options.relevance"),
    ({"reward_branching": "true"}, "options.reward_branching"),
]


@pytest.mark.parametrize(("options", "field"), WRONG_TYPES, ids=[repr(o) for o, _ in WRONG_TYPES])
def test_options_of_the_wrong_type_are_refused_not_coerced(
    live_server: str, options: dict[str, object], field: str
) -> None:
    """Before: ``true`` was read as 1 (reward 0.0069 instead of 3.54), strings and 0 coerced."""
    body = {"query": ["q"], "response": ["an answer"], "options": options}
    answer = httpx.post(live_server + "/reward", json=body, timeout=30)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["details"][0]["field"] == field


@pytest.mark.parametrize(
    ("qtype", "status"),
    [
        ("constrained", 200),
        (" Constrained ", 200),
        ("OPENENDED", 200),
        ("conſtrained", 422),  # long s: "ſ".upper() == "S"
        ("constraıned", 422),  # dotless i
        ("conﬆrained", 422),  # the "st" ligature
        ("\u3000constrained", 422),  # ideographic space
    ],
)
def test_qtype_accepts_only_ascii_case_variants(live_server: str, qtype: str, status: int) -> None:
    body = {"query": ["q"], "response": ["an answer"], "qtype": [qtype]}
    answer = httpx.post(live_server + "/reward", json=body, timeout=30)
    assert answer.status_code == status, answer.text
    if status == 422:
        detail = answer.json()["error"]["details"][0]
        assert (detail["field"], detail["index"]) == ("qtype", 0)


SAME_FIELD = [
    (  # the body check (a lone surrogate) and the schema (too long) name one place
        '{"query": [[{"role": "us\\udc00er", "content": "hi"}]], "response": ["x"]}',
        json.dumps({"query": [[{"role": "r" * 65, "content": "hi"}]], "response": ["x"]}),
        "query[0].role",
    ),
    (
        '{"query": ["q"], "response": ["x"], "options": {"stop_strings": ["\\ud800"]}}',
        json.dumps({"query": ["q"], "response": ["x"], "options": {"stop_strings": [""]}}),
        "options.stop_strings[0]",
    ),
]


@pytest.mark.parametrize(("by_body_check", "by_schema", "where"), SAME_FIELD)
def test_errors_spell_a_field_one_way_whichever_check_finds_them(
    live_server: str, by_body_check: str, by_schema: str, where: str
) -> None:
    for raw in (by_body_check, by_schema):
        answer = httpx.post(live_server + "/reward", content=raw.encode(), headers=JSON)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["message"].startswith(where + ": "), answer.text


def test_a_bad_query_parameter_is_named(live_server: str) -> None:
    """Before: the field was ``query`` (FastAPI's name for where the value came from)."""
    body = {"query": ["a b"], "prompts": ["a"]}
    answer = httpx.post(live_server + "/openrlhf/reward?extra_logs=maybe", json=body)
    assert answer.status_code == 422
    assert answer.json()["error"]["details"][0]["field"] == "extra_logs"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
def test_bodies_not_in_utf8_are_400(live_server: str, encoding: str) -> None:
    """Before: 200 (Python's JSON reader guesses UTF-16/32), and the depth scan, reading
    bytes as UTF-8, missed 200-deep nesting in them (422 instead of 400)."""
    for body in (
        json.dumps({"query": ["q"], "response": ["an answer"]}),
        '{"query": ["q"], "response": ["x"], "options": {"stop_strings": '
        + "[" * 200
        + "]" * 200
        + "}}",
    ):
        answer = httpx.post(
            live_server + "/reward", content=body.encode(encoding), headers=JSON, timeout=30
        )
        assert answer.status_code == 400, (encoding, answer.text[:200])
        assert "not UTF-8" in answer.json()["error"]["message"]
        assert is_error_shape(answer)


def test_escaped_emoji_pairs_are_not_lone_surrogates(live_server: str) -> None:
    raw = json.dumps({"query": ["smile 😀"], "response": ["back 😀"]}, ensure_ascii=True)
    assert "\\ud83d" in raw
    answer = httpx.post(live_server + "/reward", content=raw.encode(), headers=JSON)
    assert answer.status_code == 200


# -- the event loop stays free while a hostile body is read -------------------------------

#: Longest /healthz round trip allowed while one hostile request is read and checked: the
#: issue's ~100 ms for the event loop, plus the probe's own round trip on 2 busy cores.
LOOP_LAG_S = 0.25


class LoopLagProbe:
    """GET /healthz back to back on one connection, in a thread; the longest round trip
    measures how long the server's event loop was kept from answering."""

    def __init__(self, url: str) -> None:
        import threading

        self.client = httpx.Client(base_url=url, timeout=60)
        self.longest = 0.0
        self.count = 0
        self.running = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        assert self.client.get("/healthz").status_code == 200  # connects: not counted
        self.running.set()
        while not self.stopped.is_set():
            started = time.perf_counter()
            assert self.client.get("/healthz").status_code == 200
            self.longest = max(self.longest, time.perf_counter() - started)
            self.count += 1

    def __enter__(self) -> LoopLagProbe:
        self.thread.start()
        assert self.running.wait(30), "the probe got no answer"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()
        self.client.close()


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


LAGGING_BODIES = [
    (  # the quadratic Llama-2 pattern: /healthz stalled 9.4 s. The last label is refused
        # after the prompts before it are read: the probe times reading, not scoring.
        "llama2 markers",
        "/openrlhf/reward",
        _compact(
            {
                "query": ["[INST]" * 8333 + "ok"] * 4,
                "prompts": ["[INST]" * 8333] * 4,
                "labels": [None, None, None, {"qtype": "closed"}],
            }
        ),
        422,
    ),
    (  # 15 MB of chat messages: stalled 3.1 s, RSS +665 MB
        "512 chats of 1,000 messages",
        "/reward",
        _compact(
            {
                "query": [[{"role": "user", "content": "hi"}] * 1000] * 512,
                "response": ["x"] * 512,
            }
        ),
        413,
    ),
    (  # 16 MB of zeros in one label
        "a label of 8M zeros",
        "/openrlhf/reward",
        _compact({"query": ["a b"], "prompts": ["a"], "labels": [[0] * 8_000_000]}),
        413,
    ),
    (  # the classifier's features and prompt cleaning backtracked over whitespace
        "untyped queries of long whitespace runs",
        "/reward",
        _compact(
            {"query": ["a" + " " * 40_000 + "b?", "a" + "\n" * 40_000 + "b"], "response": ["x"] * 2}
        ),
        200,
    ),
]


@pytest.mark.parametrize(
    ("name", "path", "raw", "status"), LAGGING_BODIES, ids=[b[0] for b in LAGGING_BODIES]
)
def test_a_hostile_body_never_stalls_the_event_loop(
    live_server: str, name: str, path: str, raw: bytes, status: int
) -> None:
    """A stall that the request causes shows in every try; the 2 cores are shared with
    other jobs, whose scheduling alone once held a round trip 0.4 s, so the best of up
    to three tries must stay under the bound (before the fixes, every try took 4 to 20 s)."""
    lags = []
    for _ in range(3):
        with LoopLagProbe(live_server) as probe:
            answer = httpx.post(live_server + path, content=raw, headers=JSON, timeout=300)
        assert answer.status_code == status, answer.text[:300]
        lags.append(probe.longest)
        if probe.longest < LOOP_LAG_S:
            break
    log.info("%s: %d, longest /healthz %s ms", name, status, [round(t * 1000) for t in lags])
    assert min(lags) < LOOP_LAG_S, (name, lags)


# -- connection hygiene (raw sockets against a real server) ------------------------------

HYGIENE_ENV = {
    "R3_HEADER_TIMEOUT_S": "1",
    "R3_BODY_TIMEOUT_S": "1.5",
    "R3_KEEP_ALIVE_S": "1",
    "R3_MAX_BODY_BYTES": "65536",
}


@pytest.fixture(scope="module")
def guarded_server(  # type: ignore[no-untyped-def]
    minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory, live_server_class
) -> Iterator[str]:
    """A real server with short header, body and keep-alive timeouts."""
    log = tmp_path_factory.mktemp("guarded") / "server.log"
    server = live_server_class(minilm_dir, env=HYGIENE_ENV, log=log)
    try:
        server.wait_ready()
        yield server.url
    finally:
        server.stop()


def connect(url: str, timeout: float = 10.0) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (fails on a timeout)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def trickle(sock: socket.socket, piece: bytes, limit: int = 200) -> bytes:
    """Send ``piece`` each time the server stays silent for 0.1 s; return what it answers."""
    sock.settimeout(0.1)
    for _ in range(limit):
        try:
            data = sock.recv(65536)
        except TimeoutError:
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                return read_until_closed(sock)
            continue
        return data + read_until_closed(sock)
    raise AssertionError("the server never answered nor closed the trickling connection")


def test_idle_connection_is_closed(guarded_server: str) -> None:
    with connect(guarded_server) as sock:
        assert read_until_closed(sock) == b""  # closed quietly after the header timeout


def test_idle_keep_alive_connection_is_closed(guarded_server: str) -> None:
    with connect(guarded_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1


def test_trickling_headers_get_408_and_the_connection_closes(guarded_server: str) -> None:
    with connect(guarded_server) as sock:
        sock.sendall(b"POST /reward HTTP/1.1\r\nHost: x\r\n")
        answer = trickle(sock, b"X")
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]


def test_oversized_headers_get_431_even_while_the_client_still_sends(
    guarded_server: str,
) -> None:
    """The 431 reaches a client that is still writing its head when the server answers.

    The server answers once 64 KiB of head have arrived; the client sends 64 KiB more
    after that answer is readable. Closing at once would reset the connection (unread
    input), and the client would get a broken pipe and lose the answer; the server
    instead ends its side and drains the rest (lingering close).
    """
    filler = [b"X-Filler-%d: %s\r\n" % (i, b"y" * 1000) for i in range(140)]
    with connect(guarded_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(filler[:70]))
        readable, _, _ = select.select([sock], [], [], 10)
        assert readable, "no answer to a 70 KB head"
        for line in filler[70:]:
            sock.sendall(line)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]


def test_short_body_gets_408_and_the_connection_closes(guarded_server: str) -> None:
    head = b"POST /reward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with connect(guarded_server) as sock:
        sock.sendall(head + b"Content-Length: 1000\r\n\r\n" + b'{"query": ["q"]')
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b"connection: close" in answer.lower()


def test_half_closed_short_body_gets_400(guarded_server: str) -> None:
    head = b"POST /reward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with connect(guarded_server) as sock:
        sock.sendall(head + b"Content-Length: 1000\r\n\r\n" + b'{"query": ["q"]')
        sock.shutdown(socket.SHUT_WR)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]


def test_slow_endless_chunked_body_gets_408(guarded_server: str) -> None:
    head = b"POST /reward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with connect(guarded_server) as sock:
        sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        answer = trickle(sock, b"5\r\n[[[[[\r\n")
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]


def flood(sock: socket.socket, piece: bytes, times: int) -> bytes:
    """Send ``piece`` up to ``times`` times until the server answers (or stops reading);
    return everything it sends until it closes the connection."""
    for _ in range(times):
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            break
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            break
    return read_until_closed(sock)


def test_fast_endless_chunked_body_gets_413_and_the_connection_closes(guarded_server: str) -> None:
    head = b"POST /reward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    chunk = b"2000\r\n" + b"a" * 0x2000 + b"\r\n"
    with connect(guarded_server) as sock:
        sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        answer = flood(sock, chunk, 1000)  # 8 MB at most; the limit is 64 KB
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]


def error_of(answer: bytes) -> dict[str, object]:
    """The JSON error body of a raw HTTP answer (the last one on the connection)."""
    head, _, body = answer.rpartition(b"HTTP/1.1 ")[2].partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    error: dict[str, object] = json.loads(body)["error"]
    return error


#: A head of 70,000 bytes: over the 64 KiB limit.
BIG_HEADER = b"X-Big: " + b"y" * 70_000 + b"\r\n"


def test_oversized_head_in_one_write_gets_431(guarded_server: str) -> None:
    """A whole head over the limit arrives in one read (before: 200, the limit was
    counted only across reads while waiting for headers)."""
    with connect(guarded_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + BIG_HEADER + b"\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert answer.count(b"HTTP/1.1") == 1
    assert error_of(answer)["type"] == "request_too_large"


def test_oversized_head_in_many_writes_gets_431(guarded_server: str) -> None:
    with connect(guarded_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        answer = flood(sock, b"y" * 500, 2000)  # 1 MB at most
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]


def test_oversized_head_pipelined_behind_a_slow_request_gets_431_after_its_answer(
    guarded_server: str,
) -> None:
    """A head pipelined behind a /reward in progress: the /reward is answered, then 431,
    then the connection closes. Before: the head was never counted (157 MB were read into
    memory) and got 200. The client sends up to 8 MB of one header; the server stops
    reading at the limit."""
    texts = [f"a long answer number {i} " * 60 for i in range(24)]
    body = json.dumps({"query": ["a question"] * 24, "response": texts}).encode()
    slow = (
        b"POST /reward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with connect(guarded_server, timeout=60) as sock:
        sock.sendall(slow + b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        answer = flood(sock, b"y" * 8192, 1000)
        if answer.count(b"HTTP/1.1 ") < 2:  # the 431 follows the /reward's answer
            answer += read_until_closed(sock, timeout=60)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
    assert answer.count(b"HTTP/1.1 ") == 2
    assert b"HTTP/1.1 431" in answer
    assert error_of(answer)["type"] == "request_too_large"


@pytest.mark.parametrize(
    "head",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    ],
    ids=["not HTTP", "space in a header name", "negative length"],
)
def test_malformed_http_gets_400_in_the_error_shape(guarded_server: str, head: bytes) -> None:
    """uvicorn's own refusal (before: text/plain "Invalid HTTP request received.")."""
    with connect(guarded_server) as sock:
        sock.sendall(head)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    assert error_of(answer)["type"] == "bad_request"


def test_websocket_upgrade_is_plain_http_in_the_error_shape(guarded_server: str) -> None:
    """No WebSocket routes: an upgrade is an ordinary request (before: 403, empty body)."""
    head = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    with connect(guarded_server) as sock:
        sock.sendall(head)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 404"), answer[:100]
    assert error_of(answer)["type"] == "not_found"


ATTACKER = r"""
import resource, selectors, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
selector = selectors.DefaultSelector()
held = []
for _ in range(count):
    sock = socket.socket()
    sock.setblocking(False)
    sock.connect_ex((host, port))
    selector.register(sock, selectors.EVENT_WRITE)
    held.append(sock)
connected = failed = 0
deadline = time.monotonic() + 60
while connected + failed < count and time.monotonic() < deadline:
    for key, _ in selector.select(timeout=1):
        selector.unregister(key.fileobj)
        if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            connected += 1
        else:
            failed += 1
print(f"attempted {count} connected {connected} failed {failed}", flush=True)
sys.stdin.read()  # hold every socket until told to stop
"""


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.slow
def test_service_stays_reachable_while_20000_sockets_are_opened(  # type: ignore[no-untyped-def]
    server_factory, minilm_dir: Path
) -> None:
    server = server_factory(minilm_dir, env={"R3_MAX_CONNECTIONS": "512"})
    server.wait_ready()
    host, port = server.url.removeprefix("http://").split(":")
    attackers = [
        subprocess.Popen(
            [sys.executable, "-c", ATTACKER, host, port, "5000"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    probes: list[int] = []
    peak_fds = 0
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while any(a.poll() is None and not _reported(a) for a in attackers):
                probes.append(client.get("/healthz", headers={"Connection": "close"}).status_code)
                peak_fds = max(peak_fds, open_fds(server.proc.pid))
            reports = [a.stdout.readline() for a in attackers]  # type: ignore[union-attr]
            for _ in range(5):
                probes.append(client.get("/healthz", headers={"Connection": "close"}).status_code)
            reward = client.post("/reward", json={"query": ["q"], "response": ["r"]})
            metrics = client.get("/metrics").text
    finally:
        for attacker in attackers:
            attacker.communicate(timeout=60)  # closes stdin: the attacker lets go
    log.info("20k sockets: %s; %d probes; peak fds %d", reports, len(probes), peak_fds)
    assert sum(int(r.split()[1]) for r in reports) == 20_000
    assert sum(int(r.split()[3]) for r in reports) > 15_000  # most got through the handshake
    assert probes and set(probes) == {200}
    assert reward.status_code == 200
    assert peak_fds < 512 + 2048 + 256  # the cap plus one accept burst, far from 20,000
    evicted = [line for line in metrics.splitlines() if 'reason="evicted"' in line]
    assert evicted and float(evicted[0].split()[-1]) > 10_000


def _reported(attacker: subprocess.Popen[str]) -> bool:
    """Whether the attacker has printed its report (without consuming it)."""
    assert attacker.stdout is not None
    readable, _, _ = select.select([attacker.stdout], [], [], 0)
    return bool(readable)
