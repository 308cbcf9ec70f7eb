"""A reward-server restart is invisible to a caller: the client's retries cover it.

(Here, not under tests/clients, whose conftest replaces the retry sleep with a no-op.)
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from r3_client import Client

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_restart_is_invisible_to_the_client(server_factory, minilm_dir: Path) -> None:  # type: ignore[no-untyped-def]
    first = server_factory(minilm_dir)
    first.wait_ready()
    port = first.port
    client = Client(base_url=first.url, max_retries=8, timeout=30)
    results: list[list[float]] = []
    errors: list[BaseException] = []

    def trainer_loop() -> None:
        try:
            for step in range(40):
                results.append(
                    client.reward(query=[f"step {step}"], response=[f"answer {step}"]).rewards
                )
                time.sleep(0.05)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    loop = threading.Thread(target=trainer_loop)
    loop.start()
    time.sleep(0.5)
    first.stop()  # SIGTERM: drains, exits; calls now fail to connect and are retried
    second = server_factory(minilm_dir, port=port)
    second.wait_ready()
    loop.join(120)
    client.close()
    assert not errors, errors
    assert len(results) == 40 and all(len(r) == 1 for r in results)
