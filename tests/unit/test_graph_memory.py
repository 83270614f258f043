"""GraphMemory: the vision tower's recorded CUDA graphs are measured when one is recorded or dropped (the pool
from the allocator, the static inputs by their size), and read for /metrics without measuring again."""

from __future__ import annotations

from glmv.models.graph_memory import GraphMemory


class FakePool:
    def __init__(self):
        self.in_use, self.reserved, self.measured = 0, 0, 0

    def __call__(self) -> tuple[int, int]:
        self.measured += 1
        return self.in_use, self.reserved


def test_usage_is_the_pool_plus_the_static_inputs_of_the_kept_graphs():
    pool = FakePool()
    memory = GraphMemory(capacity_entries=2, measure_pool=pool)
    pool.in_use, pool.reserved = 100, 1000
    memory.captured("a", static_input_bytes=10)
    pool.in_use = 150
    memory.captured("b", static_input_bytes=20)
    usage = memory.usage
    assert (usage.in_use_bytes, usage.reserved_bytes, usage.entries, usage.capacity_entries) == (180, 1030, 2, 2)
    pool.in_use = 60  # a's outputs freed with it; the pool keeps its segments
    memory.dropped("a")
    assert (memory.usage.in_use_bytes, memory.usage.reserved_bytes, memory.usage.entries) == (80, 1020, 1)
    memory.clear()
    assert memory.usage.entries == 0 and memory.usage.in_use_bytes == 60


def test_reading_usage_does_not_measure():
    pool = FakePool()
    memory = GraphMemory(capacity_entries=1, measure_pool=pool)
    memory.captured("a", static_input_bytes=1)
    for _ in range(5):
        memory.usage  # noqa: B018
    assert pool.measured == 1
