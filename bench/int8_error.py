"""Reward error of an int8 export (or of another backend's precision) against fp32, over HTTP.

Exports the embedded default encoder twice (fp32 and int8, torch-free), serves each with
``r3-serve`` and scores the same items (``--variant openvino-bf16`` or ``openvino-fp32``:
the fp32 export served by ONNX Runtime and by OpenVINO at that precision instead): the
AlpacaFarm prompts that ship with the package, each item scored twice, once with an answer
from another prompt (a poor response) and once with its own dataset answer. Items are scored
with their given qtype and again with ``qtype: null`` (the classifier decides). Prints max,
mean and p99 of |reward(variant) - reward(fp32)|, the same for relevance, and how often the
two classifiers disagree.

    python bench/int8_error.py [--items 384] [--offset 0]
        [--variant int8|openvino-fp32|openvino-bf16]
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

#: What is compared with the fp32 export on ONNX Runtime: (export dtype, server environment).
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "int8": ("int8", {}),
    "openvino-fp32": ("fp32", {"R3_BACKEND": "openvino"}),
    "openvino-bf16": ("fp32", {"R3_BACKEND": "openvino", "R3_INFERENCE_PRECISION": "bf16"}),
}


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
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="int8")
    args = parser.parse_args()
    items = bench_items(args.items, args.offset)
    results: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    with tempfile.TemporaryDirectory(prefix="r3-int8-") as tmp:
        for run, (dtype, env) in (("fp32", ("fp32", {})), ("variant", VARIANTS[args.variant])):
            folder = Path(tmp) / dtype
            if not folder.exists():
                export_default(folder, dtype=dtype)
            proc = start_server(args.port, folder, env=env, timeout=120)
            try:
                url = f"http://127.0.0.1:{args.port}"
                results[run] = {
                    "typed": score(url, items, typed=True),
                    "untyped": score(url, items, typed=False),
                }
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    report: dict[str, Any] = {"items": len(items), "variant": args.variant}
    for mode in ("typed", "untyped"):
        fp32, int8 = results["fp32"][mode], results["variant"][mode]
        for key in ("reward", "relevance"):
            diff = np.abs(fp32[key] - int8[key])
            report[f"{mode}_{key}_abs_diff"] = {
                "max": float(f"{float(diff.max()):.3g}"),
                "mean": float(f"{float(diff.mean()):.3g}"),
                "p99": float(f"{float(np.quantile(diff, 0.99)):.3g}"),
            }
        report[f"{mode}_qtype_disagreements"] = int((fp32["qtype"] != int8["qtype"]).sum())
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
