"""The async embedding engine: deadline-aware scheduling and batching, embedding cache."""

from r3_service.engine.batching import Batcher, BatchStats
from r3_service.engine.cache import EmbeddingCache
from r3_service.engine.config import EngineConfig, batch_limits
from r3_service.engine.engine import EmbeddingEngine, Timing, request_started
from r3_service.engine.errors import (
    DeadlineUnreachableError,
    OverloadedError,
    QueueFullError,
    RequestTimeoutError,
    RequestTooLargeError,
    WorkerDeadError,
    WorkerStalledError,
)

__all__ = [
    "BatchStats",
    "Batcher",
    "DeadlineUnreachableError",
    "EmbeddingCache",
    "EmbeddingEngine",
    "EngineConfig",
    "OverloadedError",
    "QueueFullError",
    "RequestTimeoutError",
    "RequestTooLargeError",
    "Timing",
    "WorkerDeadError",
    "WorkerStalledError",
    "batch_limits",
    "request_started",
]
