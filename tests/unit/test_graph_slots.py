"""GraphSlots: the vision tower's CUDA-graph slots settle on the most used shapes instead of thrashing."""

from __future__ import annotations

import itertools
import random

from glmv.models.graph_slots import GraphSlots


def _serve(slots: GraphSlots, keys) -> tuple[int, set]:
    """Feed shapes as the tower would; returns (captures made, shapes holding a graph at the end)."""
    captures = 0
    for key in keys:
        slots.use(key)
        capture, dropped = slots.admit(key)
        assert dropped is None or dropped in slots.uses
        captures += capture
    return captures, set(slots.held)


def test_a_shape_is_recorded_from_its_second_use():
    slots = GraphSlots(capacity=4)
    slots.use("a")
    assert slots.admit("a") == (False, None)
    slots.use("a")
    assert slots.admit("a") == (True, None)
    slots.use("a")
    assert slots.admit("a") == (False, None)  # held already


def test_more_recurring_shapes_than_slots_do_not_thrash():
    """Ten batch shapes in a round robin with four slots: LRU would recapture on every return; here the
    captures stop once the slots are filled, whatever the order."""
    keys = [f"batch-of-{n}" for n in range(1, 11)]
    captures, held = _serve(GraphSlots(capacity=4), itertools.islice(itertools.cycle(keys), 2000))
    assert len(held) == 4
    assert captures <= 4 + len(keys)  # each shape may win a slot at most about once while counts are level


def test_the_slots_end_with_the_most_used_shapes():
    rng = random.Random(0)
    weights = {"hot-1": 40, "hot-2": 30, "hot-3": 20, "cold-1": 2, "cold-2": 1, "cold-3": 1}
    stream = rng.choices(list(weights), weights=list(weights.values()), k=5000)
    captures, held = _serve(GraphSlots(capacity=3), stream)
    assert held == {"hot-1", "hot-2", "hot-3"}
    assert captures < 20


def test_a_failed_capture_frees_its_slot():
    slots = GraphSlots(capacity=1)
    for _ in range(2):
        slots.use("a")
    assert slots.admit("a") == (True, None)
    slots.release("a")
    for _ in range(2):
        slots.use("b")
    assert slots.admit("b") == (True, None)


def test_shapes_as_common_as_each_other_stop_trading_slots():
    """Ten equally common shapes arriving at random for eight slots (the soak's batches of pictures): their counts
    cross each other by chance again and again, and a slot must not change hands at every crossing."""
    rng = random.Random(1)
    keys = [f"batch-of-{n}" for n in range(1, 11)]
    slots = GraphSlots(capacity=8)
    _serve(slots, rng.choices(keys, k=2000))
    later, _held = _serve(slots, rng.choices(keys, k=20000))
    assert later <= 1
