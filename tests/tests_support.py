"""Helpers shared by test modules (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll_until(
    check: Callable[[], _T], what: str = "state", timeout: float = 60.0, interval: float = 0.02
) -> _T:
    """Poll ``check()`` (a state, never a clock) until it returns something truthy, and
    return that; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


async def apoll_until(
    check: Callable[[], object], what: str = "state", timeout: float = 10.0, interval: float = 0.005
) -> None:
    """``poll_until`` for async tests: yields to the event loop between checks."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with its output captured and no input; RuntimeError (with the output's
    tail) when ``check`` and it exits non-zero."""
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


def apt_install(*packages: str, recommends: bool = True) -> None:
    """``apt-get update`` and ``install`` of what a test needs (Debian-like hosts), as root or
    through ``sudo -n``; RuntimeError when that cannot be done (the test fails, never skips)."""
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"{packages} missing and no apt-get to install them")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    extra = [] if recommends else ["--no-install-recommends"]
    run([*sudo, "apt-get", "update", "-q"], env=env, timeout=600)
    run([*sudo, "apt-get", "install", "-y", "-q", *extra, *packages], env=env, timeout=900)
