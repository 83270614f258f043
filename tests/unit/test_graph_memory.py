"""GraphMemory: what the vision tower's recorded CUDA graphs keep in use falls back as graphs are dropped; what
their shared pool reserved does not."""

from __future__ import annotations

from glmv.models.graph_memory import GraphMemory


def test_in_use_follows_the_kept_graphs_and_reserved_only_grows():
    memory = GraphMemory(capacity_entries=2)
    memory.captured("a", in_use_delta=100, reserved_delta=1000)
    memory.captured("b", in_use_delta=50, reserved_delta=0)  # reused the pool's free segments
    usage = memory.usage
    assert (usage.in_use_bytes, usage.reserved_bytes, usage.entries, usage.capacity_entries) == (150, 1000, 2, 2)
    memory.dropped("a")
    memory.captured("c", in_use_delta=70, reserved_delta=200)
    usage = memory.usage
    assert (usage.in_use_bytes, usage.reserved_bytes, usage.entries) == (120, 1200, 2)
    memory.clear()
    assert (memory.usage.in_use_bytes, memory.usage.reserved_bytes, memory.usage.entries) == (0, 1200, 0)


def test_a_capture_that_freed_memory_counts_as_none():
    memory = GraphMemory(capacity_entries=1)
    memory.captured("a", in_use_delta=-10, reserved_delta=-4096)  # another thread freed a block meanwhile
    assert (memory.usage.in_use_bytes, memory.usage.reserved_bytes) == (0, 0)
