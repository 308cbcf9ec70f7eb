#!/usr/bin/env bash
# One command from a fresh clone to a running service on the embedded default encoder.
# Installs the torch-free serving set into ./.venv (skipped when nothing changed), then runs
# r3-serve with the given arguments (e.g. --port 8001, --model DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if [[ -n "${R3_SKIP_INSTALL:-}" ]]; then
  exec r3-serve "$@"  # the environment on PATH, managed by hand
fi
exec .venv/bin/r3-serve "$@"
