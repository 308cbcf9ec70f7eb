"""A reward-server restart is invisible to a caller: the default client's retry budget covers it.

(Here, not under tests/clients, whose conftest replaces the retry sleep with a no-op.)
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import httpx
import pytest

from r3_client import Client

pytestmark = [pytest.mark.integration, pytest.mark.slow]
log = logging.getLogger(__name__)


def test_restart_is_invisible_to_the_default_client(server_factory, minilm_dir: Path) -> None:  # type: ignore[no-untyped-def]
    first = server_factory(minilm_dir)
    first.wait_ready()
    port = first.port
    attempts: list[str] = []  # every request sent, retries included
    hooks = {"request": [lambda r: attempts.append(r.url.path)]}
    http = httpx.Client(timeout=30, event_hooks=hooks)
    client = Client(base_url=first.url, http_client=http)  # default retries: a time budget
    results: list[list[float]] = []
    errors: list[BaseException] = []
    five_done, restarted = threading.Event(), threading.Event()

    def trainer_loop() -> None:
        """Steps until 5 have been answered after the restart (so it runs through it)."""
        after = 0
        try:
            while after < 5:
                step = len(results)
                results.append(
                    client.reward(query=[f"step {step}"], response=[f"answer {step}"]).rewards
                )
                after += restarted.is_set()
                if len(results) == 5:
                    five_done.set()
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
            five_done.set()

    loop = threading.Thread(target=trainer_loop)
    loop.start()
    assert five_done.wait(60)
    stopped = time.monotonic()
    first.stop()  # SIGTERM: drains, exits; calls now fail to connect and are retried
    second = server_factory(minilm_dir, port=port)  # loads the model again: downtime
    second.wait_ready()
    downtime = time.monotonic() - stopped
    restarted.set()
    loop.join(120)
    client.close()
    http.close()
    assert not loop.is_alive() and not errors, errors
    assert all(len(r) == 1 for r in results)
    retried = attempts.count("/reward") - len(results)
    assert retried >= 1  # the loop met the outage: some steps were sent again, and answered
    log.info(
        "restart: %.1f s without a server, %d steps answered, %d attempts retried",
        downtime,
        len(results),
        retried,
    )
