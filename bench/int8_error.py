"""Reward error of an int8 export against fp32, on the benchmark items, over HTTP.

Exports the embedded default encoder twice (fp32 and int8, torch-free), serves each with
``r3-serve`` and scores the same items: the AlpacaFarm prompts that ship with the package,
each item scored twice, once with an answer from another prompt (a poor response) and once
with its own dataset answer. Items are scored with their given qtype and again with
``qtype: null`` (the classifier decides). Prints max and mean |reward(int8) - reward(fp32)|,
the same for relevance, and how often the two classifiers disagree.

    python bench/int8_error.py [--items 384] [--offset 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _server import start_server

from r3_service.data import ALPACAFARM_QTYPE
from r3_service.models import export_default


def bench_items(n: int, offset: int) -> list[dict[str, Any]]:
    """``n`` prompts from ``offset``; each with its own answer and with the next prompt's."""
    rows = json.loads(ALPACAFARM_QTYPE.read_text())[offset : offset + n + 1]
    items = []
    for i, row in enumerate(rows[:n]):
        for response in (row["output"], rows[i + 1]["output"]):
            items.append(
                {
                    "query": row["input"],
                    "response": response,
                    "reference": row["output"],
                    "qtype": row["qtype"],
                }
            )
    return items


def score(url: str, items: list[dict[str, Any]], typed: bool) -> dict[str, np.ndarray]:
    rewards: list[float] = []
    relevance: list[float] = []
    qtypes: list[str] = []
    with httpx.Client(base_url=url, timeout=300) as client:
        for start in range(0, len(items), 32):
            chunk = items[start : start + 32]
            body = {
                "query": [it["query"] for it in chunk],
                "response": [it["response"] for it in chunk],
                "reference": [it["reference"] for it in chunk],
                "qtype": [it["qtype"] if typed else None for it in chunk],
            }
            answer = client.post("/reward", json=body)
            answer.raise_for_status()
            data = answer.json()
            rewards += data["rewards"]
            relevance += data["components"]["relevance"]
            qtypes += data["qtype"]
    return {
        "reward": np.asarray(rewards),
        "relevance": np.asarray(relevance),
        "qtype": np.asarray(qtypes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=384, help="prompts (each scored twice)")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--port", type=int, default=8761)
    args = parser.parse_args()
    items = bench_items(args.items, args.offset)
    results: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    with tempfile.TemporaryDirectory(prefix="r3-int8-") as tmp:
        for dtype in ("fp32", "int8"):
            folder = Path(tmp) / dtype
            export_default(folder, dtype=dtype)
            proc = start_server(args.port, folder, timeout=120)
            try:
                url = f"http://127.0.0.1:{args.port}"
                results[dtype] = {
                    "typed": score(url, items, typed=True),
                    "untyped": score(url, items, typed=False),
                }
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    report: dict[str, Any] = {"items": len(items)}
    for mode in ("typed", "untyped"):
        fp32, int8 = results["fp32"][mode], results["int8"][mode]
        for key in ("reward", "relevance"):
            diff = np.abs(fp32[key] - int8[key])
            report[f"{mode}_{key}_abs_diff"] = {
                "max": round(float(diff.max()), 4),
                "mean": round(float(diff.mean()), 4),
                "p99": round(float(np.quantile(diff, 0.99)), 4),
            }
        report[f"{mode}_qtype_disagreements"] = int((fp32["qtype"] != int8["qtype"]).sum())
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
