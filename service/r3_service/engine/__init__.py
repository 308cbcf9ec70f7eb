"""The async engine: dynamic batching, embedding cache, reward scoring."""

from r3_service.engine.batching import Batcher, BatchStats, QueueFullError, WorkerDeadError
from r3_service.engine.cache import EmbeddingCache
from r3_service.engine.engine import (
    EngineConfig,
    RequestTimeoutError,
    RewardBatch,
    RewardEngine,
    RewardItem,
)

__all__ = [
    "BatchStats",
    "Batcher",
    "EmbeddingCache",
    "EngineConfig",
    "QueueFullError",
    "RequestTimeoutError",
    "RewardBatch",
    "RewardEngine",
    "RewardItem",
    "WorkerDeadError",
]
