"""veRL calls compute_score per sample from threads; the adapter batches them into few requests."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from r3_client import Client
from r3_client.integrations import verl

pytestmark = pytest.mark.integration


def reward_requests(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("r3_requests_total{") and 'route="/reward"' in line
    )


def test_concurrent_compute_score_calls_share_requests(live_server: str) -> None:
    verl.set_client(Client(base_url=live_server))
    try:
        samples = [
            (f"Answer number {i} about cats.", f"Tell me fact {i} about cats.") for i in range(24)
        ]
        before = reward_requests(live_server)
        with ThreadPoolExecutor(max_workers=24) as pool:
            got = list(
                pool.map(
                    lambda s: verl.compute_score("src", s[0], None, {"question": s[1]}), samples
                )
            )
        sent = reward_requests(live_server) - before
        direct = Client(base_url=live_server).reward(
            query=[q for _, q in samples], response=[r for r, _ in samples]
        )
        assert got == pytest.approx(direct.rewards, abs=1e-9)
        assert 1 <= sent <= 4  # 24 calls, gathered into a few requests
        with pytest.raises(ValueError, match="needs the query"):
            verl.compute_score("src", "x", None, {})
    finally:
        verl.set_client(None)
