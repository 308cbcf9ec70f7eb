"""Inference backends side by side through the service over HTTP, in one run.

Starts ``r3-serve`` on the embedded default once per backend (ONNX Runtime fp32, the
default; OpenVINO fp32; OpenVINO bf16 where the CPU has bf16 units, else noted as refused),
and in interleaved rounds sends each the same fresh items (16 concurrent clients, 8-item
requests, qtype given). Prints, per backend: items/s (median over rounds) and its ratio to
ONNX Runtime, the seconds from process start to ready, the first request's latency after
ready, the server's RSS idle and its peak, and the largest reward difference to ONNX
Runtime on the same items (speed must not buy a different reward unless asked: bf16).

    python bench/bench_backends.py [--items 384] [--rounds 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _server import start_server
from bench_reward import DEFAULT_DATA, bench_http, body, load_items

log = logging.getLogger("bench_backends")

BACKENDS: dict[str, dict[str, str]] = {
    "onnxruntime fp32": {"R3_BACKEND": "onnxruntime"},
    "openvino fp32": {"R3_BACKEND": "openvino"},
    "openvino bf16": {"R3_BACKEND": "openvino", "R3_INFERENCE_PRECISION": "bf16"},
}


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of ``pid`` in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return (
        int(fields["VmRSS"].split()[0]) / 1024,
        int(fields["VmHWM"].split()[0]) / 1024,
    )


def has_bf16() -> bool:
    import openvino as ov

    from r3_service.encoder.openvino import cpu_capabilities

    return "BF16" in cpu_capabilities(ov.Core())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=384, help="fresh items per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--port", type=int, default=8771)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    found: dict[str, dict[str, Any]] = {}
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for k, (name, env) in enumerate(BACKENDS.items()):
            if env.get("R3_INFERENCE_PRECISION") == "bf16" and not has_bf16():
                found[name] = {"refused": "this CPU has no bf16 units (the service refuses it)"}
                continue
            port = args.port + k
            started = time.perf_counter()
            proc = start_server(port, env={**env, "R3_MAX_ITEMS_PER_REQUEST": "64"}, timeout=600)
            url = f"http://127.0.0.1:{port}"
            ready_s = time.perf_counter() - started
            idle = rss_mb(proc.pid)[0]
            first = load_items(args.data, 1, 1999)
            sent = time.perf_counter()
            httpx.post(url + "/reward", json=body(first), timeout=120).raise_for_status()
            found[name] = {
                "ready_s": round(ready_s, 2),
                "first_request_ms": round((time.perf_counter() - sent) * 1000, 1),
                "rss_idle_mb": round(idle, 1),
                "items_per_s": [],
            }
            servers[name] = (proc, url)
        rewards: dict[str, list[np.ndarray]] = {name: [] for name in servers}
        for r in range(args.rounds):
            items = load_items(args.data, args.items, r * args.items)
            for name, (_, url) in servers.items():  # each its own cache: fresh items to all
                rate, got = asyncio.run(bench_http(url, items, clients=16, per_request=8))
                found[name]["items_per_s"].append(round(rate, 1))
                rewards[name].append(got)
                log.info("round %d %s: %.1f items/s", r, name, rate)
        for name, (proc, _) in servers.items():
            found[name]["rss_peak_mb"] = round(rss_mb(proc.pid)[1], 1)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(60)
    base = "onnxruntime fp32"
    for name in servers:
        f = found[name]
        f["items_per_s_median"] = statistics.median(f["items_per_s"])
        f["vs_onnxruntime"] = round(f["items_per_s_median"] / found[base]["items_per_s_median"], 2)
        diff = np.abs(np.concatenate(rewards[name]) - np.concatenate(rewards[base]))
        f["reward_abs_diff_max"] = float(diff.max())
    print_report(found, args)
    if args.json:
        args.json.write_text(json.dumps(found, indent=2) + "\n")


def print_report(found: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    out = [
        f"{args.rounds} rounds x {args.items} fresh items, 16 clients x 8 items, qtype given",
        f"{'backend':18} {'items/s':>8} {'x ORT':>6} {'ready s':>8} {'1st ms':>7} "
        f"{'RSS idle':>9} {'RSS peak':>9} {'max |dreward|':>14}",
    ]
    for name, f in found.items():
        if "refused" in f:
            out.append(f"{name:18} refused: {f['refused']}")
            continue
        out.append(
            f"{name:18} {f['items_per_s_median']:8.1f} {f['vs_onnxruntime']:6.2f} "
            f"{f['ready_s']:8.1f} {f['first_request_ms']:7.0f} {f['rss_idle_mb']:8.0f}M "
            f"{f['rss_peak_mb']:8.0f}M {f['reward_abs_diff_max']:14.2e}"
        )
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
