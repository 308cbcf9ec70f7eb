"""Engine knobs and their defaults: the one place batch limits, queue and deadline defaults live.

``Settings`` (the ``R3_*`` environment) and the benchmarks read these; nothing else
repeats the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

#: Token budget and size of one batch on CPU. Over HTTP on 2 CPU cores (MiniLM), budgets
#: of 512-1024 tokens served about 30% more items/s than 4096 (activations stay in cache).
CPU_BATCH_TOKENS = 1024
CPU_BATCH_SIZE = 32
#: GPUs want large batches.
GPU_BATCH_TOKENS = 16384
GPU_BATCH_SIZE = 128

DEFAULT_MAX_WAIT_MS = 2.0
DEFAULT_MAX_QUEUE_TEXTS = 4096
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT_S = 60.0
#: A batch running longer than this share of the request timeout counts as hung.
HUNG_BATCH_SHARE = 0.5


def batch_limits(
    device: str, max_batch_tokens: int | None = None, max_batch_size: int | None = None
) -> tuple[int, int]:
    """(max_batch_tokens, max_batch_size) for ``device``; given values win over the defaults."""
    if device == "cuda":
        tokens, size = GPU_BATCH_TOKENS, GPU_BATCH_SIZE
    else:
        tokens, size = CPU_BATCH_TOKENS, CPU_BATCH_SIZE
    return max_batch_tokens or tokens, max_batch_size or size


@dataclass(frozen=True)
class EngineConfig:
    """Batching, queue, cache and deadline knobs of one engine."""

    max_batch_tokens: int = CPU_BATCH_TOKENS
    max_batch_size: int = CPU_BATCH_SIZE
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_queue_texts: int = DEFAULT_MAX_QUEUE_TEXTS
    cache_bytes: int = DEFAULT_CACHE_BYTES
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    #: A batch running longer than this is hung (/readyz turns red); None: a share of the
    #: request timeout (``HUNG_BATCH_SHARE``).
    hung_batch_s: float | None = None

    @classmethod
    def for_device(
        cls,
        device: str,
        max_batch_tokens: int | None = None,
        max_batch_size: int | None = None,
        **knobs: object,
    ) -> EngineConfig:
        """A config with the device's batch limits unless given."""
        tokens, size = batch_limits(device, max_batch_tokens, max_batch_size)
        return replace(cls(max_batch_tokens=tokens, max_batch_size=size), **knobs)  # type: ignore[arg-type]

    @property
    def hung_after_s(self) -> float:
        """Seconds after which a running batch counts as hung."""
        if self.hung_batch_s is not None:
            return self.hung_batch_s
        return self.request_timeout_s * HUNG_BATCH_SHARE
