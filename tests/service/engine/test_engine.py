"""The embedding engine with the real exported encoder: batching, dedup, cache, calibration."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from r3_service.encoder import load_encoder
from r3_service.engine import EmbeddingCache, EmbeddingEngine, EngineConfig

TEXTS = [f"Sentence number {i} about topic {i % 7}. " * (1 + i % 9) for i in range(40)]


@pytest.fixture(scope="module")
def encoder(minilm_dir: Path):  # type: ignore[no-untyped-def]
    return load_encoder(minilm_dir)


@pytest.fixture
async def engine(encoder):  # type: ignore[no-untyped-def]
    engine = EmbeddingEngine(encoder, EngineConfig(max_batch_tokens=2048, max_batch_size=16))
    engine.start()
    yield engine
    engine.stop()


async def test_concurrent_batched_embeddings_equal_one_by_one(engine, encoder) -> None:  # type: ignore[no-untyped-def]
    single = np.stack([encoder.encode([t])[0] for t in TEXTS])
    chunks = [TEXTS[i : i + 3] for i in range(0, len(TEXTS), 3)]
    results = await asyncio.gather(*(engine.embed(c, [False] * len(c)) for c in chunks))
    batched = np.concatenate(results)
    assert np.abs(batched - single).max() <= 1e-5


async def test_identical_texts_in_flight_are_encoded_once(engine) -> None:  # type: ignore[no-untyped-def]
    sizes: list[int] = []
    original = engine.batcher.on_batch
    engine.batcher.on_batch = lambda stats: sizes.append(stats.size)
    text = "the same prompt scored for many samples"
    vectors = await asyncio.gather(*(engine.embed([text], [False]) for _ in range(8)))
    engine.batcher.on_batch = original
    assert sum(sizes) == 1
    assert all(np.array_equal(v, vectors[0]) for v in vectors)


async def test_cache_serves_repeated_queries(engine) -> None:  # type: ignore[no-untyped-def]
    first = await engine.embed(["cached query"], [True])
    hits = engine.cache.hits
    second = await engine.embed(["cached query"], [True])
    assert engine.cache.hits == hits + 1
    assert np.array_equal(first, second)
    await engine.embed(["uncached response"], [False])
    assert engine.cache.get("uncached response") is None


def test_cache_is_bounded_in_bytes() -> None:
    vector = np.zeros(384, dtype=np.float32)
    entry = EmbeddingCache.entry_bytes("key-0000", vector)
    cache = EmbeddingCache(max_bytes=entry * 10)
    for i in range(100):
        cache.put(f"key-{i:04d}", vector.copy())
        assert cache.bytes <= cache.max_bytes
    assert len(cache) == 10
    assert cache.get("key-0000") is None and cache.get("key-0099") is not None


async def test_small_request_overtakes_a_large_one(encoder) -> None:  # type: ignore[no-untyped-def]
    engine = EmbeddingEngine(encoder, EngineConfig(max_batch_tokens=512, max_batch_size=16))
    engine.start(calibrate=False)
    done: list[str] = []

    async def run(name: str, texts: list[str]) -> None:
        await engine.embed(texts, [False] * len(texts))
        done.append(name)

    try:
        large = [f"long text number {i} " + "about many things " * 20 for i in range(200)]
        big = asyncio.ensure_future(run("large", large))
        while engine.batcher.in_flight_texts == 0:  # the large request is queued
            await asyncio.sleep(0)
        await run("small", ["one short text"])
        assert done == ["small"]  # answered while most of the large request still waits
        assert engine.batcher.pending_texts > 0
        await big
        assert done == ["small", "large"]
    finally:
        engine.stop()


async def test_calibration_measures_a_drain_rate(encoder) -> None:  # type: ignore[no-untyped-def]
    engine = EmbeddingEngine(encoder)
    engine.start()
    try:
        await engine.embed(["after the calibration batch"])  # the worker's first job is done
        assert engine.batcher.drain_rate > 0
    finally:
        engine.stop()
