"""MediaCache: a thread-safe LRU of decoded and preprocessed media, bounded by the bytes it holds.

Keys start with the content hash of the media's bytes plus whatever else shaped the value (pixel bounds, video
sampling), so a chat that sends the same picture again skips both decoding and preprocessing.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from glmv.lru import LruCache


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


@dataclass(frozen=True)
class CacheUsage:
    """What one bounded cache holds now, for /metrics: its name, bytes and entries, and its bounds (0: none of
    that kind)."""

    name: str
    bytes_used: int
    entries: int
    capacity_bytes: int
    capacity_entries: int = 0


class MediaCache:
    """Least-recently-used entries go first once `max_bytes` would be exceeded; larger entries are not kept."""

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = max_bytes
        # (value, its size): a put may state the size, so the bound measures what was stated
        self._lru: LruCache[Hashable, tuple[Any, int]] = LruCache(sys.maxsize, max_bytes, lambda entry: entry[1])

    @property
    def bytes_used(self) -> int:
        return self._lru.bytes

    @property
    def stats(self) -> CacheStats:
        return CacheStats(self._lru.hits, self._lru.misses, self._lru.evicted)

    def get(self, key: Hashable) -> Any | None:
        entry = self._lru.get(key)
        return None if entry is None else entry[0]

    def put(self, key: Hashable, value: Any, nbytes: int | None = None) -> None:
        self._lru.put(key, (value, sizeof(value) if nbytes is None else nbytes))

    def clear(self) -> None:
        self._lru.clear()

    def __len__(self) -> int:
        return len(self._lru)

    def usage(self, name: str) -> CacheUsage:
        return CacheUsage(name, self.bytes_used, len(self), self.max_bytes)


def sizeof(value: Any) -> int:
    """Approximate bytes held by decoded media: arrays, tensors, PIL images and containers of them.

    A tensor or array counts the whole buffer it keeps alive, not only its own elements: a view (a slice of a
    batch, say) holds its base's memory for as long as it is cached, so counting the view alone would let a cache
    hold many times its bound.
    """
    if isinstance(value, torch.Tensor):
        return max(value.untyped_storage().nbytes(), value.element_size() * value.numel())
    if isinstance(value, np.ndarray):
        base = value
        while isinstance(base.base, np.ndarray):
            base = base.base
        return max(base.nbytes, value.nbytes)
    if hasattr(value, "size") and hasattr(value, "getbands"):  # PIL image
        width, height = value.size
        return width * height * len(value.getbands())
    if isinstance(value, (list, tuple)):
        return sum(sizeof(v) for v in value)
    if isinstance(value, dict):
        return sum(sizeof(v) for v in value.values())
    if hasattr(value, "__dataclass_fields__"):
        return sum(sizeof(getattr(value, name)) for name in value.__dataclass_fields__)
    return 64


def content_hash(data: bytes | torch.Tensor) -> str:
    """A short hex SHA-256 of media bytes (or a tensor's raw bytes): the key of caches and of prefix reuse."""
    if isinstance(data, torch.Tensor):
        data = data.contiguous().view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:32]
