"""Throughput of R^3 scoring, measured side by side in one run (the machine is noisy).

(a) the authors' scoring loop: PyTorch, 4 pairs per batch, padding to longest;
(b) raw ONNX Runtime on the default export, length-sorted batches of 16 (our ceiling);
(b') the same on the offline-fused export (ORT transformer optimizer), for comparison;
(c) the service over HTTP: 16 concurrent clients sending 8-item batches of fresh items;
then the cost of classifying untyped items, and p50/p99 latency of 1-item requests under
32 clients. Rounds interleave (a), (b), (b') and (c) on the same fresh items; the figures
are medians. Prints c/a and c/b, and the largest reward difference between (c) and (a):
speed must not change the reward. Each scorer runs in its own process.

    python bench/bench_reward.py [--items 384] [--rounds 3] [--data PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _server import start_server

from r3_service.data import ALPACAFARM_QTYPE
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
DEFAULT_DATA = ALPACAFARM_QTYPE  # packaged with r3_service
log = logging.getLogger("bench")


def load_items(path: Path, n: int, offset: int) -> list[dict[str, Any]]:
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
                if answer.status_code != 200:  # every request must be answered: say why not
                    raise RuntimeError(f"/reward answered {answer.status_code}: {answer.text}")
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
    items = load_items(args.data, args.items, args.offset)
    result: dict[str, float] = {}
    if args.phase == "export":
        source = str(bundled_model_dir())
        # The shipped default (fp32: no offline fusion), and the fused graph for comparison.
        export_encoder(source, args.plain, profile="minilm", local_files_only=True)
        export_encoder(source, args.fused, profile="minilm", optimize=True, local_files_only=True)
    elif args.phase == "torch":
        rate, rewards = bench_torch(items)
        np.save(args.rewards, rewards)
        result = {"rate": rate}
    elif args.phase == "ort":
        result = {"plain": bench_ort(args.plain, items), "fused": bench_ort(args.fused, items)}
    sys.stdout.write(json.dumps(result) + "\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=384, help="items per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--phase", choices=["export", "torch", "ort"], help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--plain", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--fused", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rewards", type=Path, help=argparse.SUPPRESS)
    return parser


def measure(args: argparse.Namespace, url: str, paths: list[str], saved: Path) -> dict[str, Any]:
    """Interleaved rounds of (a), (b), (b'), (c), then classification cost and latency."""
    n = args.items
    rows: dict[str, list[float]] = {k: [] for k in ("a", "b", "b2", "c", "typed", "untyped")}
    diffs: list[float] = []
    warm = [
        {"query": f"warm-up {i}", "response": "w " * i, "reference": "w", "qtype": None}
        for i in range(64)
    ]
    asyncio.run(bench_http(url, warm, 16, 8))
    # Rounds interleave every scorer on the same fresh slice, so that a slow spell of the
    # machine hits all of them; the figures are medians over rounds.
    for r in range(args.rounds):
        common = ["--items", str(n), "--offset", str(r * n), "--data", str(args.data)]
        rows["a"].append(_phase(["--phase", "torch", *common, *paths])["rate"])
        ort = _phase(["--phase", "ort", *common, *paths])
        rows["b"].append(ort["plain"])
        rows["b2"].append(ort["fused"])
        rate, rewards = asyncio.run(bench_http(url, load_items(args.data, n, r * n), 16, 8))
        rows["c"].append(rate)
        diffs.append(float(np.abs(rewards - np.load(saved)).max()))
    # Classification cost: fresh items typed vs left to the classifier, alternating.
    quarter, base = 160, args.rounds * n
    for q in range(4):
        part = load_items(args.data, quarter, base + q * quarter)
        if q % 2:
            part = [{**it, "qtype": None} for it in part]
        rows["untyped" if q % 2 else "typed"].append(asyncio.run(bench_http(url, part, 16, 8))[0])
    latency_items = load_items(args.data, 200, base + 4 * quarter)
    p50, p99 = asyncio.run(bench_latency(url, latency_items, 32))
    return {"rows": rows, "diffs": diffs, "p50": p50, "p99": p99}


def report(args: argparse.Namespace, found: dict[str, Any]) -> str:
    rows, diffs = found["rows"], found["diffs"]
    med = {k: statistics.median(v) for k, v in rows.items()}
    ratio_ca = statistics.median(c / a for c, a in zip(rows["c"], rows["a"]))
    ratio_cb = statistics.median(c / b for c, b in zip(rows["c"], rows["b"]))
    ratio_cb2 = statistics.median(c / b for c, b in zip(rows["c"], rows["b2"]))

    def fmt(key: str) -> str:
        return f"{med[key]:8.1f} items/s  (rounds: {', '.join(f'{v:.0f}' for v in rows[key])})"

    lines = [
        f"{args.rounds} rounds of {args.items} items; each round's items are fresh to the service",
        f"(a)  authors' loop, PyTorch, batches of 4        {fmt('a')}",
        f"(b)  raw ORT, default export, sorted batches 16  {fmt('b')}",
        f"(b') raw ORT, fused export, sorted batches 16    {fmt('b2')}",
        f"(c)  service over HTTP, 16 clients x 8 items     {fmt('c')}",
        f"c/a = {ratio_ca:.2f}   c/b = {ratio_cb:.2f}   c/b' = {ratio_cb2:.2f}   (medians of "
        "per-round ratios)",
        f"qtype given {med['typed']:.1f} items/s, qtype from the classifier "
        f"{med['untyped']:.1f} items/s: classification adds "
        f"{(med['typed'] / med['untyped'] - 1) * 100:+.1f}% time",
        f"1-item requests, 32 clients: p50 {found['p50'] * 1000:.1f} ms, "
        f"p99 {found['p99'] * 1000:.1f} ms",
        f"max |reward(c) - reward(a)| = {max(diffs):.2e}",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = _parser().parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.phase:
        run_phase(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        plain, fused, saved = Path(tmp) / "plain", Path(tmp) / "fused", Path(tmp) / "a.npy"
        paths = ["--plain", str(plain), "--fused", str(fused), "--rewards", str(saved)]
        _phase(["--phase", "export", "--data", str(args.data), *paths])
        # The service as shipped: the embedded default (the same encoder graph as the
        # plain export of (b)) with its query-type classifier.
        server = start_server(args.port, timeout=600)
        try:
            found = measure(args, f"http://127.0.0.1:{args.port}", paths, saved)
        finally:
            server.terminate()
            server.wait(30)
    sys.stdout.write(report(args, found))


if __name__ == "__main__":
    main()
