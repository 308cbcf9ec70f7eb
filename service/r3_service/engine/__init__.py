"""The async engine: deadline-aware scheduling and batching, embedding cache, reward scoring."""

from r3_service.engine.batching import Batcher, BatchStats
from r3_service.engine.cache import EmbeddingCache
from r3_service.engine.config import EngineConfig, batch_limits
from r3_service.engine.engine import (
    RewardBatch,
    RewardEngine,
    RewardItem,
    request_started,
)
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
    "EngineConfig",
    "OverloadedError",
    "QueueFullError",
    "RequestTimeoutError",
    "RequestTooLargeError",
    "RewardBatch",
    "RewardEngine",
    "RewardItem",
    "WorkerDeadError",
    "WorkerStalledError",
    "batch_limits",
    "request_started",
]
