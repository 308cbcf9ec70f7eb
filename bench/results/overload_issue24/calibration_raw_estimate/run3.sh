#!/bin/bash
cd /work/main
for i in 3 4; do
  .venv/bin/python bench/bench_overload.py --case small-first --json /tmp/ab24/q98_$i.json > /tmp/ab24/q98_$i.log 2>&1
  .venv/bin/python bench/bench_overload.py --case small-first --probe-every 0.25 --json /tmp/ab24/p025_$i.json > /tmp/ab24/p025_$i.log 2>&1
done
echo done > /tmp/ab24/finished3
