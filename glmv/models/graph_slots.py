"""GraphSlots: which input shapes keep a recorded CUDA graph when more shapes recur than there are slots.

Why not least-recently-used: a server's vision batches come in many recurring shapes (1 to 10 same-size pictures,
a document page), more than the slots. Under LRU each shape evicts another as it comes back, and every return is a
new capture, a stall on the engine thread with the pool's memory churned (bench/notes/memory.md: 217 captures in
a 10-minute soak with 4 slots). Here a shape takes a slot only from a shape used less often than itself, so the
slots settle on the most used shapes and captures stop. "Less often" has a margin (TAKEOVER_RATIO): shapes as
common as each other have counts that cross by chance again and again, and without it a slot changes hands at
every crossing (measured: a capture every ~30 s through a whole H200 soak).
"""

from __future__ import annotations

from collections.abc import Hashable


class GraphSlots:
    TAKEOVER_RATIO = 2  # a shape takes a slot from one used less than 1/this as often

    def __init__(self, capacity: int, min_uses: int = 2, max_tracked: int = 256):
        self.capacity = capacity
        self.min_uses = min_uses  # the first run warms cuBLAS, cuDNN and Triton up: record from the second on
        self.max_tracked = max_tracked
        self.uses: dict[Hashable, int] = {}
        self.held: set[Hashable] = set()

    def use(self, key: Hashable) -> int:
        """Count one more use of `key`'s shape; returns its count."""
        if key not in self.uses and len(self.uses) >= self.max_tracked:
            self.uses = {k: n for k, n in self.uses.items() if k in self.held}  # forget the rare ones
        self.uses[key] = self.uses.get(key, 0) + 1
        return self.uses[key]

    def admit(self, key: Hashable) -> tuple[bool, Hashable | None]:
        """(record a graph for `key` now?, the held shape to drop for it, if any). Call after use(key)."""
        uses = self.uses.get(key, 0)
        if key in self.held or uses < self.min_uses:
            return False, None
        if len(self.held) < self.capacity:
            self.held.add(key)
            return True, None
        coldest = min(self.held, key=lambda k: self.uses.get(k, 0))
        if self.uses.get(coldest, 0) * self.TAKEOVER_RATIO >= uses:
            return False, None
        self.held.discard(coldest)
        self.held.add(key)
        return True, coldest

    def release(self, key: Hashable) -> None:
        """`key`'s graph is gone (its capture failed, say)."""
        self.held.discard(key)
