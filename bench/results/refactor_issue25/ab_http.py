"""Items/s over HTTP, old vs new service code, interleaved rounds on fresh items."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx

rows = json.load(open("/work/shared/data/alpacafarm_qtype.json"))
PY = "/work/main/.venv/bin/python"


def start(port: int, code: str | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "R3_LOG_LEVEL": "warning"}
    if code:
        env["R3_CODE"] = code
    proc = subprocess.Popen([PY, "/tmp/run_code.py", "--port", str(port)], env=env)
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


def items(tag: str, n: int) -> list[dict[str, str]]:
    out = []
    for i in range(n):
        row = rows[(i * 13) % len(rows)]
        other = rows[(i * 7 + 3) % len(rows)]["output"]
        out.append(
            {
                "q": row["input"] + f" ({tag} {i})",
                "r": other + f" {tag} {i}",
                "ref": row["output"],
                "t": row["qtype"],
            }
        )
    return out


async def drive(port: int, its: list[dict[str, str]], untyped: bool) -> float:
    queue = list(reversed([its[k : k + 8] for k in range(0, len(its), 8)]))
    async with httpx.AsyncClient(timeout=120) as client:

        async def worker() -> None:
            while queue:
                chunk = queue.pop()
                body: dict[str, Any] = {
                    "query": [x["q"] for x in chunk],
                    "response": [x["r"] for x in chunk],
                    "reference": [x["ref"] for x in chunk],
                }
                if not untyped:
                    body["qtype"] = [x["t"] for x in chunk]
                resp = await client.post(f"http://127.0.0.1:{port}/reward", json=body)
                assert resp.status_code == 200, resp.text

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(16)))
        return len(its) / (time.perf_counter() - started)


def main() -> None:
    servers = {"old": (8801, "/tmp/old/service"), "new": (8802, None)}
    procs = {k: start(p, c) for k, (p, c) in servers.items()}
    try:
        for k, (port, _) in servers.items():  # warm-up
            asyncio.run(drive(port, items(f"warm {k}", 64), False))
        res: dict[str, dict[str, list[float]]] = {k: {"typed": [], "untyped": []} for k in servers}
        for rnd in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
            order = list(servers) if rnd % 2 == 0 else list(reversed(servers))
            for kind in ("typed", "untyped"):
                for k in order:
                    fresh = items(f"{k} {kind} {rnd}", 384)
                    res[k][kind].append(asyncio.run(drive(servers[k][0], fresh, kind == "untyped")))
        for kind in ("typed", "untyped"):
            old, new = res["old"][kind], res["new"][kind]
            o, n = statistics.median(old), statistics.median(new)
            print(  # noqa: T201 - a script's output
                f"{kind}: old {o:.1f} items/s {[round(x, 1) for x in old]}, "
                f"new {n:.1f} {[round(x, 1) for x in new]}, new/old {n / o:.3f}"
            )
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
