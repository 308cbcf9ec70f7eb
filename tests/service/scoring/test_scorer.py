"""The scorer with the real exported encoder: the R^3 formula end to end, the classifier
hook, admission of whole requests (typing included) and CPU work off the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from r3_service.classifier.runtime import Embedder, QueryClassifier
from r3_service.encoder import Encoder, load_encoder, relevance
from r3_service.engine import (
    DeadlineUnreachableError,
    EmbeddingEngine,
    EngineConfig,
    RequestTimeoutError,
    RequestTooLargeError,
)
from r3_service.reward import (
    Branch,
    QueryType,
    RewardOptions,
    cut_at_stop_strings,
    interpolate_relevance,
    length_incentive,
    repetition_penalty,
    wordpunct_tokenize,
)
from r3_service.scoring import RewardItem, RewardScorer


@pytest.fixture(scope="module")
def encoder(minilm_dir: Path):  # type: ignore[no-untyped-def]
    return load_encoder(minilm_dir)


def make_scorer(
    encoder: Encoder,
    config: EngineConfig | None = None,
    classifier: QueryClassifier | None = None,
) -> RewardScorer:
    return RewardScorer(EmbeddingEngine(encoder, config), classifier)


@pytest.fixture
async def scorer(encoder):  # type: ignore[no-untyped-def]
    scorer = make_scorer(encoder, EngineConfig(max_batch_tokens=2048, max_batch_size=16))
    scorer.start()
    yield scorer
    scorer.stop()


async def test_score_matches_formula_computed_by_hand(scorer, encoder) -> None:  # type: ignore[no-untyped-def]
    query = "Write a poem about the sea."
    response = "The sea is wide, the sea is deep, the sea is wide and blue.\n\n--\nsignature"
    reference = "The answer is 4."
    answer = "It is 4."
    items = [
        RewardItem(query=query, response=response, qtype=QueryType.OPENENDED),
        RewardItem(
            query="What is 2+2?", response=answer, reference=reference, qtype=QueryType.CONSTRAINED
        ),
        RewardItem(query="What is 2+2?", response=answer, qtype=QueryType.CONSTRAINED),
        RewardItem(query=query, response=response),  # untyped, no head: OPENENDED
    ]
    result = await scorer.score(items)

    cut = cut_at_stop_strings(response)
    assert cut == "The sea is wide, the sea is deep, the sea is wide and blue."
    tokens = wordpunct_tokenize(cut)
    q, r = encoder.encode([query, cut])
    r_x = float(relevance(q[None], r[None], "cosine")[0])
    expected_oe = r_x * length_incentive(tokens) * repetition_penalty(tokens)
    assert result.rewards[0] == pytest.approx(expected_oe, abs=1e-6)
    assert result.rewards[3] == pytest.approx(expected_oe, abs=1e-6)
    assert result.branch[0] is Branch.OPENENDED

    y, a = encoder.encode([reference, answer])
    r_y = float(relevance(y[None], a[None], "cosine")[0])
    expected_c = interpolate_relevance(r_y, (0.0, 1.0), 512) * repetition_penalty(
        wordpunct_tokenize(answer)
    )
    assert result.rewards[1] == pytest.approx(expected_c, abs=1e-6)
    assert result.branch[1] is Branch.CONSTRAINED
    assert result.relevance[1] == pytest.approx(r_y, abs=1e-6)

    assert result.branch[2] is Branch.CONSTRAINED_NO_REFERENCE
    x, a2 = encoder.encode(["What is 2+2?", answer])
    r_x2 = float(relevance(x[None], a2[None], "cosine")[0])
    assert result.rewards[2] == pytest.approx(r_x2 * 0.04 * 1.0, abs=1e-6)
    assert result.qtype == [
        QueryType.OPENENDED,
        QueryType.CONSTRAINED,
        QueryType.CONSTRAINED,
        QueryType.OPENENDED,
    ]


async def test_score_with_ablations(scorer) -> None:  # type: ignore[no-untyped-def]
    items = [
        RewardItem(query="q", response="one two three one two three", qtype=QueryType.OPENENDED),
        RewardItem(query="q", response="x", reference="y", qtype=QueryType.CONSTRAINED),
    ]
    li_only = RewardOptions(relevance=False, repetition_penalty=False, reward_branching=False)
    result = await scorer.score(items, li_only)
    assert result.rewards == pytest.approx([0.06, 0.01])
    assert result.branch == [Branch.UNBRANCHED, Branch.UNBRANCHED]
    custom = await scorer.score(items[:1], RewardOptions(relevance=False), stop_strings=["three"])
    assert custom.rewards[0] == pytest.approx(0.02)  # "one two": LI 0.02, RP 1


async def test_classifier_hook_decides_untyped_items(encoder) -> None:  # type: ignore[no-untyped-def]
    class Rule(QueryClassifier):
        metrics: dict[str, object] = {}

        async def probabilities(self, queries, embedder):  # type: ignore[no-untyped-def]
            vectors = await embedder.embed(list(queries))
            assert vectors.shape == (len(queries), encoder.dim)
            return np.array([0.0 if "Classify" in t else 1.0 for t in queries])

    scorer = make_scorer(encoder, classifier=Rule())
    scorer.start()
    try:
        items = [
            RewardItem(query="Classify: good", response="positive", reference="positive"),
            RewardItem(query="Write a story", response="Once upon a time"),
            RewardItem(query="Classify: bad", response="neg", qtype=QueryType.OPENENDED),
        ]
        result = await scorer.score(items)
        assert result.qtype == [QueryType.CONSTRAINED, QueryType.OPENENDED, QueryType.OPENENDED]
        assert result.branch[0] is Branch.CONSTRAINED
        # identical reference and response: cosine 1 -> F(1) = 5.12
        assert result.rewards[0] == pytest.approx(5.12, abs=1e-4)
        probs = await scorer.classify(["Classify: x", "Write"])
        assert list(probs) == [0.0, 1.0]
    finally:
        scorer.stop()


class ThreadRecorder(Encoder):
    """The real encoder, recording the thread each tokenisation runs on."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.profile = inner.profile
        self.tokenize_threads: list[str] = []
        #: While set, batches wait for ``release`` (to hold the worker busy).
        self.hold = threading.Event()
        self.release = threading.Event()

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        self.tokenize_threads.append(threading.current_thread().name)
        return self.inner.tokenize(texts)

    def embed_tokens(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        if self.hold.is_set():
            self.release.wait(30)
        return self.inner.embed_tokens(batch)


async def test_cpu_work_of_large_requests_leaves_the_event_loop(  # type: ignore[no-untyped-def]
    encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import r3_service.scoring.scorer as scorer_module

    word_threads: list[str] = []
    real_tokenize = scorer_module.wordpunct_tokenize

    def recording(text: str) -> list[str]:  # stop-string cutting, LI/RP and copy detection
        word_threads.append(threading.current_thread().name)
        return real_tokenize(text)

    monkeypatch.setattr(scorer_module, "wordpunct_tokenize", recording)
    recorder = ThreadRecorder(encoder)
    scorer = make_scorer(recorder)
    scorer.start(calibrate=False)
    loop_thread = threading.current_thread().name
    try:
        await scorer.score([RewardItem(query="a short query", response="a short answer")])
        assert set(word_threads) == {loop_thread} == set(recorder.tokenize_threads)
        word_threads.clear()
        recorder.tokenize_threads.clear()
        big = [
            RewardItem(query=f"query {i} " + "word " * 200, response=f"answer {i} " + "x " * 300)
            for i in range(16)
        ]
        await scorer.score(big)
        assert word_threads and all(t.startswith("r3-prepare") for t in word_threads)
        assert recorder.tokenize_threads
        assert all(t.startswith("r3-tokenize") for t in recorder.tokenize_threads)
    finally:
        scorer.stop()


async def occupy_worker(engine: EmbeddingEngine, recorder: ThreadRecorder) -> asyncio.Future[Any]:
    """Set the drain rate to 100 tokens/s and hold the worker inside a batch (until
    ``recorder.release``); returns that batch's request."""
    engine.batcher.scheduler.rate.observe(cost=100.0, texts=1, seconds=1.0)
    recorder.hold.set()
    busy = asyncio.ensure_future(engine.embed(["occupies the worker " * 30], [False]))
    while engine.batcher.running_for() == 0:  # the worker is inside that batch
        assert not busy.done(), busy
        await asyncio.sleep(0.001)
    return busy


async def test_an_overloaded_engine_refuses_before_tokenising(encoder) -> None:  # type: ignore[no-untyped-def]
    recorder = ThreadRecorder(encoder)
    scorer = make_scorer(recorder, EngineConfig(request_timeout_s=5.0))
    scorer.start(calibrate=False)
    try:
        busy = await occupy_worker(scorer.engine, recorder)
        calls = len(recorder.tokenize_threads)
        big = [RewardItem(query=f"q {i}", response="word " * 200) for i in range(20)]
        with pytest.raises(DeadlineUnreachableError) as info:
            await scorer.score(big)
        assert info.value.retry_after > 0
        assert len(recorder.tokenize_threads) == calls  # refused before any tokenisation
        recorder.release.set()
        await busy
    finally:
        scorer.stop()


class CountingClassifier(QueryClassifier):
    """Every query OPENENDED; counts the queries it was asked to type, and claims a cost."""

    def __init__(self, cost_per_query: float = 0.0) -> None:
        self.metrics = {}
        self.typed = 0
        self.cost_per_query = cost_per_query

    async def probabilities(self, queries: Sequence[str], embedder: Embedder) -> np.ndarray:
        self.typed += len(queries)
        return np.ones(len(queries))

    def cost(self, queries: Sequence[str], chars_per_token: float) -> float:
        return self.cost_per_query * len(queries)


async def test_a_refused_request_costs_no_typing_and_typing_counts_in_admission(encoder) -> None:  # type: ignore[no-untyped-def]
    recorder = ThreadRecorder(encoder)
    classifier = CountingClassifier()
    config = EngineConfig(request_timeout_s=5.0, max_batch_tokens=64)
    scorer = make_scorer(recorder, config, classifier)
    scorer.start(calibrate=False)
    try:
        busy = await occupy_worker(scorer.engine, recorder)
        big = [RewardItem(query=f"q {i}", response="word " * 200) for i in range(40)]
        with pytest.raises(DeadlineUnreachableError):
            await scorer.score(big)
        assert classifier.typed == 0  # refused before its queries were typed
        small = [RewardItem(query="one question", response="one short answer")]
        classifier.cost_per_query = 400.0  # 4 s of model time to type it: past 80% of 5 s
        with pytest.raises(DeadlineUnreachableError):
            await scorer.score(small)
        assert classifier.typed == 0
        classifier.cost_per_query = 0.0
        recorder.release.set()
        await busy
        recorder.hold.clear()
        assert (await scorer.score(small)).qtype == [QueryType.OPENENDED]
        assert classifier.typed == 1
        assert scorer.engine.batcher.scheduler.jobs == ()  # no place left behind
    finally:
        scorer.stop()


class BatchRecorder(ThreadRecorder):
    """Also records the token ids of every batch the model runs, in order."""

    def __init__(self, inner: Encoder) -> None:
        super().__init__(inner)
        self.batches: list[list[tuple[int, ...]]] = []

    def embed_tokens(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        vectors = super().embed_tokens(batch)
        self.batches.append([tuple(ids) for ids in batch])
        return vectors


def typed(texts: Sequence[tuple[str, str]]) -> list[RewardItem]:
    return [RewardItem(query=q, response=r, qtype=QueryType.OPENENDED) for q, r in texts]


async def test_one_item_request_is_admitted_and_runs_before_8_item_ones(encoder) -> None:  # type: ignore[no-untyped-def]
    """Issue 24 at the scorer: 8-item requests are admitted until their deadline is
    reached; a 1-item request that comes after them runs before them, so it is still
    admitted (its wait counts only the batch in flight), and its texts run first."""
    recorder = BatchRecorder(encoder)
    scorer = make_scorer(recorder, EngineConfig(request_timeout_s=10.0))
    scorer.start(calibrate=False)
    try:
        busy = await occupy_worker(scorer.engine, recorder)  # 100 cost units per second
        eights: list[asyncio.Future[Any]] = []
        for i in range(20):  # each about 260 cost units: 2.6 s of the 8 s they may use
            items = typed([(f"eight {i} {k}", f"answer {i} {k} " * 5) for k in range(8)])
            task = asyncio.ensure_future(scorer.score(items))
            await asyncio.sleep(0)  # it runs until it waits: admitted and queued, or refused
            if task.done():
                with pytest.raises(DeadlineUnreachableError):
                    task.result()
                break
            eights.append(task)
        else:
            pytest.fail("the queue of 8-item requests never reached their deadline")
        assert eights  # some were taken before the queue reached their deadline
        probe = typed([("one question", "one short answer")])
        small = asyncio.ensure_future(scorer.score(probe))
        await asyncio.sleep(0)
        assert not small.done()  # admitted (a refusal raises at once)
        recorder.release.set()
        assert len((await small).rewards) == 1
        await asyncio.gather(busy, *eights, return_exceptions=True)
        answer_ids = tuple(encoder.tokenize(["one short answer"])[0])
        ran = [i for i, batch in enumerate(recorder.batches) if answer_ids in batch]
        assert ran == [1]  # the first batch after the one holding the worker
    finally:
        scorer.stop()


async def test_long_texts_that_cannot_fit_alone_are_413_before_tokenising(encoder) -> None:  # type: ignore[no-untyped-def]
    """Issue 22: many 50,000-character responses (within every limit) on an idle scorer
    are refused from their lengths, before any work, not discovered at 504."""
    recorder = ThreadRecorder(encoder)
    scorer = make_scorer(recorder, EngineConfig(request_timeout_s=5.0))
    scorer.start(calibrate=False)
    try:  # 1000 cost units per second; a truncated 512-token text costs about 860
        scorer.engine.batcher.scheduler.rate.observe(cost=1000.0, texts=10, seconds=1.0)
        calls = len(recorder.tokenize_threads)
        words = "word " * 10_000
        long = typed([(f"q {i}", f"{i} {words}") for i in range(8)])  # 7 s of model time
        with pytest.raises(RequestTooLargeError) as info:
            await scorer.score(long)
        assert info.value.limit == "R3_REQUEST_TIMEOUT_S"
        assert len(recorder.tokenize_threads) == calls  # refused before any tokenisation
        assert scorer.engine.batcher.scheduler.jobs == ()  # no place left behind
        result = await scorer.score(long[:2])  # 1.7 s alone: tried, and answered
        assert len(result.rewards) == 2
    finally:
        scorer.stop()


async def test_an_admitted_request_that_misses_its_deadline_is_counted_late(encoder) -> None:  # type: ignore[no-untyped-def]
    recorder = ThreadRecorder(encoder)
    scorer = make_scorer(recorder, EngineConfig(request_timeout_s=0.5, hung_batch_s=60))
    scorer.start(calibrate=False)
    try:
        recorder.hold.set()  # the machine "slows" after admission: the batch hangs
        with pytest.raises(RequestTimeoutError):
            await scorer.score(typed([("admitted, then late", "an answer")]))
        assert (scorer.engine.admitted_requests, scorer.engine.late_requests) == (1, 1)
        recorder.release.set()
        recorder.hold.clear()
        await scorer.score(typed([("in time", "an answer")]))
        assert (scorer.engine.admitted_requests, scorer.engine.late_requests) == (2, 1)
    finally:
        scorer.stop()
