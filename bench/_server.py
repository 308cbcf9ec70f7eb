"""Start ``r3-serve`` for a benchmark and wait until ``/readyz`` answers 200."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def start_server(
    port: int,
    model: Path | str | None = None,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 300.0,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """``python -m r3_service`` on ``port`` (the embedded default unless ``model``), with
    ``R3_LOG_LEVEL=warning`` and ``env`` on top of this process's environment; its output
    goes to ``log`` when given. Raises if it exits or is not ready within ``timeout`` s."""
    args = [sys.executable, "-m", "r3_service", "--port", str(port)]
    if model is not None:
        args += ["--model", str(model)]
    full_env = {**os.environ, "R3_LOG_LEVEL": "warning", **(env or {})}
    out = open(log, "wb") if log is not None else None  # noqa: SIM115 - the child writes it
    proc = subprocess.Popen(
        args, env=full_env, stdout=out, stderr=subprocess.STDOUT if out else None
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log is not None else ""
            raise RuntimeError(f"server exited with {proc.returncode} {tail}".rstrip())
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server not ready within {timeout:g} s")


@contextmanager
def service(url: str | None, *, log: Path | None = None) -> Iterator[str]:
    """``url`` when given; else the base URL of ``r3-serve`` (the embedded default) started
    on a free loopback port for the duration of the ``with`` block."""
    if url is not None:
        yield url
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = start_server(port, log=log)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)
