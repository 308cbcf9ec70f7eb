#!/usr/bin/env bash
# Make a base image for the Dockerfiles from Debian packages, without a container registry:
# debootstrap a minimal Debian with python3, its venv module and the CA certificates, slim it
# and `docker import` it. Run as root on a host with debootstrap and a Docker daemon.
#
#   bash deploy/docker/debian-base.sh IMAGE [SUITE] [MIRROR]
#   bash deploy/docker/debian-base.sh r3-base:bookworm
#
# SUITE defaults to bookworm (Python 3.11, the version the images are tested with). MIRROR
# defaults to the first Debian mirror of this host's apt sources. Use the image with
# `--build-arg BASE_IMAGE=IMAGE` or BASE_IMAGE=IMAGE in compose's .env.
set -euo pipefail
image="${1:?usage: debian-base.sh IMAGE [SUITE] [MIRROR]}"
suite="${2:-bookworm}"
mirror="${3:-}"
docker="${DOCKER:-docker}"

# The first Debian mirror of this host's apt sources: deb822 files ("URIs: http://..."),
# then one-line ones ("deb [options] http://... suite ...").
host_mirror() {
  {
    cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}'
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) {print $i; break}}'
  } | grep -v -e security -e updates | head -n 1
}
if [[ -z "$mirror" ]]; then
  mirror="$(host_mirror || true)"
fi
if [[ -z "$mirror" ]]; then
  echo "debian-base.sh: no Debian mirror in this host's apt sources; pass one as MIRROR" >&2
  exit 2
fi

rootfs="$(mktemp -d "${TMPDIR:-/tmp}/r3-debian-base.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT
# A suite newer than this host's debootstrap (Debian 12's knows no trixie) is made with the
# script of sid, which every later suite is made like.
scripts=/usr/share/debootstrap/scripts
script=()
if [[ -d "$scripts" && ! -e "$scripts/$suite" ]]; then
  script=("$scripts/sid")
fi
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$suite" "$rootfs" "$mirror" "${script[@]}" >&2
# What the python:*-slim images also leave out: package caches, lists, docs, man pages.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
  "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
  "$rootfs"/usr/share/locale/*
tar --numeric-owner -C "$rootfs" -c . \
  | "$docker" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' \
      --message "debootstrap $suite (deploy/docker/debian-base.sh)" - "$image"
