#!/bin/bash
cd /work/main
for i in 1 2; do
  git stash push -q service/r3_service/engine/scheduler.py tests/service/engine/test_scheduler.py
  .venv/bin/python bench/bench_overload.py --case small-first --json /tmp/ab24/old$i.json > /tmp/ab24/old$i.log 2>&1
  git stash pop -q
  .venv/bin/python bench/bench_overload.py --case small-first --json /tmp/ab24/new$i.json > /tmp/ab24/new$i.log 2>&1
done
echo done > /tmp/ab24/finished
