#!/bin/bash
cd /work/main
for i in 1 2; do
  .venv/bin/python bench/bench_overload.py --case small-first --json /tmp/ab24/q98_$i.json > /tmp/ab24/q98_$i.log 2>&1
done
echo done > /tmp/ab24/finished2
