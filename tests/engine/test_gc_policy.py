"""GcPolicy: the engine loop's control over Python's garbage collector (glmv/engine/gc_policy.py)."""

from __future__ import annotations

import gc

import pytest

from glmv.engine.gc_policy import YOUNG_THRESHOLD, GcPolicy
from glmv.options import RuntimeOptions


class _Cycle:
    def __init__(self):
        self.me = self


def test_managed_mode_freezes_the_heap_and_collects_only_when_asked():
    assert gc.isenabled()
    policy = GcPolicy("managed")
    policy.start()
    try:
        assert not gc.isenabled() and gc.get_freeze_count() > 0
        policy.collect_if_due()  # nothing due yet
        assert policy.collections == [0, 0, 0]
        garbage = [_Cycle() for _ in range(YOUNG_THRESHOLD + 10)]
        del garbage  # cycles: only a collection frees them
        assert gc.get_count()[0] >= YOUNG_THRESHOLD
        policy.collect_if_due()
        assert sum(policy.collections) == 1
        assert gc.get_count()[0] < YOUNG_THRESHOLD
    finally:
        policy.stop()
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_freeze_and_python_modes_leave_collection_automatic():
    for mode, frozen in (("freeze", True), ("python", False)):
        policy = GcPolicy(mode)
        policy.start()
        try:
            assert gc.isenabled()
            assert (gc.get_freeze_count() > 0) == frozen
            policy.collect_if_due()
            assert policy.collections == [0, 0, 0]
        finally:
            policy.stop()
        assert gc.get_freeze_count() == 0


def test_switching_modes_and_a_bad_name(monkeypatch):
    policy = GcPolicy("python")
    policy.start()
    policy.switch("managed")
    try:
        assert not gc.isenabled()
    finally:
        policy.stop()
    assert gc.isenabled()
    with pytest.raises(ValueError, match="GLMV_GC must be one of"):
        GcPolicy("sometimes")
    monkeypatch.setenv("GLMV_GC", "sometimes")  # the environment is read once, by glmv.options
    with pytest.raises(ValueError, match="GLMV_GC must be one of"):
        RuntimeOptions.from_env()


def test_no_collection_while_a_request_waits_for_its_first_token():
    from glmv.engine.gc_policy import WAITING_CEILING

    policy = GcPolicy("managed")
    policy.start()
    try:
        garbage = [_Cycle() for _ in range(YOUNG_THRESHOLD + 10)]
        del garbage
        policy.collect_if_due(waiting=True)  # due, but a request waits: deferred
        assert policy.collections == [0, 0, 0] and policy.deferred == 1
        assert gc.get_count()[0] >= YOUNG_THRESHOLD
        policy.collect_if_due()  # nobody waits: the due pass runs
        assert sum(policy.collections) == 1
        before = list(policy.collections)
        garbage = [_Cycle() for _ in range(WAITING_CEILING + 10)]
        del garbage
        policy.collect_if_due(waiting=True)  # past the ceiling: a young pass anyway, never a deeper one
        assert policy.collections == [before[0] + 1, before[1], before[2]]
        assert gc.get_count()[0] < YOUNG_THRESHOLD
    finally:
        policy.stop()
