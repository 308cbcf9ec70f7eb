"""Goodput under overload, measured against a real server in one run.

1. **Capacity**, measured again before each level (the machine may be shared): two
   closed-loop clients keep a large request running and one queued (the worker never
   idles, nothing is refused); items/s answered 200.
2. **Overload**: for each load factor (default 1x, 2x, 4x the measured capacity) an
   open-loop stream of large requests (Poisson arrivals) plus a stream of 1-item
   requests (a tenth of the offered items) runs for ``--seconds``. Printed per level:
   the items/s actually sent (Poisson arrivals), goodput (items/s answered 200 within the
   deadline), goodput / capacity, the answers
   by status, the p50/p99 latency of the 1-item requests, and the CPU cores the server
   process got (less than the machine's cores when other processes compete).

Every item is fresh (no cache hits). The server runs with ``R3_REQUEST_TIMEOUT_S`` =
``--deadline``.

    python bench/bench_overload.py [--model DIR] [--seconds 30] [--deadline 10]
        [--large-items 64] [--levels 1,2,4] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
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

    def body(self, n: int) -> dict[str, Any]:
        picked = [(k, self.rows[k % len(self.rows)]) for k in itertools.islice(self.counter, n)]
        return {
            "query": [f"{q} (#{k})" for k, (q, _) in picked],
            "response": [f"{a} (#{k})" for k, (_, a) in picked],
        }


@dataclass
class Outcome:
    kind: str  # "large" or "small"
    items: int
    status: int
    seconds: float
    retry_after: float = 0.0


@dataclass
class Level:
    factor: float
    offered: float
    outcomes: list[Outcome] = field(default_factory=list)


async def post(client: httpx.AsyncClient, body: dict[str, Any], kind: str) -> Outcome:
    started = time.perf_counter()
    retry_after = 0.0
    try:
        answer = await client.post("/reward", json=body)
        status = answer.status_code
        retry_after = float(answer.headers.get("retry-after", 0))
    except httpx.HTTPError:
        status = 0
    return Outcome(kind, len(body["query"]), status, time.perf_counter() - started, retry_after)


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


async def overload(
    url: str, items: Items, level: Level, large: int, seconds: float, rng: random.Random
) -> float:
    """Open-loop Poisson arrivals at ``level.offered`` items/s for ``seconds``; returns wall s."""
    small_rate = max(1.0, 0.1 * level.offered)  # 1-item requests per second
    large_rate = max(0.0, level.offered - small_rate) / large  # large requests per second
    arrivals = _schedule("large", large_rate, seconds, rng) + _schedule(
        "small", small_rate, seconds, rng
    )
    arrivals.sort()
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        started = time.perf_counter()
        tasks = []
        for at, kind in arrivals:
            delay = started + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = items.body(large if kind == "large" else 1)
            tasks.append(asyncio.create_task(post(client, body, kind)))
        level.outcomes = list(await asyncio.gather(*tasks))
    return time.perf_counter() - started


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


def drain_rate(url: str) -> float:
    """The server's measured drain rate (tokens/s), from /metrics."""
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("r3_drain_rate_tokens_per_second "):
            return float(line.split()[-1])
    return float("nan")


def summarise(level: Level, seconds: float, deadline: float, cap: float) -> dict[str, Any]:
    good = sum(o.items for o in level.outcomes if o.status == 200 and o.seconds <= deadline)
    small = [o for o in level.outcomes if o.kind == "small"]
    small_ok = sorted(o.seconds for o in small if o.status == 200)
    q = statistics.quantiles(small_ok, n=100) if len(small_ok) >= 2 else [float("nan")] * 99

    def codes(kind: str) -> dict[str, int]:
        found: dict[str, int] = {}
        for o in level.outcomes:
            if o.kind == kind:
                found[str(o.status)] = found.get(str(o.status), 0) + 1
        return found

    sent = sum(o.items for o in level.outcomes)
    return {
        "factor": level.factor,
        "offered_items_per_s": level.offered,
        "sent_items_per_s": sent / seconds,
        "answered_in_time_share": good / sent if sent else float("nan"),
        "goodput_items_per_s": good / seconds,
        "goodput_over_capacity": good / seconds / cap,
        "large": codes("large"),
        "small": codes("small"),
        "small_p50_s": q[49],
        "small_p99_s": q[98],
    }


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_level(
    args: argparse.Namespace, url: str, items: Items, factor: float, pid: int
) -> dict[str, Any]:
    """Capacity measured just before, then ``factor`` times it offered open loop."""
    large, clients = args.large_items, args.capacity_clients
    cap = asyncio.run(capacity(url, items, large, args.capacity_seconds, clients))
    level = Level(factor, factor * cap)
    used, started = cpu_seconds(pid), time.monotonic()
    asyncio.run(overload(url, items, level, large, args.seconds, random.Random(int(factor * 10))))
    row = summarise(level, args.seconds, args.deadline, cap)
    row["capacity_items_per_s"] = cap
    row["server_cpu_cores"] = (cpu_seconds(pid) - used) / (time.monotonic() - started)
    row["server_drain_rate"] = drain_rate(url)
    log.info("%s", row)
    return row


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
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    items = Items(args.data)
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


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    lines = [
        f"capacity measured before each level ({args.capacity_clients} closed-loop clients, "
        f"{args.large_items}-item requests, {args.capacity_seconds:g} s); deadline "
        f"{args.deadline:g} s; {args.seconds:g} s per level",
        "load  capacity  sent  goodput  goodput/capacity  1-item p50  1-item p99  "
        "server CPU  large (status: count)          1-item (status: count)",
    ]
    for row in rows:
        lines.append(
            f"{row['factor']:3g}x {row['capacity_items_per_s']:8.1f} "
            f"{row['sent_items_per_s']:6.1f} {row['goodput_items_per_s']:8.1f} "
            f"{row['goodput_over_capacity']:12.2f}      "
            f"{row['small_p50_s'] * 1000:7.0f} ms  {row['small_p99_s'] * 1000:7.0f} ms  "
            f"{row['server_cpu_cores']:6.2f} cores  "
            f"{json.dumps(row['large']):30s} {json.dumps(row['small'])}"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps({"levels": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
