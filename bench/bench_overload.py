"""Goodput under overload, measured against a real server in one run.

1. **Capacity**, measured again before each level (the machine may be shared):
   ``--capacity-clients`` closed-loop clients keep large requests running and queued
   (the worker never idles); items/s answered 200.
2. **Overload**: for each load factor (default 1x, 2x, 4x the measured capacity) an
   open-loop stream of large requests (Poisson arrivals), sent by a load generator in a
   process of its own (neither the server's interpreter nor the one timing the 1-item
   requests), plus a stream of 1-item requests from this process: Poisson arrivals
   making a tenth of the offered items, or with ``--probe-every S`` one every S seconds
   (probes beside the load). Printed per level: the items/s actually sent, goodput
   (items/s answered 200 within the deadline), goodput / capacity, every status code of
   both streams, the p50/p99 latency of the 1-item requests and what it is made of (the
   server's ``X-R3-Queue-Time-Ms`` and ``X-R3-Inference-Time-Ms``, and the rest: HTTP,
   the event loop, the client), the admitted requests that then got 504
   (``r3_admitted_late_requests_total``), and the CPU cores the server process got.

Every item is fresh (no cache hits). The server runs with ``R3_REQUEST_TIMEOUT_S`` =
``--deadline``. ``--case small-first`` is issue 24's check: a 5 s deadline, qtype given,
capacity from 16 closed-loop clients of 8-item requests, then 20 s of open-loop 8-item
requests at 2x and 4x that capacity beside a 1-item request every 0.1 s.

    python bench/bench_overload.py [--model DIR] [--seconds 30] [--deadline 10]
        [--large-items 64] [--levels 1,2,4] [--probe-every S] [--qtype] [--json OUT]
    python bench/bench_overload.py --case small-first [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import multiprocessing
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _server import start_server

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "alpacafarm_qtype.json"
log = logging.getLogger("bench_overload")


class Items:
    """Fresh (query, response) items: dataset rows made unique, or synthetic text."""

    def __init__(self, path: Path) -> None:
        if path.is_file():
            rows = json.loads(path.read_text())
            self.rows = [(r["input"], r["output"]) for r in rows if r.get("output")]
        else:
            log.warning("%s not found: synthetic items", path)
            rng = random.Random(0)
            words = "the a model reward answer question long short explain list data".split()
            self.rows = [
                (
                    " ".join(rng.choices(words, k=rng.randint(5, 30))),
                    " ".join(rng.choices(words, k=rng.randint(10, 200))),
                )
                for _ in range(2000)
            ]
        self.counter = itertools.count()
        self.tag = ""
        self.qtype = False

    def body(self, n: int) -> dict[str, Any]:
        picked = [(k, self.rows[k % len(self.rows)]) for k in itertools.islice(self.counter, n)]
        body: dict[str, Any] = {
            "query": [f"{q} (#{self.tag}{k})" for k, (q, _) in picked],
            "response": [f"{a} (#{self.tag}{k})" for k, (_, a) in picked],
        }
        if self.qtype:  # typed: the query-type classifier does not run
            body["qtype"] = ["OPENENDED"] * n
        return body


@dataclass
class Outcome:
    kind: str  # "large" or "small"
    items: int
    status: int
    seconds: float
    retry_after: float = 0.0
    #: The server's X-R3-Queue-Time-Ms and X-R3-Inference-Time-Ms of a 200 (ms).
    queue_ms: float = float("nan")
    inference_ms: float = float("nan")
    #: Why it was not answered 200: the error message.
    why: str = ""


@dataclass
class Level:
    factor: float
    offered: float
    outcomes: list[Outcome] = field(default_factory=list)


async def post(client: httpx.AsyncClient, body: dict[str, Any], kind: str) -> Outcome:
    started = time.perf_counter()
    retry_after, queue_ms, inference_ms, why = 0.0, float("nan"), float("nan"), ""
    try:
        answer = await client.post("/reward", json=body)
        status = answer.status_code
        retry_after = float(answer.headers.get("retry-after", 0))
        queue_ms = float(answer.headers.get("x-r3-queue-time-ms", "nan"))
        inference_ms = float(answer.headers.get("x-r3-inference-time-ms", "nan"))
        if status != 200:
            why = str(answer.json().get("error", {}).get("message", ""))
    except (httpx.HTTPError, ValueError) as exc:
        status, why = 0, type(exc).__name__
    seconds = time.perf_counter() - started
    return Outcome(
        kind, len(body["query"]), status, seconds, retry_after, queue_ms, inference_ms, why
    )


async def capacity(url: str, items: Items, large: int, seconds: float, clients: int) -> float:
    """Items/s answered 200 with ``clients`` closed-loop clients sending large requests."""
    done: list[Outcome] = []
    stop = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:

        async def loop() -> None:
            while time.perf_counter() < stop:
                outcome = await post(client, items.body(large), "large")
                done.append(outcome)
                if outcome.retry_after:  # a well-behaved client waits as told
                    await asyncio.sleep(min(outcome.retry_after, stop - time.perf_counter()))

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return sum(o.items for o in done if o.status == 200) / elapsed


async def send(
    url: str, items: Items, arrivals: list[tuple[float, str]], large: int, start_at: float
) -> list[Outcome]:
    """Send ``arrivals`` (seconds after ``start_at``, a time.monotonic() value, and kind)
    open loop: each at its time, whatever the answers to the earlier ones."""
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        tasks = []
        for at, kind in arrivals:
            delay = start_at + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            body = items.body(large if kind == "large" else 1)
            tasks.append(asyncio.create_task(post(client, body, kind)))
        return list(await asyncio.gather(*tasks))


def _generator(
    url: str, data: Path, qtype: bool, arrivals: list[tuple[float, str]], large: int, conn: Any
) -> None:
    """The load generator's process: ready, wait for the start time, send, report."""
    items = Items(data)
    items.tag, items.qtype = "g", qtype
    conn.send("ready")
    start_at = conn.recv()
    outcomes = asyncio.run(send(url, items, arrivals, large, start_at))
    conn.send([tuple(vars(o).values()) for o in outcomes])
    conn.close()


