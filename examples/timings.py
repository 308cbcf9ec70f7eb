"""Print the timings a training run measured (from its metrics.jsonl): used by train_demo.sh.

python examples/timings.py OUT/metrics.jsonl [STARTED_UNIX_SECONDS]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    path = Path(argv[1])
    rows = []
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if isinstance(r.get("time_step_s"), (int, float))]
    out = sys.stdout
    if len(argv) > 2:
        out.write(f"wall time of this run: {time.time() - float(argv[2]):.0f} s\n")
    if not steps:
        out.write(f"no finished training step in {path}\n")
        return 0
    first, warm = steps[0], steps[1:] or steps[:1]
    warm_s = statistics.median(r["time_step_s"] for r in warm)
    reward_s = statistics.median(r.get("time_reward_s", float("nan")) for r in steps)
    rate = statistics.median(r.get("rollouts_per_s", float("nan")) for r in warm)
    out.write(
        f"measured on this machine: {len(steps)} steps; first step {first['time_step_s']:.1f} s, "
        f"later steps {warm_s:.1f} s (median, {rate:.2f} rollouts/s); "
        f"reward call {reward_s:.2f} s per step (median)\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
