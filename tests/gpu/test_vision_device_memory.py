"""What the vision side holds of the device, as /metrics reports it: the recorded CUDA graphs (GraphMemory: their
private pool and static inputs; a shape that takes the only slot records into the pool its predecessor leaves) and
the embedding cache (the allocator's blocks, not the tensors' sizes). CUDA only (no graphs or device allocator
under the interpreter)."""

from __future__ import annotations

import pytest
import torch

from tests.gpu.where import GPU_TEST_MARKS, ON_GPU

pytestmark = [*GPU_TEST_MARKS, pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a CUDA device")]


def pixels(vision, h: int, w: int) -> torch.Tensor:
    d = vision.dims
    width = d.in_channels * d.temporal_patch_size * d.patch_size**2
    return torch.randn(h * w, width, device="cuda", dtype=torch.float32)


def test_graph_memory_follows_the_kept_graphs(tiny_model_dir, monkeypatch):
    from glmv.config import ModelConfig
    from glmv.models.glm4v import Glm4vModel
    from glmv.models.vision import Glm4vVisionTower

    monkeypatch.setattr(Glm4vVisionTower, "GRAPH_MAX_ENTRIES", 1)
    vision = Glm4vModel.load(ModelConfig.from_dir(tiny_model_dir), "cuda", torch.bfloat16, max_positions=256).vision
    assert vision.use_graphs
    small, large = pixels(vision, 8, 8), pixels(vision, 16, 16)
    for _ in range(3):  # recorded at the second use
        out = vision.encode(small, [(1, 8, 8)])
    usage = vision.graph_memory.usage
    assert (usage.entries, usage.capacity_entries) == (1, 1)
    held = small.numel() * small.element_size() + out.numel() * out.element_size()  # static input and output
    assert usage.reserved_bytes >= usage.in_use_bytes >= held
    for _ in range(8):  # used more than twice as often as `small`: takes its slot (and the pool stays usable)
        out = vision.encode(large, [(1, 16, 16)])
    assert torch.allclose(out.float(), vision._encode(large, [(1, 16, 16)]).float(), atol=1e-2, rtol=1e-2)
    after = vision.graph_memory.usage
    assert after.entries == 1
    assert after.in_use_bytes >= large.numel() * large.element_size() + out.numel() * out.element_size()
    assert after.in_use_bytes > usage.in_use_bytes and after.reserved_bytes >= usage.reserved_bytes


def test_engine_reports_vision_graphs_on_cuda(tiny_model_dir):
    from glmv.llm import LLM

    llm = LLM(str(tiny_model_dir), device="cuda", max_model_len=256)
    vision = llm.engine.runner.model.vision
    for _ in range(3):
        vision.encode(pixels(vision, 8, 8), [(1, 8, 8)])
    stats = llm.engine.stats()
    assert stats["vision_graph_entries"] == 1
    assert stats["vision_graph_capacity_entries"] == vision.GRAPH_MAX_ENTRIES
    assert stats["vision_graph_in_use"] > 0 and stats["vision_graph_bytes"] > 0


def test_embedding_cache_counts_what_the_allocator_holds():
    from glmv.models.vision import VisionEmbeddingCache

    cache = VisionEmbeddingCache(256 << 20, lambda: torch.cuda.memory_allocated())
    sources = [torch.randn(192 + 7 * i, 4096, device="cuda", dtype=torch.bfloat16) for i in range(40)]  # ~1.5 MiB
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for i, emb in enumerate(sources):
        cache.put(f"picture-{i}", emb)
    assert torch.cuda.memory_allocated() - before == cache.bytes  # every byte the copies took, counted
    assert cache.bytes >= sum(e.numel() * e.element_size() for e in sources)

