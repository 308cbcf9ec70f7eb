"""Untyped items: decided by the classifier's threshold; uncertain ones get the blended reward."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter

from r3_service.classifier.runtime import Embedder, QueryClassifier
from r3_service.encoder import load_encoder
from r3_service.engine import EmbeddingEngine
from r3_service.reward import Branch, QueryType, RewardOptions
from r3_service.scoring import RewardItem, RewardScorer


class Fixed(QueryClassifier):
    """Answers a fixed P(OPENENDED) per query text; counts its calls."""

    def __init__(self, proba: dict[str, float], threshold: float = 0.5) -> None:
        self.proba = proba
        self.threshold = threshold
        self.metrics = {}
        self.calls: list[list[str]] = []

    async def probabilities(self, queries: Sequence[str], embedder: Embedder) -> np.ndarray:
        self.calls.append(list(queries))
        return np.array([self.proba[q] for q in queries])


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir: Path):  # type: ignore[no-untyped-def]
    return load_encoder(tiny_bert_dir)


async def _score(encoder, classifier, items, options=None):  # type: ignore[no-untyped-def]
    scorer = RewardScorer(EmbeddingEngine(encoder), classifier)
    scorer.start()
    try:
        return await scorer.score(items, options)
    finally:
        scorer.stop()


ITEM = RewardItem(query="Q", response="a short answer here", reference="the reference text")


async def test_uncertain_item_with_reference_is_blended(encoder) -> None:  # type: ignore[no-untyped-def]
    typed = [
        RewardItem(ITEM.query, ITEM.response, ITEM.reference, QueryType.OPENENDED),
        RewardItem(ITEM.query, ITEM.response, ITEM.reference, QueryType.CONSTRAINED),
    ]
    r_open, r_closed = (await _score(encoder, None, typed)).rewards
    assert r_open != pytest.approx(r_closed)

    for p, reported in ((0.6, QueryType.OPENENDED), (0.4, QueryType.CONSTRAINED)):
        classifier = Fixed({"Q": p})
        registry = CollectorRegistry()
        classifier.counter = Counter("d", "d", ["decision"], registry=registry)
        result = await _score(encoder, classifier, [ITEM])
        assert result.rewards == [pytest.approx(p * r_open + (1 - p) * r_closed)]
        assert result.qtype == [reported]
        assert len(result.branch) == len(result.relevance) == len(result.copies_query) == 1
        assert registry.get_sample_value("d_total", {"decision": "uncertain"}) == 1.0
        assert registry.get_sample_value("d_total", {"decision": reported.value}) == 1.0


async def test_confident_items_follow_the_stored_threshold(encoder) -> None:  # type: ignore[no-untyped-def]
    classifier = Fixed({"Q": 0.7}, threshold=0.75)  # outside the band, below the threshold
    result = await _score(encoder, classifier, [ITEM])
    assert result.qtype == [QueryType.CONSTRAINED] and result.branch == [Branch.CONSTRAINED]
    typed = RewardItem(ITEM.query, ITEM.response, ITEM.reference, QueryType.CONSTRAINED)
    assert result.rewards == pytest.approx((await _score(encoder, None, [typed])).rewards)


async def test_given_qtype_wins_and_each_query_is_classified_once(encoder) -> None:  # type: ignore[no-untyped-def]
    classifier = Fixed({"Q": 0.9, "R": 0.1})
    group = [RewardItem("Q", f"answer {i}") for i in range(8)]
    items = [*group, RewardItem("R", "x", qtype=QueryType.OPENENDED)]
    result = await _score(encoder, classifier, items)
    assert classifier.calls == [["Q"]]
    assert result.qtype == [QueryType.OPENENDED] * 9


async def test_uncertain_without_reference_or_branching_is_not_blended(encoder) -> None:  # type: ignore[no-untyped-def]
    classifier = Fixed({"Q": 0.45})
    item = RewardItem("Q", "some answer text")
    result = await _score(encoder, classifier, [item])
    assert result.branch == [Branch.CONSTRAINED_NO_REFERENCE]
    plain = await _score(
        encoder, None, [RewardItem("Q", "some answer text", None, QueryType.OPENENDED)]
    )
    assert result.rewards == pytest.approx(plain.rewards)
    unbranched = await _score(encoder, classifier, [ITEM], RewardOptions(reward_branching=False))
    assert classifier.calls == [["Q"]]  # branching off: the classifier is not asked
    assert unbranched.branch == [Branch.UNBRANCHED]
