"""Prometheus metrics, one registry per app (TEI-style names with the ``r3_`` prefix).

Every series the service exports is defined here. Tallies kept by the engine, the
batchers and the classifier are copied in at scrape time (``refresh``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from r3_service.engine.batching import BatchStats

if TYPE_CHECKING:
    from r3_service.scoring import RewardScorer

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    """The service's metrics, registered on their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._request_metrics(self.registry)
        self._batch_metrics(self.registry)
        self._reward_metrics(self.registry)
        self._worker_metrics(self.registry)
        self._connection_metrics(self.registry)

    def _request_metrics(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "r3_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.request_duration = Histogram(
            "r3_request_duration_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "r3_requests_in_flight", "HTTP requests being served, by route.", ["route"], registry=r
        )
        self.items = Counter("r3_items", "Items scored, by route.", ["route"], registry=r)
        self.rejected = Counter(
            "r3_rejected_requests",
            "Requests refused before running: queue_full, deadline (could not finish in time), "
            "stalled, too_large (413), worker_dead.",
            ["reason"],
            registry=r,
        )

    def _batch_metrics(self, r: CollectorRegistry) -> None:
        self.batch_size = Histogram(
            "r3_batch_size", "Texts per inference batch.", buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "r3_batch_tokens",
            "Padded tokens per inference batch.",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_text_tokens = Counter(
            "r3_batch_text_tokens",
            "Tokens of the texts run in inference batches, padding left out (the padding is "
            "r3_batch_tokens_sum less this).",
            registry=r,
        )
        self.inference_duration = Histogram(
            "r3_inference_duration_seconds",
            "Model time per batch.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "r3_queue_duration_seconds",
            "Time the oldest text of a batch waited.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_size = Gauge(
            "r3_queue_size", "Texts accepted and not yet answered (waiting or running).", registry=r
        )
        self.cache_hits = Counter("r3_cache_hits", "Embedding cache hits.", registry=r)
        self.cache_misses = Counter("r3_cache_misses", "Embedding cache misses.", registry=r)
        self.cache_bytes = Gauge("r3_cache_bytes", "Bytes held by the embedding cache.", registry=r)
        self.dedup_hits = Counter(
            "r3_dedup_hits", "Texts answered by identical work already in flight.", registry=r
        )

    def _reward_metrics(self, r: CollectorRegistry) -> None:
        self.reward = Histogram(
            "r3_reward",
            "Rewards returned, by query type and branch.",
            ["qtype", "branch"],
            buckets=(-1.0, 0.0, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.12, 7.5, 10.0),
            registry=r,
        )
        self.query_copy = Counter(
            "r3_query_copy",
            "Scored responses that mostly repeat their query (the relevance-only hack).",
            ["qtype"],
            registry=r,
        )
        self.qtype_decisions = Counter(
            "r3_qtype_decisions",
            "Query types decided by the classifier for untyped items; 'uncertain' counts those "
            "inside the abstain band (scored by the blend rule).",
            ["decision"],
            registry=r,
        )
        self.qtype_cache_hits = Counter(
            "r3_qtype_cache_hits",
            "Query-type classifications answered from the per-query cache.",
            registry=r,
        )
        self.qtype_cache_misses = Counter(
            "r3_qtype_cache_misses",
            "Query-type classifications that ran the classifier.",
            registry=r,
        )

    def _worker_metrics(self, r: CollectorRegistry) -> None:
        self.queue_tokens = Gauge("r3_queue_tokens", "Tokens of the texts waiting.", registry=r)
        self.drain_rate = Gauge(
            "r3_drain_rate_tokens_per_second",
            "Measured tokens (plus a per-text overhead) per second of batch time (EWMA).",
            registry=r,
        )
        self.batch_running = Gauge(
            "r3_batch_running_seconds", "How long the running batch has run (0: none).", registry=r
        )
        self.hung_batches = Counter(
            "r3_hung_batches",
            "Batches that ran past the hung-batch limit (inference and classifier workers).",
            registry=r,
        )
        self.expired_texts = Counter(
            "r3_expired_texts",
            "Texts answered with a timeout instead of being run (deadline passed).",
            registry=r,
        )
        self.admitted = Counter(
            "r3_admitted_requests",
            "Requests admitted to the inference queue (a place planned for their work).",
            registry=r,
        )
        self.admitted_late = Counter(
            "r3_admitted_late_requests",
            "Admitted requests that then missed their deadline (504): the machine slowed "
            "after admission, or the plan was wrong. Should stay under 0.5% of "
            "r3_admitted_requests_total.",
            registry=r,
        )

    def _connection_metrics(self, r: CollectorRegistry) -> None:
        self.connections = Gauge("r3_open_connections", "Open HTTP connections.", registry=r)
        self.connections_closed = Counter(
            "r3_connections_closed",
            "Connections the server closed: header_timeout, header_too_large, evicted (idle, "
            "to make room), refused (at the cap, none idle), body_incomplete.",
            ["reason"],
            registry=r,
        )

    def observe_batch(self, stats: BatchStats) -> None:
        """Called from the worker thread after each batch."""
        self.batch_size.observe(stats.size)
        self.batch_tokens.observe(stats.padded_tokens)
        self.batch_text_tokens.inc(stats.tokens)
        self.inference_duration.observe(stats.seconds)
        self.queue_duration.observe(stats.queue_seconds)

    def sync_worker(
        self,
        pending_tokens: int,
        drain_rate: float,
        running_for: float,
        hung_batches: int,
        expired_texts: int,
    ) -> None:
        """Bring the worker's state into the registry (called at scrape time)."""
        self.queue_tokens.set(pending_tokens)
        self.drain_rate.set(drain_rate)
        self.batch_running.set(running_for)
        _catch_up(self.hung_batches, hung_batches)
        _catch_up(self.expired_texts, expired_texts)

    def sync_admission(self, admitted: int, late: int) -> None:
        """Bring the engine's admission tallies into the registry (called at scrape time)."""
        _catch_up(self.admitted, admitted)
        _catch_up(self.admitted_late, late)

    def sync(
        self, queued: int, cache_hits: int, cache_misses: int, cache_bytes: int, dedup: int
    ) -> None:
        """Bring engine-side tallies into the registry (called at scrape time)."""
        self.queue_size.set(queued)
        self.cache_bytes.set(cache_bytes)
        for counter, total in (
            (self.cache_hits, cache_hits),
            (self.cache_misses, cache_misses),
            (self.dedup_hits, dedup),
        ):
            _catch_up(counter, total)

    def refresh(self, scorer: RewardScorer) -> None:
        """Copy the scorer's queue, cache, worker and admission tallies into the registry.

        Queue and drain figures are the inference worker's; hung batches and expired texts
        count every worker (inference and the classifier's), the running time is the longer.
        """
        engine = scorer.engine
        batcher = engine.batcher
        self.sync(
            queued=batcher.in_flight_texts,
            cache_hits=engine.cache.hits,
            cache_misses=engine.cache.misses,
            cache_bytes=engine.cache.bytes,
            dedup=engine.dedup_hits,
        )
        workers = [b for _, b in scorer.workers()]
        self.sync_worker(
            pending_tokens=batcher.pending_tokens,
            drain_rate=batcher.drain_rate,
            running_for=max(b.running_for() for b in workers),
            hung_batches=sum(b.hung_batches for b in workers),
            expired_texts=sum(b.expired_texts for b in workers),
        )
        self.sync_admission(engine.admitted_requests, engine.late_requests)
        stats = scorer.classifier.cache_stats() if scorer.classifier is not None else None
        if stats is not None:
            _catch_up(self.qtype_cache_hits, stats[0])
            _catch_up(self.qtype_cache_misses, stats[1])


def _catch_up(counter: Counter, total: float) -> None:
    """Increment ``counter`` up to ``total`` (a tally kept elsewhere)."""
    delta = total - counter._value.get()  # noqa: SLF001 - prometheus_client has no getter
    if delta > 0:
        counter.inc(delta)
