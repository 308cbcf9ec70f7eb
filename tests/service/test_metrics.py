"""r3_service.metrics: what a batch adds to the series."""

from __future__ import annotations

from r3_service.engine.batching import BatchStats
from r3_service.metrics import Metrics


def value(metrics: Metrics, name: str) -> float:
    found = metrics.registry.get_sample_value(name)
    assert found is not None, f"{name} not exported"
    return found


def test_a_batch_counts_its_padded_tokens_and_its_text_tokens_apart() -> None:
    metrics = Metrics()
    # texts of 3, 5 and 9 tokens: padded to 3 x 9 = 27; 17 tokens of text
    metrics.observe_batch(BatchStats(3, 17, 27, 0.05, 0.01))
    metrics.observe_batch(BatchStats(1, 4, 4, 0.01, 0.0))
    assert value(metrics, "r3_batch_tokens_sum") == 31
    assert value(metrics, "r3_batch_text_tokens_total") == 21
    assert value(metrics, "r3_batch_size_sum") == 4
