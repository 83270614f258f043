"""PlanCache: start-up matmul plans kept on disk (glmv/kernels/plan_cache.py), with a fake planner on the CPU."""

from __future__ import annotations

import json
import logging

import torch

from glmv.kernels import plan_cache as pc
from glmv.kernels import triton_gemv as tg
from glmv.kernels import triton_swiglu as ts
from glmv.options import KernelOptions


def _desc(**over):
    d = {"planner": "fake", "env": {"device": "X"}, "shapes": [[4, 8]]}
    d.update(over)
    return d


def test_store_then_load_and_keys_that_differ_miss(tmp_path):
    cache = pc.PlanCache(tmp_path / "plans")
    calls = []

    def compute():
        calls.append(1)
        return {"a": 1}

    ident = (lambda v: v, lambda v: v)
    assert cache.cached(_desc(), compute, *ident) == {"a": 1}
    assert cache.cached(_desc(), compute, *ident) == {"a": 1}
    assert len(calls) == 1 and cache.hits == 1
    for other in (_desc(env={"device": "Y"}), _desc(shapes=[[4, 16]]), _desc(planner="other")):
        cache.cached(other, compute, *ident)
    assert len(calls) == 4  # device, shapes and planner are all in the key
    assert pc.PlanCache.key(_desc()) == pc.PlanCache.key(dict(reversed(list(_desc().items()))))  # order-free


def test_corrupt_or_mismatched_entries_are_ignored_with_a_log_line_and_retimed(tmp_path, caplog):
    cache = pc.PlanCache(tmp_path)
    cache.store(_desc(), {"v": 1})
    (path,) = tmp_path.glob("*.json")
    calls = []

    def compute():
        calls.append(1)
        return {"v": 2}

    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="glmv.kernels.plan_cache"):
        assert cache.cached(_desc(), compute, lambda v: v, lambda v: v) == {"v": 2}
    assert "ignoring" in caplog.text and len(calls) == 1
    assert json.loads(path.read_text())["value"] == {"v": 2}  # rewritten
    entry = json.loads(path.read_text())
    entry["key"] = "0" * 64  # a file that claims another key
    path.write_text(json.dumps(entry))
    assert cache.load(_desc()) is None
    cache.store(_desc(), {"bad": True})  # decodes badly: timed again
    assert cache.cached(_desc(), compute, lambda v: v, lambda v: v["v"]) == {"v": 2} and len(calls) == 2


def test_gemv_planner_is_timed_once_then_read_back(tmp_path, monkeypatch):
    calls = []
    chosen = {(32, 16, False, 1): tg.GemvConfig(32, 256, 4, 4), (32, 16, False, 8): tg.GemvConfig(64, 128, 4, 4, 2,
                                                                                                   tma=True)}

    def fake_plan(groups, sizes, report=None):
        calls.append(sizes)
        report.append(((32, 16, False, 1), 3.0, 2.0, chosen[(32, 16, False, 1)]))
        return dict(chosen)

    monkeypatch.setattr(tg, "plan", fake_plan)
    w = [torch.zeros(32, 16, dtype=torch.bfloat16)]
    plan = pc.cached_gemv_planner(pc.PlanCache(tmp_path), 24.0)
    first_report, second_report = [], []
    assert plan([(w, None)], [1, 8], first_report) == chosen
    assert plan([(w, None)], [8, 1], second_report) == chosen  # same sizes, other order: a hit
    assert len(calls) == 1 and second_report[0][:3] == ((32, 16, False, 1), 3.0, 2.0)
    plan([(w, None)], [1, 8, 16], [])  # other batch sizes: timed
    plan([([torch.zeros(32, 16, dtype=torch.float16)], None)], [1, 8], [])  # other dtype: timed
    assert len(calls) == 3


def test_quantized_planner_keys_by_format_and_reads_back_string_keys(tmp_path, monkeypatch):
    from glmv.kernels.quantized_weight import QuantizedWeight

    calls = []
    chosen = {("int4-g128", 64, 256, False, 1): tg.GemvConfig(64, 128, 4, 4, 2)}

    def fake_plan(groups, sizes, report=None):
        calls.append([g.weight.tag for g in groups])
        report.append((("int4-g128", 64, 256, False, 1), 9.0, 4.0, chosen[("int4-g128", 64, 256, False, 1)]))
        return dict(chosen)

    monkeypatch.setattr(tg, "plan_quantized", fake_plan)

    def group(bits: int):
        w = QuantizedWeight.packed_int(torch.zeros(256 * bits // 32, 64, dtype=torch.int32), torch.ones(2, 64),
                                       torch.zeros(2, 64), bits, 128)
        return tg.QuantizedPlanGroup(w, 8, False, torch.bfloat16, None, None, None)

    plan = pc.cached_quantized_gemv_planner(pc.PlanCache(tmp_path), 24.0)
    report: list = []
    assert plan([group(4)], [1], []) == chosen
    assert plan([group(4)], [1], report) == chosen and len(calls) == 1  # read back, string keys as tuples
    assert report[0][:3] == (("int4-g128", 64, 256, False, 1), 9.0, 4.0)
    plan([group(8)], [1], [])  # another format of the same shape: timed
    assert calls == [["int4-g128"], ["int8-g128"]]


def test_swiglu_planner_round_trips_none_points(tmp_path, monkeypatch):
    cfg = ts.MatmulSiluConfig(128, 128, 64, 8, 3, persistent=True)
    calls = []

    def fake_plan(groups, points=None, report=None):
        calls.append(points)
        return {(64, 32): [(256, None), (1024, cfg)]}

    monkeypatch.setattr(ts, "plan", fake_plan)
    plan = pc.cached_swiglu_planner(pc.PlanCache(tmp_path))
    w = [torch.zeros(64, 32, dtype=torch.bfloat16)]
    assert plan([w], [256, 1024], []) == plan([w], [256, 1024], []) == {(64, 32): [(256, None), (1024, cfg)]}
    assert len(calls) == 1


def test_the_cache_dir_comes_from_the_environment_once(tmp_path):
    opts = KernelOptions.from_env({"GLMV_CACHE_DIR": str(tmp_path)})
    assert opts.plan_cache_dir == str(tmp_path / "plans")
    assert KernelOptions.from_env({"GLMV_CACHE_DIR": str(tmp_path), "GLMV_PLAN_CACHE": "0"}).plan_cache_dir is None
