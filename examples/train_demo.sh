#!/usr/bin/env bash
# Demo: PPO on the bundled SmolLM2-135M-Instruct, on CPU, for a few steps, against a running
# R^3 service. It starts nothing itself; first, in another shell:
#
#   r3-serve --port 8000            # the service with its embedded default encoder
#
# then:  bash examples/train_demo.sh          (R3_BASE_URL, DATASET, OUT, STEPS override)
#
# Writes OUT/metrics.jsonl, OUT/training.png (reward, KL, length per step), OUT/train.log
# (with the held-out sample table), OUT/tensorboard/ and OUT/checkpoints/.
set -euo pipefail
cd "$(dirname "$0")/.."
URL="${R3_BASE_URL:-http://127.0.0.1:8000}"
DATASET="${DATASET:-examples/prompts.jsonl}"
OUT="${OUT:-outputs/demo}"
STEPS="${STEPS:-4}"
if ! curl -fsS "$URL/readyz" >/dev/null 2>&1; then
  echo "no R^3 service at $URL: start one with 'r3-serve --port 8000' (or set R3_BASE_URL)" >&2
  exit 1
fi
r3-train \
  --reward-url "$URL" \
  --dataset "$DATASET" \
  --steps "$STEPS" \
  --batch-size 8 \
  --max-new-tokens 64 \
  --eval-size 4 --eval-batch-size 4 --eval-every "$STEPS" \
  --save-every "$STEPS" \
  --cpu \
  --output-dir "$OUT" "$@"
echo "plot: $OUT/training.png   metrics: $OUT/metrics.jsonl"
