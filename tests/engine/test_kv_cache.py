"""KVBlockPool: ref counts, the null block, chained prefix hashes with media keys, LRU eviction, fork."""

from __future__ import annotations

import torch

from glmv.engine.kv_cache import NULL_BLOCK, KVBlockPool
from glmv.engine.request import MediaItem, Request
from glmv.inputs.prompt import Prompt
from glmv.sampling import SamplingParams

BS = 4


def req(tokens: list[int], rid: str = "r", media: list[MediaItem] | None = None) -> Request:
    r = Request.from_prompt(rid, Prompt(token_ids=list(tokens)), SamplingParams(), 16, 0, 2)
    if media:
        r.media = media
    return r


def computed(pool: KVBlockPool, r: Request, n: int | None = None) -> Request:
    """Allocate and mark the request's tokens computed, as the scheduler and engine would."""
    n = r.num_tokens if n is None else n
    cached = pool.lookup(r)
    assert pool.allocate(r, n - len(cached) * BS, cached)
    r.num_computed_tokens = n
    pool.cache_computed_blocks(r)
    return r


def test_allocate_free_and_null_block():
    pool = KVBlockPool(6, BS)
    assert pool.num_free_blocks == 5
    a = req(list(range(10)))
    assert pool.allocate(a, 10)
    assert len(a.block_ids) == 3 and NULL_BLOCK not in a.block_ids
    assert all(pool.ref_counts[b] == 1 for b in a.block_ids)
    b = req(list(range(100, 110)), "b")
    assert not pool.allocate(b, 10)  # 3 needed, 2 free: nothing changes
    assert b.block_ids == [] and pool.num_free_blocks == 2
    a.num_computed_tokens = 10
    assert pool.allocate(a, 2)  # 12 tokens still fit in 3 blocks
    assert len(a.block_ids) == 3
    assert pool.allocate(a, 3) and len(a.block_ids) == 4
    pool.free(a)
    assert pool.all_free() and a.block_ids == []
    assert pool.ref_counts[NULL_BLOCK] == 1


def test_prefix_hits_are_whole_blocks_and_leave_one_token():
    pool = KVBlockPool(16, BS)
    first = computed(pool, req(list(range(12))))
    same = req(list(range(12)), "same")
    assert pool.lookup(same) == first.block_ids[:2]  # not all 3: the last token must be computed
    longer = req(list(range(12)) + [99, 98], "longer")
    assert pool.lookup(longer) == first.block_ids[:3]
    assert pool.allocate(longer, 2, pool.lookup(longer))
    assert longer.block_ids[:3] == first.block_ids and pool.ref_counts[first.block_ids[0]] == 2
    diverge = req([0, 1, 2, 3, 77, 5, 6, 7, 8, 9, 10, 11, 12], "diverge")
    assert pool.lookup(diverge) == first.block_ids[:1]  # chained: block 2 differs, block 3 cannot match


def test_media_keys_separate_equal_token_ids():
    pool = KVBlockPool(16, BS)
    img = [5] * 6

    def item(key: str) -> MediaItem:
        pos = torch.arange(2, 8)
        return MediaItem("image", key, (1, 4, 6), 0, 24, pos, 2, 7)

    tokens = [1, 2] + img + [3, 4, 5, 6, 7]
    a = computed(pool, req(tokens, "a", [item("image:aaa:1x4x6")]))
    b = req(tokens, "b", [item("image:bbb:1x4x6")])
    assert pool.lookup(b) == []  # the first block already holds image tokens
    c = req(tokens, "c", [item("image:aaa:1x4x6")])
    assert pool.lookup(c) == a.block_ids[:3]


def test_lru_eviction_prefers_uncached_then_oldest():
    pool = KVBlockPool(7, BS)  # 6 usable
    old = computed(pool, req(list(range(8)), "old"))  # 2 blocks, both hashed
    old_blocks = list(old.block_ids)
    new = computed(pool, req(list(range(50, 58)), "new"))
    pool.free(old)
    pool.free(new)
    assert pool.stats().cached_blocks == 4 and pool.all_free()
    filler = req(list(range(200, 208)), "filler")
    assert pool.allocate(filler, 8)  # the two never-cached blocks go first
    assert pool.evictions == 0
    assert set(filler.block_ids).isdisjoint(old_blocks)
    more = req(list(range(300, 304)), "more")
    assert pool.allocate(more, 4)  # now evicts the least recently freed cached block: old's tail
    assert pool.evictions == 1 and more.block_ids == [old_blocks[1]]
    assert pool.lookup(req(list(range(8)) + [1], "old-again")) == old_blocks[:1]  # old's head survives
    assert len(pool.lookup(req(list(range(50, 58)) + [1], "new-again"))) == 2  # new is intact


def test_reviving_cached_free_blocks_counts_against_free_space():
    pool = KVBlockPool(5, BS)  # 4 usable
    a = computed(pool, req(list(range(12)), "a"))  # 3 blocks, all hashed
    pool.free(a)
    b = req(list(range(12)) + [1, 2, 3, 4, 5, 6], "b")  # 3 hits (all free) + 2 new blocks > 4 usable
    hits = pool.lookup(b)
    assert len(hits) == 3
    assert not pool.can_allocate(b, b.num_tokens - 12, hits)
    assert pool.can_allocate(b, 1, hits)


def test_fork_shares_blocks_by_ref_count():
    pool = KVBlockPool(10, BS)
    parent = computed(pool, req(list(range(8)), "p"))
    kids = [req(list(range(8)), f"k{i}") for i in range(3)]
    for k in kids:
        pool.fork(parent, k)
    pool.free(parent)
    assert all(pool.ref_counts[b] == 3 for b in kids[0].block_ids)
    for k in kids:
        k.num_computed_tokens = 8
        assert pool.allocate(k, 1)  # each child gets its own next block
    assert len({k.block_ids[-1] for k in kids}) == 3
    for k in kids:
        pool.free(k)
    assert pool.all_free()


def test_usage_and_hit_rate_stats():
    pool = KVBlockPool(9, BS)
    a = req(list(range(8)))
    assert pool.allocate(a, 8)
    assert pool.stats().usage == 2 / 8
    pool.record_lookup(10, 4)
    assert pool.stats().hit_rate == 0.4
