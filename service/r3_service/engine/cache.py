"""A least-recently-used embedding cache bounded in bytes."""

from __future__ import annotations

import sys
from collections import OrderedDict

import numpy as np

# Per-entry bookkeeping beyond the key and the array data (dict slot, array header).
_ENTRY_OVERHEAD = 200


class EmbeddingCache:
    """Maps text to embedding; evicts the least recently used entries past ``max_bytes``.

    Not thread-safe: the engine uses it from the event loop only.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is cached (a peek: no hit counted, no reordering)."""
        return key in self._entries

    @staticmethod
    def entry_bytes(key: str, value: np.ndarray) -> int:
        return sys.getsizeof(key) + value.nbytes + _ENTRY_OVERHEAD

    def get(self, key: str) -> np.ndarray | None:
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str, value: np.ndarray) -> None:
        size = self.entry_bytes(key, value)
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= self.entry_bytes(key, old)
        self._entries[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            evicted_key, evicted = self._entries.popitem(last=False)
            self.bytes -= self.entry_bytes(evicted_key, evicted)
