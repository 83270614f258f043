"""The vision tower's per-grid position/rotary tables: kept in a cache bounded in bytes (on CUDA they are device
memory, 37 MB for one 1008x1008 picture at the 9B's dimensions), recomputed identically once evicted, and
reported by the engine for /metrics."""

from __future__ import annotations

import torch


def test_grid_tables_stay_within_their_byte_bound(tiny_model_dir, monkeypatch):
    from glmv.config import ModelConfig
    from glmv.models.glm4v import Glm4vModel
    from glmv.models.vision import Glm4vVisionTower

    model_config = ModelConfig.from_dir(tiny_model_dir)
    probe = Glm4vModel.load(model_config, "cpu", torch.float32, max_positions=64).vision
    one = probe._grid_tables(4, 4)
    bound = 3 * one.numel() * one.element_size()  # three 4x4 grids' worth
    monkeypatch.setattr(Glm4vVisionTower, "GRID_TABLE_BYTES", bound)
    vision = Glm4vModel.load(model_config, "cpu", torch.float32, max_positions=64).vision
    first = vision._grid_tables(4, 4).clone()
    for h, w in [(2, 2), (2, 4), (4, 2), (6, 6), (4, 6), (2, 8), (8, 2)]:
        vision._grid_tables(h, w)
        tables = vision.grid_tables
        assert tables.bytes <= bound and tables.max_bytes == bound
    assert vision.grid_tables.get((4, 4)) is None  # evicted by the later grids
    assert torch.equal(vision._grid_tables(4, 4), first)


def test_engine_reports_the_grid_tables(tiny_model_dir):
    from glmv.llm import LLM

    llm = LLM(str(tiny_model_dir), device="cpu", dtype="float32", max_model_len=256)
    stats = llm.engine.stats()
    assert stats["vision_grid_table_capacity_bytes"] > 0
    assert stats["vision_grid_table_capacity_entries"] == llm.engine.runner.model.vision.GRID_TABLE_ENTRIES
    assert not any(key.startswith("vision_graph") for key in stats)  # no CUDA graphs on the CPU
    assert stats["vision_grid_table_bytes"] >= 0 and stats["vision_grid_table_entries"] >= 0
