"""LruCache: a map bounded by entry count (and, given a measure, by bytes), least recently used out first, safe to
share between threads.

The one LRU of glmv: compiled grammars and stored responses by count; the media and processor caches
(glmv.inputs.cache), the vision embeddings and the vision tower's per-grid tables by bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """At most `capacity` entries and, with `nbytes`, at most `max_bytes` of them by that measure (an entry larger
    than the whole bound is not kept)."""

    def __init__(self, capacity: int, max_bytes: int | None = None, nbytes: Callable[[V], int] | None = None):
        if (max_bytes is None) != (nbytes is None):
            raise ValueError("LruCache: a byte bound needs its measure, and a measure its bound")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._nbytes = nbytes
        self.bytes = 0
        self.evicted = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
            else:
                self._entries.move_to_end(key)
                self.hits += 1
            return value

    def put(self, key: K, value: V) -> None:
        size = self._size(value)
        if self.capacity <= 0 or (self.max_bytes is not None and size > self.max_bytes):
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= self._size(old)
            self._entries[key] = value
            self.bytes += size
            while len(self._entries) > self.capacity or (self.max_bytes is not None and self.bytes > self.max_bytes):
                _, dropped = self._entries.popitem(last=False)
                self.bytes -= self._size(dropped)
                self.evicted += 1

    def pop(self, key: K) -> V | None:
        with self._lock:
            value = self._entries.pop(key, None)
            if value is not None:
                self.bytes -= self._size(value)
            return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def _size(self, value: V) -> int:
        return self._nbytes(value) if self._nbytes is not None else 0

    def __len__(self) -> int:
        return len(self._entries)
