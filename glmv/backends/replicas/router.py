"""PrefixRouter: picks the replica for a request by prefix affinity first, queue depth second.

Each replica keeps its own prefix cache, so a conversation's second turn is cheap only on the replica that ran its
first. The router hashes the prompt's leading KV blocks the way the engine's KVBlockPool chains them (tokens of the
block plus the content hashes of the media that start in it, chained on the previous block's hash), remembers which
replica each block hash was last sent to, and sends a prompt to the replica holding its longest remembered prefix,
unless that replica has `max_imbalance` more requests in flight than the least busy one (then the load wins: a hot
conversation must not pin a whole server to one GPU). Everything else goes to the least busy replica.

Not thread-safe: the DataParallelEngine calls it from its event loop only.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from glmv.inputs.prompt import Prompt
from glmv.models.mrope import type_runs


def prompt_block_hashes(prompt: Prompt, block_size: int, max_blocks: int) -> list[bytes]:
    """Chained hashes of the prompt's first `max_blocks` full blocks; media hashes key the block they start in."""
    media_at: dict[int, list[str]] = {}
    images = iter(prompt.mm.image_hashes)
    videos = iter(prompt.mm.video_hashes)
    last_kind = 0
    for kind, start, _end in type_runs(prompt.type_ids):
        if kind == 1:
            key = next(images, None)
        elif kind == 2 and last_kind != 2:  # a video's frame groups follow each other; key its first one
            key = next(videos, None)
        else:
            key = None
        if key is not None:
            media_at.setdefault(start // block_size, []).append(key)
        if kind != 0:
            last_kind = kind
    ids = prompt.token_ids
    hashes: list[bytes] = []
    prev = b"\0" * 16
    for i in range(min(max_blocks, len(ids) // block_size)):
        h = hashlib.blake2b(prev, digest_size=16)
        h.update(array("q", ids[i * block_size:(i + 1) * block_size]).tobytes())
        for key in media_at.get(i, ()):
            h.update(b"\x1f" + key.encode())
        prev = h.digest()
        hashes.append(prev)
    return hashes


@dataclass(frozen=True)
class RouteChoice:
    replica: int
    prefix_blocks: int  # leading blocks the chosen replica was last sent (0: routed by load)


class PrefixRouter:
    def __init__(self, num_replicas: int, block_size: int, max_blocks: int = 256, max_imbalance: int = 4,
                 max_entries: int = 1 << 20):
        if num_replicas < 1:
            raise ValueError("the router needs at least one replica")
        self.num_replicas = num_replicas
        self.block_size = block_size
        self.max_blocks = max_blocks
        self.max_imbalance = max_imbalance
        self.max_entries = max_entries
        self._owner: OrderedDict[bytes, int] = OrderedDict()  # block hash -> replica; LRU order
        self._next = 0  # round-robin among equally idle replicas

    def choose(self, prompt: Prompt, in_flight: Sequence[int], up: Sequence[bool]) -> RouteChoice:
        """The replica for `prompt` given each replica's requests in flight and whether it is serving."""
        live = [i for i in range(self.num_replicas) if up[i]]
        if not live:
            raise LookupError("no replica is serving")
        hashes = prompt_block_hashes(prompt, self.block_size, self.max_blocks)
        least = min(in_flight[i] for i in live)
        owner, depth = self._longest_owned_prefix(hashes)
        if owner is not None and up[owner] and in_flight[owner] - least < self.max_imbalance:
            chosen = RouteChoice(owner, depth)
        else:
            idle = [i for i in live if in_flight[i] == least]
            pick = min(idle, key=lambda i: (i - self._next) % self.num_replicas)
            self._next = (pick + 1) % self.num_replicas
            chosen = RouteChoice(pick, 0)
        self._remember(hashes, chosen.replica)
        return chosen

    def forget_replica(self, replica: int) -> None:
        """A replica restarted with an empty cache: its prefixes are no reason to send anything there."""
        for h in [h for h, r in self._owner.items() if r == replica]:
            del self._owner[h]

    def _longest_owned_prefix(self, hashes: list[bytes]) -> tuple[int | None, int]:
        for depth in range(len(hashes), 0, -1):  # chained hashes: the deepest known one implies the rest
            owner = self._owner.get(hashes[depth - 1])
            if owner is not None:
                return owner, depth
        return None, 0

    def _remember(self, hashes: list[bytes], replica: int) -> None:
        for h in hashes:
            self._owner[h] = replica
            self._owner.move_to_end(h)
        while len(self._owner) > self.max_entries:
            self._owner.popitem(last=False)
