"""Headless Chromium for tests that open a page as a user would: found, or installed from
the host's Debian/Ubuntu packages (as tests/deploy/docker_harness.py installs Docker)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests_support import apt_install, run

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
    apt_install("chromium", recommends=False)
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
    return run(argv, timeout=timeout).stdout
