"""A reward-server restart is invisible to a caller: the default client's retry budget covers it.

(Here, not under tests/clients, whose conftest replaces the retry sleep with a no-op.)
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from r3_client import Client

pytestmark = [pytest.mark.integration, pytest.mark.slow]
log = logging.getLogger(__name__)


def test_restart_is_invisible_to_the_default_client(server_factory, minilm_dir: Path) -> None:  # type: ignore[no-untyped-def]
    first = server_factory(minilm_dir)
    first.wait_ready()
    port = first.port
    client = Client(base_url=first.url, timeout=30)  # default retries: a time budget
    results: list[list[float]] = []
    errors: list[BaseException] = []
    five_done = threading.Event()

    def trainer_loop() -> None:
        try:
            for step in range(40):
                results.append(
                    client.reward(query=[f"step {step}"], response=[f"answer {step}"]).rewards
                )
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
    second = server_factory(minilm_dir, port=port)  # loads the model again: seconds of downtime
    second.wait_ready()
    downtime = time.monotonic() - stopped
    loop.join(120)
    client.close()
    assert not errors, errors
    assert len(results) == 40 and all(len(r) == 1 for r in results)
    assert downtime > 1.0  # a real outage, ridden through
    log.info("restart: %.1f s without a server, 40 of 40 steps answered", downtime)
