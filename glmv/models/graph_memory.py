"""GraphMemory: how much device memory a set of recorded CUDA graphs holds, for /metrics and the soak.

The allocator does not say which bytes belong to which graph, so each capture is measured from the outside: the
memory in use and reserved just before and just after it (its static input, the outputs it keeps, the segments its
private pool had to reserve). In use falls back when a graph is dropped (its tensors die); reserved does not, since
the graphs share one private pool that keeps its segments for the next capture: that figure is what the graphs
have reserved since start-up, the number an operator compares with the card's memory.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class GraphMemoryUsage:
    in_use_bytes: int  # held by the graphs kept now
    reserved_bytes: int  # reserved by every capture since start-up
    entries: int  # graphs kept now
    capacity_entries: int  # the most kept at once


class GraphMemory:
    def __init__(self, capacity_entries: int):
        self.capacity_entries = capacity_entries
        self._in_use: dict[Hashable, int] = {}
        self._reserved = 0

    def captured(self, key: Hashable, in_use_delta: int, reserved_delta: int) -> None:
        """`key`'s graph was recorded, and memory in use / reserved moved by these bytes around it."""
        self._in_use[key] = max(0, in_use_delta)
        self._reserved += max(0, reserved_delta)

    def dropped(self, key: Hashable) -> None:
        self._in_use.pop(key, None)

    def clear(self) -> None:
        """Every graph dropped (their pool stays reserved)."""
        self._in_use.clear()

    @property
    def usage(self) -> GraphMemoryUsage:
        return GraphMemoryUsage(sum(self._in_use.values()), self._reserved, len(self._in_use), self.capacity_entries)
