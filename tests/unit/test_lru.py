"""glmv.lru.LruCache: the entry bound, the byte bound with its measure, and the byte count through puts and pops."""

from __future__ import annotations

import pytest

from glmv.lru import LruCache


def test_entry_bound_evicts_least_recent():
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the least recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3 and cache.evicted == 1


def test_byte_bound_counts_replacements_and_pops():
    cache: LruCache[str, bytes] = LruCache(100, max_bytes=10, nbytes=len)
    cache.put("a", b"xxxx")
    cache.put("b", b"yyyy")
    assert cache.bytes == 8 and len(cache) == 2
    cache.put("a", b"zz")  # replaced: its old size leaves the count
    assert cache.bytes == 6
    cache.put("c", b"wwwww")  # 11 > 10: the least recent ("b") goes
    assert cache.get("b") is None and cache.bytes == 7 and cache.evicted == 1
    assert cache.pop("c") == b"wwwww" and cache.bytes == 2
    cache.put("huge", b"h" * 11)  # larger than the whole bound: not kept, nothing evicted for it
    assert cache.get("huge") is None and cache.get("a") == b"zz" and cache.bytes == 2


def test_a_byte_bound_needs_its_measure():
    with pytest.raises(ValueError, match="measure"):
        LruCache(4, max_bytes=10)