def overload(
    args: argparse.Namespace, url: str, items: Items, level: Level, rng: random.Random
) -> float:
    """Open-loop arrivals at ``level.offered`` items/s for ``args.seconds``: the large
    requests from a process of their own, the 1-item ones from this one. Returns wall s."""
    seconds, large = args.seconds, args.large_items
    if args.probe_every:
        small = [(k * args.probe_every, "small") for k in range(int(seconds / args.probe_every))]
        small_rate = 1.0 / args.probe_every
    else:
        small_rate = max(1.0, 0.1 * level.offered)  # 1-item requests per second
        small = _schedule("small", small_rate, seconds, rng)
    large_rate = max(0.0, level.offered - small_rate) / large  # large requests per second
    arrivals = _schedule("large", large_rate, seconds, rng)
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(
        target=_generator, args=(url, args.data, args.qtype, arrivals, large, theirs)
    )
    child.start()
    try:
        if ours.recv() != "ready":
            raise RuntimeError("the load generator did not start")
        start_at = time.monotonic() + 0.5
        ours.send(start_at)
        level.outcomes = asyncio.run(send(url, items, small, large, start_at))
        level.outcomes += [Outcome(*fields) for fields in ours.recv()]
        wall = time.monotonic() - start_at
    finally:
        child.join(60)
        if child.is_alive():
            child.kill()
    return wall


def _schedule(
    kind: str, rate: float, seconds: float, rng: random.Random
) -> list[tuple[float, str]]:
    out: list[tuple[float, str]] = []
    t = 0.0
    while rate > 0:
        t += rng.expovariate(rate)
        if t >= seconds:
            return out
        out.append((t, kind))
    return out


def metric(url: str, name: str) -> float:
    """One unlabelled sample of the server's /metrics (nan when absent)."""
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return float("nan")


#: Batch counters of /metrics compared before and after a level (see ``batch_figures``).
BATCH_SERIES = (
    "r3_batch_tokens_count",
    "r3_batch_tokens_sum",
    "r3_batch_text_tokens_total",
    "r3_batch_size_sum",
    "r3_inference_duration_seconds_sum",
)


def batch_counters(url: str) -> dict[str, float]:
    return {name: metric(url, name) for name in BATCH_SERIES}


