"""Throughput of R^3 scoring, measured side by side in one run (the machine is noisy).

(a) the authors' scoring loop: PyTorch, 4 pairs per batch, padding to longest;
(b) raw ONNX Runtime on the plain optimum export, length-sorted batches of 16;
(b') the same on our fused export (graph-optimised ORT);
(c) the service over HTTP: 16 concurrent clients sending 8-item batches of fresh items;
then p50/p99 latency of 1-item requests under 32 clients. Prints c/a and c/b, and the
largest reward difference between (c) and (a): speed must not change the reward.

    python bench/bench_reward.py [--items 384] [--data ../shared/data/alpacafarm_qtype.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from r3_service.encoder import load_encoder
from r3_service.encoder.export import export_encoder
from r3_service.models import bundled_model_dir
from r3_service.reward import (
    cut_at_stop_strings,
    interpolate_relevance,
    length_incentive,
    repetition_penalty,
    wordpunct_tokenize,
)

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "alpacafarm_qtype.json"
log = logging.getLogger("bench")


def load_items(path: Path, n: int, offset: int) -> list[dict[str, str]]:
    """Items (query, response, reference, qtype); the dataset's answers stand in for rollouts."""
    if path.is_file():
        rows = json.loads(path.read_text())
    else:
        log.warning("%s not found: using synthetic items", path)
        rng = np.random.default_rng(0)
        words = "the a model reward answer question long short explain list data value".split()
        rows = [
            {
                "input": " ".join(rng.choice(words, size=int(rng.integers(5, 40)))),
                "output": " ".join(rng.choice(words, size=int(rng.integers(5, 300)))),
                "qtype": "OPENENDED" if i % 2 else "CONSTRAINED",
            }
            for i in range(4000)
        ]
    picked = rows[offset : offset + n]
    items = []
    for i, row in enumerate(picked):
        # A distinct response per item (the rollout), the dataset answer as reference.
        items.append(
            {
                "query": row["input"],
                "response": f"{row['output']} ({offset + i})",
                "reference": row["output"],
                "qtype": row["qtype"],
            }
        )
    return items


def pairs(items: list[dict[str, str]]) -> tuple[list[str], list[str]]:
    """Anchor and response text of each item, as R^3 pairs them."""
    anchors = [it["reference"] if it["qtype"] == "CONSTRAINED" else it["query"] for it in items]
    responses = [cut_at_stop_strings(it["response"]) for it in items]
    return anchors, responses


