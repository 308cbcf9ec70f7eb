"""What the query-type classifier costs /reward: qtype null vs qtype given, side by side.

A real server (the default MiniLM export with its fine-tuned classifier) is sent
the same kind of load in interleaved rounds, each mode on its own fresh prompts
(so no mode profits from the other's caches):

* GRPO-shaped: each request is one prompt with 8 sampled responses and its
  reference; ``given`` sends the dataset's qtype, ``null`` lets the classifier
  decide (one classification per prompt, shared by its 8 items);
* all-fresh: each request holds 8 items with 8 different prompts, so every item
  pays a classification.

    python bench/bench_classifier.py [--model EXPORTED_DIR] [--rounds 3] [--prompts 48]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _server import start_server

from r3_service.data import ALPACAFARM_QTYPE

ROOT = Path(__file__).resolve().parents[1]
GROUP = 8


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def responses_for(answer: str, k: int) -> list[str]:
    """k distinct responses: the dataset answer (standing in for a rollout, as in
    bench_reward.py), each with its own number so none is a duplicate."""
    return [f"{answer} ({i + 1})" for i in range(k)]


def grpo_requests(rows: list[dict[str, Any]], typed: bool) -> list[dict[str, Any]]:
    return [
        {
            "query": [r["input"]] * GROUP,
            "response": responses_for(r["output"], GROUP),
            "reference": [r["output"]] * GROUP,
            "qtype": [r["qtype"] if typed else None] * GROUP,
        }
        for r in rows
    ]


def fresh_requests(rows: list[dict[str, Any]], typed: bool) -> list[dict[str, Any]]:
    chunks = [rows[i : i + GROUP] for i in range(0, len(rows) - GROUP + 1, GROUP)]
    return [
        {
            "query": [r["input"] for r in c],
            "response": [responses_for(r["output"], 2)[0] for r in c],
            "reference": [r["output"] for r in c],
            "qtype": [r["qtype"] if typed else None for r in c],
        }
        for c in chunks
    ]


async def run(url: str, bodies: list[dict[str, Any]], clients: int) -> float:
    """Items per second for sending ``bodies`` with ``clients`` concurrent senders."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def sender(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            answer = await client.post(url + "/reward", json=body)
            answer.raise_for_status()

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(sender(client) for _ in range(clients)))
    return sum(len(b["query"]) for b in bodies) / (time.perf_counter() - started)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=None, help="default: the embedded export")
    parser.add_argument("--data", type=Path, default=ALPACAFARM_QTYPE)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=48, help="prompts per mode and round")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    rows = json.loads(args.data.read_text())
    need = (args.rounds + 1) * 4 * args.prompts
    if need > len(rows):
        raise SystemExit(f"need {need} prompts, the data has {len(rows)}")
    log = Path(tempfile.mkdtemp()) / "server.log"
    proc = start_server(args.port, args.model, timeout=900, log=log)
    url = f"http://127.0.0.1:{args.port}"
    modes = {
        "GRPO, qtype given": lambda r: grpo_requests(r, True),
        "GRPO, qtype null": lambda r: grpo_requests(r, False),
        "fresh, qtype given": lambda r: fresh_requests(r, True),
        "fresh, qtype null": lambda r: fresh_requests(r, False),
    }
    speeds: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    try:
        cursor = 0
        for r in range(-1, args.rounds):  # round -1 warms both models up (ORT arenas), untimed
            order = list(modes) if r % 2 == 0 else list(reversed(modes))
            for mode in order:
                chunk = rows[cursor : cursor + args.prompts]
                cursor += args.prompts
                bodies = modes[mode](chunk)
                before = cpu_seconds(proc.pid)
                speed = asyncio.run(run(url, bodies, args.clients))
                if r >= 0:
                    speeds[mode].append(speed)
                    items = sum(len(b["query"]) for b in bodies)
                    cpu[mode].append((cpu_seconds(proc.pid) - before) / items * 1000)
    finally:
        proc.terminate()
        proc.wait(30)
    for mode, values in speeds.items():
        rounds = ", ".join(f"{v:.0f}" for v in values)
        out(
            f"{mode:22s} {statistics.median(values):7.1f} items/s  (rounds: {rounds})  "
            f"server CPU {statistics.median(cpu[mode]):6.2f} ms/item"
        )
    for shape in ("GRPO", "fresh"):
        null, given = f"{shape}, qtype null", f"{shape}, qtype given"
        ratios = [n / g for n, g in zip(speeds[null], speeds[given])]
        costs = [n / g for n, g in zip(cpu[null], cpu[given])]
        out(
            f"{shape}: null/given throughput = {statistics.median(ratios):.3f} "
            f"(per-round: {', '.join(f'{x:.3f}' for x in ratios)}); "
            f"server CPU per item null/given = {statistics.median(costs):.3f} "
            f"(per-round: {', '.join(f'{x:.3f}' for x in costs)})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
