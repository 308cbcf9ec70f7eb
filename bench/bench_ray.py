"""Scale-out throughput, measured side by side in one run (the machine is noisy).

On the same fresh items, in interleaved rounds, 16 concurrent clients send 8-item
``/reward`` requests to:

(1) one ``r3-serve`` process (ONNX Runtime on all CPUs);
(2) two ``r3-serve`` processes of one ORT thread each, behind the client's endpoint pool
    (``Client(base_url=[a, b])``: what several compose/Kubernetes replicas get);
(3) Ray Serve, 1 replica of 1 CPU;
(4) Ray Serve, 2 replicas of 1 CPU each (a second app on the same cluster).

Prints items/s per setup (medians over rounds) and the ratios 4/3 (scaling 1 -> 2
replicas) and 4/1, 2/1. The same 64 items are scored by every setup and the largest
reward difference to (1) is printed: scaling out must not change a reward.

    python bench/bench_ray.py [--items 384] [--rounds 3] [--data PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _server import start_server

from r3_client import Client
from r3_service.config import Settings
from r3_service.models import resolve_model_dir

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "alpacafarm_qtype.json"
log = logging.getLogger("bench_ray")


def load_items(path: Path, n: int) -> list[dict[str, str]]:
    """AlpacaFarm prompts with the dataset answers as responses, else synthetic texts."""
    if path.is_file():
        rows = json.loads(path.read_text())
        return [{"query": r["input"], "response": r["output"]} for r in rows[:n]]
    log.warning("%s not found: synthetic items", path)
    words = "the a model reward answer question long short explain list data value".split()
    return [
        {
            "query": " ".join(words[(i + k) % len(words)] for k in range(5 + i % 30)),
            "response": " ".join(words[(i * 7 + k) % len(words)] for k in range(5 + i % 200)),
        }
        for i in range(n)
    ]


def fresh(items: list[dict[str, str]], tag: str) -> list[dict[str, str]]:
    """The same items made unique per measurement (no cache hits across setups)."""
    return [{"query": f"{it['query']} [{tag}]", "response": it["response"]} for it in items]


def drive(
    client: Client, items: list[dict[str, str]], clients: int = 16
) -> tuple[float, list[float]]:
    """items/s with ``clients`` threads sending 8-item requests, and the rewards in order."""
    chunks = [items[i : i + 8] for i in range(0, len(items), 8)]

    def one(chunk: list[dict[str, str]]) -> list[float]:
        result = client.reward(
            query=[c["query"] for c in chunk], response=[c["response"] for c in chunk]
        )
        return list(result.rewards)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        parts = list(pool.map(one, chunks))
    return len(items) / (time.perf_counter() - start), [r for p in parts for r in p]


def start_r3_serve(folder: Path, port: int, threads: int) -> subprocess.Popen[bytes]:
    start = time.perf_counter()
    proc = start_server(port, folder, env={"R3_INTRA_OP_THREADS": str(threads)}, timeout=120)
    log.info("r3-serve ready in %.1f s", time.perf_counter() - start)
    return proc


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_ray(folder: Path, cache: Path) -> str:
    """A local Ray cluster with two apps: /one (1 replica) and /two (2), 1 CPU each."""
    import ray
    from ray import serve

    from r3_service.serving.ray_app import RayServeArgs, build_app

    port = free_port()
    start = time.perf_counter()
    # 3 logical CPUs for 3 replicas; only the measured app's replicas are busy at a time.
    ray.init(num_cpus=3, include_dashboard=False, namespace="serve", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    log.info("Ray cluster and Serve up in %.1f s", time.perf_counter() - start)
    base = {"model": str(folder), "num_cpus": 1, "settings": {"cache_dir": str(cache)}}
    for name, replicas in (("one", 1), ("two", 2)):
        args = RayServeArgs.model_validate({**base, "num_replicas": replicas})
        start = time.perf_counter()
        serve.run(build_app(args), name=name, route_prefix=f"/{name}")
        log.info(
            "app %r (%d replicas) running in %.1f s", name, replicas, time.perf_counter() - start
        )
    return f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    folder = resolve_model_dir(None, Settings().cache_dir)  # the embedded default
    items = load_items(args.data, args.items)
    one_port, a_port, b_port = free_port(), free_port(), free_port()
    procs = [start_r3_serve(folder, one_port, 0)]
    procs += [start_r3_serve(folder, p, 1) for p in (a_port, b_port)]
    try:
        ray_url = start_ray(folder, tmp / "ray-cache")
        clients = {
            "1": Client(base_url=f"http://127.0.0.1:{one_port}"),
            "2": Client(base_url=[f"http://127.0.0.1:{p}" for p in (a_port, b_port)]),
            "3": Client(base_url=ray_url + "/one"),
            "4": Client(base_url=ray_url + "/two"),
        }
        rewards = {k: drive(c, items[:64])[1] for k, c in clients.items()}  # also warms up
        results: dict[str, list[float]] = {k: [] for k in clients}
        for rnd in range(args.rounds):
            order = list(clients)[rnd % 4 :] + list(clients)[: rnd % 4]
            for key in order:  # fresh texts: no cache hits, same work for every setup
                results[key].append(drive(clients[key], fresh(items, f"{rnd}-{key}"))[0])
            rates = {k: round(v[-1], 1) for k, v in results.items()}
            log.info("round %d: %s (load average %.1f)", rnd, rates, os.getloadavg()[0])
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
    report(results, rewards)


def report(results: dict[str, list[float]], rewards: dict[str, list[float]]) -> None:
    names = {
        "1": "one r3-serve process, ORT on 2 CPUs",
        "2": "two r3-serve processes x 1 thread, client pool",
        "3": "Ray Serve, 1 replica x 1 CPU",
        "4": "Ray Serve, 2 replicas x 1 CPU",
    }
    med = {k: statistics.median(v) for k, v in results.items()}
    for key, name in names.items():
        rounds = ", ".join(f"{v:.0f}" for v in results[key])
        log.info("(%s) %-48s %6.1f items/s  (rounds: %s)", key, name, med[key], rounds)
    ratio = {
        name: statistics.median(x / y for x, y in zip(results[a], results[b]))
        for name, a, b in (("4/3", "4", "3"), ("4/1", "4", "1"), ("2/1", "2", "1"))
    }
    log.info(
        "   ".join(f"{k} = {v:.2f}" for k, v in ratio.items()) + "   (medians of per-round ratios)"
    )
    diffs = [abs(x - y) for k in ("2", "3", "4") for x, y in zip(rewards[k], rewards["1"])]
    log.info("max |reward - reward(one process)| = %.2e", max(diffs))


if __name__ == "__main__":
    main()
