#!/usr/bin/env bash
# One command from a fresh clone to a running service on the embedded default encoder.
# Installs the torch-free serving set into ./.venv (skipped when nothing changed), then runs
# r3-serve with the given arguments (e.g. --port 8001, --model DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/r3-serve "$@"
