"""MediaCache: a thread-safe LRU of decoded and preprocessed media, bounded by the bytes it holds.

Keys start with the content hash of the media's bytes plus whatever else shaped the value (pixel bounds, video
sampling), so a chat that sends the same picture again skips both decoding and preprocessing.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


@dataclass(frozen=True)
class CacheUsage:
    """What one bounded cache holds now, for /metrics: its name, bytes and entries, and its bound in bytes."""

    name: str
    bytes_used: int
    entries: int
    capacity_bytes: int


class MediaCache:
    """Least-recently-used entries go first once `max_bytes` would be exceeded; larger entries are not kept."""

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = max_bytes
        self.bytes_used = 0
        self.stats = CacheStats()
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry[0]

    def put(self, key: Hashable, value: Any, nbytes: int | None = None) -> None:
        size = sizeof(value) if nbytes is None else nbytes
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes_used -= old[1]
            self._entries[key] = (value, size)
            self.bytes_used += size
            while self.bytes_used > self.max_bytes:
                _, (_, freed) = self._entries.popitem(last=False)
                self.bytes_used -= freed
                self.stats.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes_used = 0

    def __len__(self) -> int:
        return len(self._entries)

    def usage(self, name: str) -> CacheUsage:
        with self._lock:
            return CacheUsage(name, self.bytes_used, len(self._entries), self.max_bytes)


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
