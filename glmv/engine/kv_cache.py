"""KVBlockPool: who owns which KV-cache block, with ref counts, prefix caching by chained block hashes, LRU eviction.

Pure bookkeeping (no tensors): the model runner owns the cache tensors and reads `Request.block_ids`.

- Block 0 is the null block (padding rows of static decode batches point at it); it is never handed out.
- A full block's hash chains the previous block's hash, its token ids and the keys (content hash + grid) of every
  image or video whose placeholders overlap it, so equal token ids with different pictures never share KV.
- Blocks are registered in the cache once they are full and computed. Freed blocks keep their hash and sit in an LRU
  of evictable blocks; allocation takes never-cached blocks first, then evicts the least recently freed cached block.
- n>1: children share the parent's blocks by reference count (`fork`).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque
from dataclasses import dataclass

from glmv.engine.request import Request

NULL_BLOCK = 0


@dataclass
class PoolStats:
    num_blocks: int
    used_blocks: int
    cached_blocks: int
    usage: float
    prefix_queries: int  # prompt tokens looked up
    prefix_hits: int  # of which served from the cache
    evictions: int

    @property
    def hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0


def block_hash(prev: bytes | None, token_ids: list[int], extra: tuple[str, ...]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(prev or b"\0" * 16)
    h.update(array("q", token_ids).tobytes())
    for key in extra:
        h.update(b"\x1f" + key.encode())
    return h.digest()


class KVBlockPool:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 2:
            raise ValueError(f"The KV cache needs at least 2 blocks (one is reserved), got {num_blocks}.")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.ref_counts[NULL_BLOCK] = 1
        self.hash_of: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}
        self.free_plain: deque[int] = deque(range(1, num_blocks))
        self.free_cached: OrderedDict[int, None] = OrderedDict()  # LRU: first = evicted first
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.evictions = 0

    # ---- state ----
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_plain) + len(self.free_cached)

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def stats(self) -> PoolStats:
        used = self.num_usable_blocks - self.num_free_blocks
        return PoolStats(self.num_usable_blocks, used, len(self.cached), used / self.num_usable_blocks,
                         self.prefix_queries, self.prefix_hits, self.evictions)

    # ---- hashing ----
    def _extra_keys(self, request: Request, start: int, end: int) -> tuple[str, ...]:
        return tuple(item.key for item in request.media if item.overlaps(start, end))

    def update_hashes(self, request: Request, num_tokens: int | None = None) -> list[bytes]:
        """Extend request.block_hashes to cover every full block of its first `num_tokens` (default: all) tokens."""
        bs = self.block_size
        full = (request.num_tokens if num_tokens is None else num_tokens) // bs
        hashes = request.block_hashes
        while len(hashes) < full:
            i = len(hashes)
            start = i * bs
            hashes.append(block_hash(hashes[-1] if hashes else None, request.token_ids[start:start + bs],
                                     self._extra_keys(request, start, start + bs)))
        return hashes

    def lookup(self, request: Request, limit: int | None = None) -> list[int]:
        """Blocks holding the longest cached prefix of the request (at most `limit` tokens, and always leaving one
        token to compute so the step yields logits). Read-only: `allocate` takes the blocks. None for a request
        that scores its prompt (prompt_logprobs): cached positions have no hidden states to score."""
        if not self.enable_prefix_caching or request.scores_prompt:
            return []
        max_tokens = request.num_tokens - 1 if limit is None else min(limit, request.num_tokens - 1)
        hashes = self.update_hashes(request)
        hits = []
        for h in hashes[: max(0, max_tokens) // self.block_size]:
            blk = self.cached.get(h)
            if blk is None:
                break
            hits.append(blk)
        return hits

    def record_lookup(self, num_query_tokens: int, num_hit_tokens: int) -> None:
        self.prefix_queries += num_query_tokens
        self.prefix_hits += num_hit_tokens

    # ---- allocation ----
    def can_allocate(self, request: Request, num_new_tokens: int, cached_blocks: list[int] = ()) -> bool:
        have = len(request.block_ids) + len(cached_blocks)
        base = request.num_computed_tokens if not cached_blocks else len(cached_blocks) * self.block_size
        need = self.blocks_needed(base + num_new_tokens) - have
        revived = sum(1 for b in cached_blocks if self.ref_counts[b] == 0)
        return max(need, 0) + revived <= self.num_free_blocks

    def allocate(self, request: Request, num_new_tokens: int, cached_blocks: list[int] = ()) -> bool:
        """Give the request cached_blocks (a fresh admission's prefix hits) plus enough new blocks for
        num_new_tokens more tokens. Returns False, changing nothing, when the pool cannot."""
        if not self.can_allocate(request, num_new_tokens, cached_blocks):
            return False
        for blk in cached_blocks:
            self._take(blk)
            request.block_ids.append(blk)
        if cached_blocks:
            request.num_hashed_blocks = len(cached_blocks)
            base = len(cached_blocks) * self.block_size
        else:
            base = request.num_computed_tokens
        need = self.blocks_needed(base + num_new_tokens) - len(request.block_ids)
        for _ in range(max(need, 0)):
            request.block_ids.append(self._pop_free())
        return True

    def _take(self, blk: int) -> None:
        if self.ref_counts[blk] == 0:
            self.free_cached.pop(blk, None)
        self.ref_counts[blk] += 1

    def _pop_free(self) -> int:
        if self.free_plain:
            blk = self.free_plain.popleft()
        else:
            blk, _ = self.free_cached.popitem(last=False)
            h = self.hash_of[blk]
            if h is not None and self.cached.get(h) == blk:
                del self.cached[h]
            self.hash_of[blk] = None
            self.evictions += 1
        self.ref_counts[blk] = 1
        return blk

    def cache_computed_blocks(self, request: Request) -> None:
        """Register the request's full, computed blocks in the prefix cache (called after every step)."""
        if not self.enable_prefix_caching:
            return
        # only blocks whose token ids are all known (a step may have computed a token still on its way back)
        known = min(request.num_computed_tokens, len(request.token_ids))
        full = min(known // self.block_size, len(request.block_ids))
        if full <= request.num_hashed_blocks:
            return
        hashes = self.update_hashes(request, full * self.block_size)
        for i in range(request.num_hashed_blocks, full):
            blk, h = request.block_ids[i], hashes[i]
            if self.hash_of[blk] is None and h not in self.cached:
                self.cached[h] = blk
                self.hash_of[blk] = h
        request.num_hashed_blocks = full

    def free(self, request: Request) -> None:
        """Drop the request's references. Blocks reaching zero become free; cached ones stay findable until evicted.
        Tail blocks are released first so they are evicted before the shared head of a prefix."""
        for blk in reversed(request.block_ids):
            self.ref_counts[blk] -= 1
            if self.ref_counts[blk] == 0:
                if self.hash_of[blk] is not None:
                    self.free_cached[blk] = None
                else:
                    self.free_plain.append(blk)
        request.block_ids = []
        request.num_hashed_blocks = 0

    def fork(self, parent: Request, child: Request) -> None:
        """The child references every block of the parent (which must be full blocks only)."""
        for blk in parent.block_ids:
            self.ref_counts[blk] += 1
        child.block_ids = list(parent.block_ids)
        child.num_hashed_blocks = parent.num_hashed_blocks

    def all_free(self) -> bool:
        return self.num_free_blocks == self.num_usable_blocks
