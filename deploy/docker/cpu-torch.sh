#!/usr/bin/env bash
# A CPU build of torch for the CPU trainer image (step 5 of setup-host.sh), without the CUDA
# build that PyPI's `torch` is on Linux (gigabytes of nvidia-* wheels). Run from the
# repository root. Prints one line on stdout:
#
#   wheel PATH   a CPU wheel was in deploy/docker/wheels/ already, or came from this host's pip
#                index (its metadata asks for no nvidia-* package) and was put there;
#   index URL    this host's pip index has only the CUDA build, and PyTorch's CPU index answers;
#
# or exits 1 with what to provide: a CPU wheel in deploy/docker/wheels/, or a mirror of the CPU
# index in TRAINER_TORCH_INDEX_URL.
#
# Environment: PIP (the pip command; default "python3 -m pip"), PYTHON (default python3),
# TORCH_VERSION (default 2.13.0), R3_TORCH_CPU_INDEX (default https://download.pytorch.org/whl/cpu).
set -euo pipefail
version="${TORCH_VERSION:-2.13.0}"
python="${PYTHON:-python3}"
read -r -a pip <<< "${PIP:-python3 -m pip}"
cpu_index="${R3_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
wheels=deploy/docker/wheels
say() { echo "cpu-torch: $*" >&2; }

found="$(ls "$wheels"/torch-"${version}"*.whl 2>/dev/null | head -n1 || true)"
if [[ -n "$found" ]]; then
  say "a torch ${version} wheel is in ${wheels} already"
  echo "wheel $found"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Which build this host's pip index would give, from its metadata alone: a dry run reads the
# index's metadata file (PEP 658, as PyPI serves it) or a local wheel's, so the CUDA build
# (hundreds of MB) is never downloaded only to be turned down.
build="$("${pip[@]}" install --dry-run --quiet --no-deps --ignore-installed \
            --only-binary=:all: --report "$tmp/report.json" "torch==${version}" >&2 \
          && "$python" - "$tmp/report.json" <<'PY'
import json, sys
# A CPU build: its metadata asks for no nvidia-* (CUDA) packages.
meta = json.load(open(sys.argv[1]))["install"][0]["metadata"]
cuda = any(r.startswith("nvidia-") for r in meta.get("requires_dist", []))
print("cuda" if cuda else "cpu")
PY
)" || build=none
if [[ "$build" == cpu ]] \
    && "${pip[@]}" download --quiet --no-deps --only-binary=:all: --dest "$tmp/wheel" \
         "torch==${version}" >&2; then
  mkdir -p "$wheels"
  mv "$tmp"/wheel/torch-*.whl "$wheels"/
  found="$(ls "$wheels"/torch-"${version}"*.whl | head -n1)"
  say "CPU torch from this host's pip index: ${found}"
  echo "wheel $found"
elif "$python" -c "import sys, urllib.request as u; u.urlopen(sys.argv[1] + '/torch/', timeout=15)" \
    "$cpu_index" 2>/dev/null; then
  say "CPU torch from PyTorch's CPU index (${cpu_index})"
  echo "index $cpu_index"
else
  say "no CPU build of torch ${version}: this host's pip index has only the CUDA build \
and ${cpu_index} does not answer. Put a CPU wheel (torch-${version}+cpu-*.whl) in ${wheels}/, \
or set TRAINER_TORCH_INDEX_URL in .env to a mirror of PyTorch's CPU index, and run this again"
  exit 1
fi
