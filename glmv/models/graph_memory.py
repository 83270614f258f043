"""GraphMemory: how much device memory a set of recorded CUDA graphs holds, for /metrics and the soak.

The graphs share one private pool of the caching allocator: what they hold is that pool's segments (reserved) and
the blocks live in them (in use: the outputs each graph keeps), plus each graph's static input, which lives in the
default pool. The pool is measured from the allocator's own snapshot, and only when a graph is recorded or
dropped (a snapshot walks every segment: too slow for each scrape). Measuring around a capture instead would
miss it on a card whose memory is nearly all reserved: the allocator then frees cached blocks of the default pool
to make room for the graph's, and the total does not move.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class GraphMemoryUsage:
    in_use_bytes: int  # blocks the kept graphs hold, their static inputs included
    reserved_bytes: int  # the pool's segments and the static inputs
    entries: int  # graphs kept now
    capacity_entries: int  # the most kept at once


class GraphMemory:
    def __init__(self, capacity_entries: int, measure_pool: Callable[[], tuple[int, int]]):
        """`measure_pool`: (bytes in use, bytes reserved) of the graphs' private pool now."""
        self.capacity_entries = capacity_entries
        self._measure_pool = measure_pool
        self._static_inputs: dict[Hashable, int] = {}
        self._pool_in_use = 0
        self._pool_reserved = 0

    def captured(self, key: Hashable, static_input_bytes: int) -> None:
        self._static_inputs[key] = static_input_bytes
        self._remeasure()

    def dropped(self, key: Hashable) -> None:
        self._static_inputs.pop(key, None)
        self._remeasure()

    def clear(self) -> None:
        self._static_inputs.clear()
        self._remeasure()

    def _remeasure(self) -> None:
        self._pool_in_use, self._pool_reserved = self._measure_pool()

    @property
    def usage(self) -> GraphMemoryUsage:
        static = sum(self._static_inputs.values())
        return GraphMemoryUsage(self._pool_in_use + static, self._pool_reserved + static, len(self._static_inputs),
                                self.capacity_entries)
