#!/usr/bin/env bash
# A/B of batch cutting, alternating on the quiet machine: "base" = greedy cuts (the scheduler
# at f0b08ff), "dp10" = least-cost cuts with a batch overhead of 1/10 of the budget. Each run:
#   python bench/bench_overload.py --case small-first
# The scheduler file is swapped between runs; the new one is put back at the end.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
D=bench/results/overload_issue24/padding
for run in "$@"; do
  variant="${run%_*}"
  if [[ "$variant" == base ]]; then cp /tmp/sched_old.py service/r3_service/engine/scheduler.py
  else cp /tmp/sched_new.py service/r3_service/engine/scheduler.py; fi
  python bench/bench_overload.py --case small-first --json "$D/$run.json" > "$D/$run.log" 2>&1
done
cp /tmp/sched_new.py service/r3_service/engine/scheduler.py
