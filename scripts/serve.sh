#!/usr/bin/env bash
# One command from a fresh clone to a running service on the embedded default encoder.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh export
exec .venv/bin/r3-serve "$@"