def batch_figures(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    """What the worker did over ``seconds``: batches per second, mean tokens (padded) and
    texts per batch, the share of the wall time it spent in batches, padded tokens per
    batch second, the share of them that was padding, and text tokens per second."""
    d = {k: after[k] - before[k] for k in BATCH_SERIES}
    batches = d["r3_batch_tokens_count"]
    busy = d["r3_inference_duration_seconds_sum"]
    padded = d["r3_batch_tokens_sum"]
    return {
        "padding_share": 1 - d["r3_batch_text_tokens_total"] / padded if padded else float("nan"),
        "text_tokens_per_s": d["r3_batch_text_tokens_total"] / seconds,
        "batches_per_s": batches / seconds,
        "batch_tokens_mean": padded / batches if batches else float("nan"),
        "batch_texts_mean": d["r3_batch_size_sum"] / batches if batches else float("nan"),
        "worker_busy_share": busy / seconds,
        "tokens_per_batch_second": padded / busy if busy else float("nan"),
    }


def drain_rate(url: str) -> float:
    """The server's measured drain rate (tokens/s), from /metrics."""
    return metric(url, "r3_drain_rate_tokens_per_second")


def admission(url: str) -> tuple[float, float]:
    """(requests admitted, admitted requests that then missed their deadline) so far."""
    return (
        metric(url, "r3_admitted_requests_total"),
        metric(url, "r3_admitted_late_requests_total"),
    )


def summarise(level: Level, seconds: float, deadline: float, cap: float) -> dict[str, Any]:
    good = sum(o.items for o in level.outcomes if o.status == 200 and o.seconds <= deadline)
    small = [o for o in level.outcomes if o.kind == "small"]
    small_ok = sorted(o.seconds for o in small if o.status == 200)
    q = _quantiles(small_ok)
    answered = [o for o in small if o.status == 200]
    queue_ms = _quantiles([o.queue_ms for o in answered])
    inference_ms = _quantiles([o.inference_ms for o in answered])
    rest_ms = _quantiles([o.seconds * 1000 - o.queue_ms - o.inference_ms for o in answered])

    def codes(kind: str) -> dict[str, int]:
        found: dict[str, int] = {}
        for o in level.outcomes:
            if o.kind == kind:
                found[str(o.status)] = found.get(str(o.status), 0) + 1
        return found

    sent = sum(o.items for o in level.outcomes)
    why: dict[str, int] = {}
    for o in level.outcomes:
        if o.status != 200:
            key = f"{o.kind} {o.status} {o.why[:40]}"
            why[key] = why.get(key, 0) + 1
    return {
        "factor": level.factor,
        "offered_items_per_s": level.offered,
        "sent_items_per_s": sent / seconds,
        "answered_in_time_share": good / sent if sent else float("nan"),
        "goodput_items_per_s": good / seconds,
        "goodput_over_capacity": good / seconds / cap,
        "large": codes("large"),
        "small": codes("small"),
        "not_200": why,
        # Every 1-item request not answered 200, in full (there should be none).
        "small_not_200": [f"{o.status} {o.why}" for o in small if o.status != 200],
        "small_p50_s": q[49],
        "small_p99_s": q[98],
        # What a 1-item request's time is made of: p50 and p99 of each part (ms).
        "small_queue_ms": [queue_ms[49], queue_ms[98]],
        "small_inference_ms": [inference_ms[49], inference_ms[98]],
        "small_rest_ms": [rest_ms[49], rest_ms[98]],
    }


def _quantiles(values: list[float]) -> list[float]:
    values = sorted(v for v in values if v == v)  # drop nan (a header that was absent)
    return statistics.quantiles(values, n=100) if len(values) >= 2 else [float("nan")] * 99


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_level(
    args: argparse.Namespace, url: str, items: Items, factor: float, pid: int
) -> dict[str, Any]:
    """Capacity measured just before, then ``factor`` times it offered open loop."""
    large, clients = args.large_items, args.capacity_clients
    counters, started = batch_counters(url), time.monotonic()
    cap = asyncio.run(capacity(url, items, large, args.capacity_seconds, clients))
    worker_at_capacity = batch_figures(counters, batch_counters(url), time.monotonic() - started)
    level = Level(factor, factor * cap)
    admitted, late = admission(url)
    counters = batch_counters(url)
    used, started = cpu_seconds(pid), time.monotonic()
    overload(args, url, items, level, random.Random(int(factor * 10)))
    row = summarise(level, args.seconds, args.deadline, cap)
    row.update(batch_figures(counters, batch_counters(url), time.monotonic() - started))
    row["capacity_items_per_s"] = cap
    row["capacity_worker"] = worker_at_capacity
    row["server_cpu_cores"] = (cpu_seconds(pid) - used) / (time.monotonic() - started)
    row["server_drain_rate"] = drain_rate(url)
    now_admitted, now_late = admission(url)
    row["admitted_requests"] = now_admitted - admitted
    row["admitted_late_requests"] = now_late - late
    log.info("%s", row)
    return row


#: Presets: ``small-first`` is issue 24's check (small requests first, also at the door).
CASES: dict[str, dict[str, Any]] = {
    "small-first": {
        "deadline": 5.0,
        "large_items": 8,
        "capacity_clients": 16,
        "probe_every": 0.1,
        "qtype": True,
        "seconds": 20.0,
        "levels": "2,4",
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="exported model folder (default: embedded)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--port", type=int, default=8793)
    parser.add_argument("--seconds", type=float, default=30.0, help="per load level")
    parser.add_argument("--capacity-seconds", type=float, default=15.0, help="before each level")
    parser.add_argument("--deadline", type=float, default=10.0, help="R3_REQUEST_TIMEOUT_S")
    parser.add_argument("--large-items", type=int, default=64, help="items per large request")
    parser.add_argument("--capacity-clients", type=int, default=2)
    parser.add_argument("--levels", default="1,2,4", help="load factors x capacity")
    parser.add_argument(
        "--probe-every", type=float, help="a 1-item request every S seconds (default: Poisson)"
    )
    parser.add_argument("--qtype", action="store_true", help="send qtype (no classifier)")
    parser.add_argument("--case", choices=sorted(CASES), help="a preset of the above")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    case = parser.parse_args().case
    if case:  # the preset's values, unless given on the command line
        parser.set_defaults(**CASES[case])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    items = Items(args.data)
    items.qtype = args.qtype
    url = f"http://127.0.0.1:{args.port}"
    server = start_server(args.port, args.model, env={"R3_REQUEST_TIMEOUT_S": str(args.deadline)})
    try:
        warm = min(5.0, args.seconds)
        asyncio.run(capacity(url, items, args.large_items, warm, args.capacity_clients))
        levels = [float(f) for f in args.levels.split(",")]
        rows = [run_level(args, url, items, factor, server.pid) for factor in levels]
    finally:
        server.terminate()
        server.wait(60)
    report(rows, args)


def worker_line(worker: dict[str, float], items_per_s: float) -> str:
    """What the worker did (``batch_figures``), and its text tokens per item answered in time."""
    per_item = worker["text_tokens_per_s"] / items_per_s if items_per_s else float("nan")
    return (
        f"{worker['batches_per_s']:.1f} batches/s of {worker['batch_texts_mean']:.1f} texts, "
        f"{worker['batch_tokens_mean']:.0f} tokens ({worker['padding_share']:.0%} padding); "
        f"busy {worker['worker_busy_share']:.0%} of the time at "
        f"{worker['tokens_per_batch_second']:.0f} tokens per batch second; "
        f"{per_item:.0f} text tokens per item answered in time"
    )


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    small = (
        f"a 1-item request every {args.probe_every:g} s"
        if args.probe_every
        else ("Poisson 1-item requests (a tenth of the items)")
    )
    lines = [
        f"capacity measured before each level ({args.capacity_clients} closed-loop clients, "
        f"{args.large_items}-item requests, {args.capacity_seconds:g} s); deadline "
        f"{args.deadline:g} s; {args.seconds:g} s per level; {small}; "
        f"qtype {'given' if args.qtype else 'untyped'}",
        "load  capacity  sent  goodput  goodput/capacity  1-item p50  1-item p99  "
        "server CPU  admitted late",
    ]
    for row in rows:
        lines.append(
            f"{row['factor']:3g}x {row['capacity_items_per_s']:8.1f} "
            f"{row['sent_items_per_s']:6.1f} {row['goodput_items_per_s']:8.1f} "
            f"{row['goodput_over_capacity']:12.2f}      "
            f"{row['small_p50_s'] * 1000:7.0f} ms  {row['small_p99_s'] * 1000:7.0f} ms  "
            f"{row['server_cpu_cores']:6.2f} cores  "
            f"{row['admitted_late_requests']:.0f} of {row['admitted_requests']:.0f}"
        )
    lines.append("status codes, and the 1-item requests' time (p50 / p99 ms) by part:")
    for row in rows:
        parts = ", ".join(
            f"{name} {row[key][0]:.0f} / {row[key][1]:.0f}"
            for name, key in (
                ("queued", "small_queue_ms"),
                ("model", "small_inference_ms"),
                ("rest", "small_rest_ms"),
            )
        )
        lines.append(
            f"{row['factor']:3g}x  {args.large_items}-item {json.dumps(row['large'])}  "
            f"1-item {json.dumps(row['small'])}  1-item time: {parts}"
        )
        for why, count in sorted(row["not_200"].items()):
            lines.append(f"      {count:4d} x {why}")
        for message in row["small_not_200"]:
            lines.append(f"      1-item: {message}")
        for name, worker, items_per_s in (
            ("capacity", row["capacity_worker"], row["capacity_items_per_s"]),
            ("worker", row, row["goodput_items_per_s"]),
        ):
            lines.append(f"      {name}: {worker_line(worker, items_per_s)}")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps({"levels": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
