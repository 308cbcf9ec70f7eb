"""Expose the trainer's ``metrics.jsonl`` to Prometheus (standard library only).

The trainer (``r3-train``) logs to TensorBoard and appends one JSON object per logged
step to ``metrics.jsonl`` in its output folder; it has no Prometheus endpoint. This
sidecar reads the newest ``metrics.jsonl`` under ``--outputs`` at every scrape and
serves each numeric field of its last record as a gauge named ``r3_trainer_<field>``
(lower-cased, non-alphanumerics -> ``_``; nested objects are flattened with ``_``),
labelled with the run folder. ``reward/mean`` becomes ``r3_trainer_reward_mean``,
``kl`` becomes ``r3_trainer_kl``. Two more gauges describe the file itself:
``r3_trainer_metrics_file_present`` and ``r3_trainer_last_update_timestamp_seconds``.

    python metrics_exporter.py --outputs /outputs --port 9400
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PREFIX = "r3_trainer_"
METRICS_FILE = "metrics.jsonl"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TAIL_BYTES = 256 * 1024


def metric_name(key: str) -> str:
    """``reward/mean`` -> ``r3_trainer_reward_mean``."""
    name = re.sub(r"[^a-z0-9_]+", "_", key.lower())
    name = re.sub(r"_+", "_", name).strip("_")
    return PREFIX + (name or "value")


def flatten(record: dict[str, Any], parent: str = "") -> dict[str, float]:
    """Numeric leaves of a JSON object; nested keys joined with ``_``."""
    out: dict[str, float] = {}
    for key, value in record.items():
        full = f"{parent}_{key}" if parent else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, full))
        elif isinstance(value, bool):
            out[full] = float(value)
        elif isinstance(value, (int, float)):
            out[full] = float(value)
    return out


def newest_metrics_file(outputs: Path) -> Path | None:
    """The most recently written ``metrics.jsonl`` at or below ``outputs``."""
    try:
        candidates = [p for p in outputs.rglob(METRICS_FILE) if p.is_file()]
    except OSError:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def last_record(path: Path) -> dict[str, Any] | None:
    """The last line of ``path`` that parses as a JSON object (a torn last line is skipped)."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - _TAIL_BYTES))
        lines = handle.read().splitlines()
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(record, dict):
            return record
    return None


def _value(number: float) -> str:
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    return repr(number)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(outputs: Path) -> str:
    """The Prometheus text exposition of the newest record under ``outputs``."""
    path = newest_metrics_file(outputs)
    lines = [
        f"# HELP {PREFIX}metrics_file_present Whether a {METRICS_FILE} was found.",
        f"# TYPE {PREFIX}metrics_file_present gauge",
        f"{PREFIX}metrics_file_present {1 if path else 0}",
    ]
    if path is None:
        return "\n".join(lines) + "\n"
    run = _label(str(path.parent.relative_to(outputs)) if path.parent != outputs else ".")
    lines += [
        f"# HELP {PREFIX}last_update_timestamp_seconds When {METRICS_FILE} was last written.",
        f"# TYPE {PREFIX}last_update_timestamp_seconds gauge",
        f'{PREFIX}last_update_timestamp_seconds{{run="{run}"}} {_value(path.stat().st_mtime)}',
    ]
    reserved = {f"{PREFIX}metrics_file_present", f"{PREFIX}last_update_timestamp_seconds"}
    seen: set[str] = set(reserved)
    for key, number in flatten(last_record(path) or {}).items():
        name = metric_name(key)
        if name in seen:
            continue
        seen.add(name)
        lines += [
            f"# HELP {name} Trainer field {json.dumps(key)} of the last {METRICS_FILE} record.",
            f"# TYPE {name} gauge",
            f'{name}{{run="{run}"}} {_value(number)}',
        ]
    return "\n".join(lines) + "\n"


def make_handler(outputs: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = render(outputs).encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", type=Path, default=Path("/outputs"))
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9400)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.outputs))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