def reward_from(items: list[dict[str, str]], rel: np.ndarray) -> np.ndarray:
    out = []
    for it, r in zip(items, rel):
        tokens = wordpunct_tokenize(cut_at_stop_strings(it["response"]))
        rp = repetition_penalty(tokens)
        if it["qtype"] == "CONSTRAINED":
            out.append(interpolate_relevance(float(r), (0.0, 1.0), 512) * rp)
        else:
            out.append(float(r) * length_incentive(tokens) * rp)
    return np.array(out)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def bench_torch(items: list[dict[str, str]]) -> tuple[float, np.ndarray]:
    """(a) The authors' loop: PyTorch, 4 pairs per batch, padding to the longest."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    source = str(bundled_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(source, truncation_side="left")
    model = AutoModel.from_pretrained(source).eval()

    def embed(texts: list[str]) -> np.ndarray:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return ((hidden * mask).sum(1) / mask.sum(1)).numpy()

    anchors, responses = pairs(items)
    embed(anchors[:4])  # warm-up
    started = time.perf_counter()
    rel = []
    for i in range(0, len(items), 4):
        rel.append(cosine(embed(anchors[i : i + 4]), embed(responses[i : i + 4])))
        reward_from(items[i : i + 4], rel[-1])
    seconds = time.perf_counter() - started
    return len(items) / seconds, reward_from(items, np.concatenate(rel))


def bench_ort(folder: Path, items: list[dict[str, str]]) -> float:
    """(b) Raw ONNX Runtime, all texts length-sorted, batches of 16."""
    encoder = load_encoder(folder)
    anchors, responses = pairs(items)
    encoder.encode(anchors[:16], batch_size=16)  # warm-up
    started = time.perf_counter()
    vectors = encoder.encode(anchors + responses, batch_size=16)
    n = len(items)
    reward_from(items, cosine(vectors[:n], vectors[n:]))
    return len(items) / (time.perf_counter() - started)


def start_server(folder: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "R3_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "r3_service", "--model", str(folder), "--port", str(port)], env=env
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready")


def body(items: list[dict[str, Any]]) -> dict[str, object]:
    return {
        "query": [it["query"] for it in items],
        "response": [it["response"] for it in items],
        "reference": [it["reference"] for it in items],
        "qtype": [it["qtype"] for it in items],
    }


async def drive(
    url: str, chunks: list[list[dict[str, Any]]], clients: int
) -> tuple[float, list[list[float]], list[float]]:
    """POST each chunk to /reward from ``clients`` concurrent clients.

    Returns the wall seconds, each chunk's rewards (in order) and each request's latency.
    """
    rewards: list[list[float]] = [[] for _ in chunks]
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(chunks)):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                sent = time.perf_counter()
                answer = await client.post("/reward", json=body(chunks[i]))
                answer.raise_for_status()
                latencies.append(time.perf_counter() - sent)
                rewards[i] = answer.json()["rewards"]

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - started
    return seconds, rewards, latencies


async def bench_http(
    url: str, items: list[dict[str, Any]], clients: int, per_request: int
) -> tuple[float, np.ndarray]:
    """(c) items/s over HTTP: ``clients`` concurrent clients, ``per_request`` items each."""
    chunks = [items[i : i + per_request] for i in range(0, len(items), per_request)]
    seconds, rewards, _ = await drive(url, chunks, clients)
    return len(items) / seconds, np.array([r for chunk in rewards for r in chunk])


async def bench_latency(url: str, items: list[dict[str, Any]], clients: int) -> tuple[float, float]:
    """p50/p99 seconds of 1-item requests under ``clients`` concurrent clients."""
    _, _, latencies = await drive(url, [[it] for it in items], clients)
    q = statistics.quantiles(latencies, n=100)
    return q[49], q[98]


def _phase(argv: list[str]) -> dict[str, float]:
    """Run one measurement in a fresh interpreter, so no phase slows another.

    (Exporting with torch in a process, for one, leaves its PyTorch about 4x slower.)
    """
    out = subprocess.run(
        [sys.executable, __file__, *argv], check=True, capture_output=True, text=True
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def run_phase(args: argparse.Namespace) -> None:
    """The body of one --phase subprocess; prints one JSON line."""
    items = load_items(args.data, args.items, 0)
    result: dict[str, float] = {}
    if args.phase == "export":
        source = str(bundled_model_dir())
        export_encoder(source, args.plain, profile="minilm", optimize=False, local_files_only=True)
        export_encoder(source, args.fused, profile="minilm", local_files_only=True)
    elif args.phase == "torch":
        rate, rewards = bench_torch(items)
        np.save(args.rewards, rewards)
        result = {"rate": rate}
    elif args.phase == "ort":
        result = {"plain": bench_ort(args.plain, items), "fused": bench_ort(args.fused, items)}
    sys.stdout.write(json.dumps(result) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=384)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--phase", choices=["export", "torch", "ort"], help=argparse.SUPPRESS)
    parser.add_argument("--plain", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--fused", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rewards", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.phase:
        run_phase(args)
        return

    n = args.items
    with tempfile.TemporaryDirectory() as tmp:
        plain, fused, saved = Path(tmp) / "plain", Path(tmp) / "fused", Path(tmp) / "a.npy"
        common = ["--items", str(n), "--data", str(args.data), "--plain", str(plain)]
        common += ["--fused", str(fused), "--rewards", str(saved)]
        _phase(["--phase", "export", *common])
        rate_a = _phase(["--phase", "torch", *common])["rate"]
        rewards_a = np.load(saved)
        ort = _phase(["--phase", "ort", *common])
        rate_b, rate_b2 = ort["plain"], ort["fused"]

        items = load_items(args.data, n, 0)
        server = start_server(fused, args.port)
        try:
            url = f"http://127.0.0.1:{args.port}"
            asyncio.run(bench_http(url, load_items(args.data, 64, n), 16, 8))  # warm-up
            rate_c, rewards_c = asyncio.run(bench_http(url, items, 16, 8))
            untyped = [{**it, "qtype": None} for it in load_items(args.data, n, n + 64)]
            typed = load_items(args.data, n, n + 64)
            rate_typed, _ = asyncio.run(bench_http(url, typed[: n // 2], 16, 8))
            rate_untyped, _ = asyncio.run(bench_http(url, untyped[n // 2 :], 16, 8))
            lat_items = load_items(args.data, 256, 2 * n + 64)
            p50, p99 = asyncio.run(bench_latency(url, lat_items, 32))
        finally:
            server.terminate()
            server.wait(30)

    diff = float(np.abs(rewards_c - rewards_a).max())
    lines = [
        f"items per run: {n} (same items for a, b, b', c; fresh to the service)",
        f"(a)  authors' loop, PyTorch, batches of 4      {rate_a:8.1f} items/s",
        f"(b)  raw ORT, plain export, sorted batches 16  {rate_b:8.1f} items/s",
        f"(b') raw ORT, fused export, sorted batches 16  {rate_b2:8.1f} items/s",
        f"(c)  service over HTTP, 16 clients x 8 items   {rate_c:8.1f} items/s",
        f"c/a = {rate_c / rate_a:.2f}   c/b = {rate_c / rate_b:.2f}   "
        f"c/b' = {rate_c / rate_b2:.2f}",
        f"qtype given {rate_typed:.1f} items/s, qtype from the classifier "
        f"{rate_untyped:.1f} items/s: classification adds "
        f"{(rate_typed / rate_untyped - 1) * 100:+.1f}% time",
        f"1-item requests, 32 clients: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms",
        f"max |reward(c) - reward(a)| = {diff:.2e}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
