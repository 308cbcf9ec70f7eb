"""Per-sample veRL calls from threads and from coroutines share batched requests.

No timing is involved: a batch goes out when ``max_items`` calls wait (the window is longer
than any test) or, with a zero window, on the event loop's next pass; request counts are exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from r3_client import Client
from r3_client.integrations import verl

pytestmark = pytest.mark.integration

SAMPLES = [(f"Answer number {i} about cats.", f"Tell me fact {i} about cats.") for i in range(24)]


def reward_requests(url: str) -> float:
    from adapters_support import metric

    return metric(url, "r3_requests_total", route="/reward")


@pytest.fixture
def adapter(live_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("R3_BASE_URL", live_server)
    verl.set_client(Client(base_url=live_server))
    yield live_server
    verl.get_client().close()
    verl.set_client(None)
    verl.configure()


def direct(url: str) -> list[float]:
    with Client(base_url=url) as client:
        return client.reward(
            query=[q for _, q in SAMPLES], response=[r for r, _ in SAMPLES]
        ).rewards


@pytest.mark.parametrize(("max_items", "requests"), [(24, 1), (8, 3)])
def test_threads_share_requests(adapter: str, max_items: int, requests: int) -> None:
    verl.configure(window_ms=600_000, max_items=max_items)
    before = reward_requests(adapter)
    with ThreadPoolExecutor(max_workers=len(SAMPLES)) as pool:
        got = list(
            pool.map(
                lambda s: verl.compute_score_sync("src", s[0], None, {"question": s[1]}), SAMPLES
            )
        )
    assert reward_requests(adapter) - before == requests
    assert [g["score"] for g in got] == pytest.approx(direct(adapter), abs=1e-9)


@pytest.mark.parametrize(
    ("max_items", "window_ms", "requests"),
    # 24 coroutines submit in one pass of the event loop: two full batches of 10, then the
    # window (0: the loop's next pass) sends the last 4.
    [(24, 600_000, 1), (10, 0, 3)],
)
def test_coroutines_share_requests(
    adapter: str, max_items: int, window_ms: int, requests: int
) -> None:
    verl.configure(window_ms=window_ms, max_items=max_items)

    async def main() -> list[dict[str, float]]:
        return list(
            await asyncio.gather(
                *(verl.compute_score("src", r, None, {"question": q}) for r, q in SAMPLES)
            )
        )

    before = reward_requests(adapter)
    got = asyncio.run(main())
    assert reward_requests(adapter) - before == requests
    assert [g["score"] for g in got] == pytest.approx(direct(adapter), abs=1e-9)


def test_sample_without_query_fails_alone(adapter: str) -> None:
    with pytest.raises(ValueError, match="needs the query"):
        verl.compute_score_sync("src", "x", None, {})
