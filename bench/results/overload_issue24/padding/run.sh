#!/usr/bin/env bash
# Runs of `python bench/bench_overload.py --case small-first`, one after the other on the
# quiet machine, each with the scheduler of a given commit (and, optionally, another
# SMALL_BATCH_SHARE): arguments NAME=REV or NAME=REV:SHARE, e.g.
#   bash run.sh base_2=f0b08ff dp10_2=d8b2c6d base_3=f0b08ff dp10_3=d8b2c6d
#   bash run.sh s50_1=d8b2c6d:0.5 dp10_4=d8b2c6d s50_2=d8b2c6d:0.5
# base = greedy cuts (f0b08ff); dp10 = least-cost cuts, overhead 1/10 of the budget (d8b2c6d).
# The working tree's scheduler is put back at the end. OUT=DIR writes the outputs to DIR.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
D=${OUT:-bench/results/overload_issue24/padding}  # where the outputs go
F=service/r3_service/engine/scheduler.py
cp "$F" "$D/.scheduler.keep"
trap 'mv "$D/.scheduler.keep" "$F"' EXIT
for arg in "$@"; do
  name="${arg%%=*}" spec="${arg#*=}"
  rev="${spec%%:*}" share="${spec#*:}"
  git show "$rev:$F" > "$F"
  if [[ "$share" != "$spec" ]]; then sed -i "s/^SMALL_BATCH_SHARE = .*/SMALL_BATCH_SHARE = $share/" "$F"; fi
  python bench/bench_overload.py --case small-first --json "$D/$name.json" > "$D/$name.log" 2>&1
done
