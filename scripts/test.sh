#!/usr/bin/env bash
# One command from a fresh clone to a passing test suite: install, lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh all
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ruff check .
ruff format --check .
mypy service/r3_service clients/python/src/r3_client trainer/r3_trainer bench
lint-imports  # the architecture contracts in pyproject.toml
python -m pytest -q -p no:cacheprovider "$@"
