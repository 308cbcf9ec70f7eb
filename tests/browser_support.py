"""Headless Chromium for tests that open a page as a user would: found, or installed from
the host's Debian/Ubuntu packages (as tests/deploy/docker_harness.py installs Docker)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

#: Names the browser goes by on Debian, Ubuntu and elsewhere.
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Where tests keep what a person may want to look at after a CI run (screenshots).
ARTIFACTS = Path(
    os.environ.get("R3_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts")
)


def _found() -> str | None:
    return next((path for name in NAMES if (path := shutil.which(name))), None)


def chromium() -> str:
    """The path of a Chromium, installing Debian's ``chromium`` package if none is there.

    Raises (the test fails, it does not skip) when none can be installed.
    """
    path = _found()
    if path:
        return path
    if not shutil.which("apt-get"):
        raise RuntimeError("no Chromium and no apt-get to install it: install chromium")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"apt-get install chromium failed:\n{done.stderr[-2000:]}")
    path = _found()
    if not path:
        raise RuntimeError("chromium was installed but is not on PATH")
    return path


def headless(url: str, *args: str, timeout: float = 120) -> str:
    """Open ``url`` in headless Chromium, let its scripts run, and return the rendered DOM.

    ``args``: more Chromium flags (``--screenshot=PATH`` also writes a PNG).
    """
    argv = [
        chromium(),
        "--headless",
        "--no-sandbox",  # as root in a container or CI; the page is our own
        "--disable-gpu",
        "--no-first-run",
        "--virtual-time-budget=15000",  # run the page's scripts before dumping
        *args,
        "--dump-dom",
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout
