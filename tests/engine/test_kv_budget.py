"""The CUDA KV budget's arithmetic (glmv.engine.kv_planning.cuda_kv_budget): under --max-gpu-memory everything a
card of that size holds (glmv's allocator, the CUDA context, the profiled step, the vision caches at their bounds)
plus the KV cache stays inside the cap; under --gpu-memory-utilization the measured use counts."""

from __future__ import annotations

from types import SimpleNamespace

from glmv.config import EngineConfig
from glmv.engine.kv_planning import CUDA_CONTEXT_BYTES, CUDA_RESERVE_BYTES, cuda_kv_budget, later_device_bytes

GiB = 1 << 30


def test_under_a_cap_the_card_holds_everything():
    config = EngineConfig(model="m", max_gpu_memory=16 * GiB)
    held, activations, later = 11 * GiB, GiB // 2, 3 * GiB // 4
    budget = cuda_kv_budget(total=141 * GiB, in_use=12 * GiB, held=held, activations=activations, later=later,
                            config=config)
    assert budget == 16 * GiB - held - CUDA_CONTEXT_BYTES - activations - later - CUDA_RESERVE_BYTES
    assert held + CUDA_CONTEXT_BYTES + activations + later + CUDA_RESERVE_BYTES + budget == 16 * GiB


def test_without_a_cap_the_utilization_share_counts_what_is_in_use():
    config = EngineConfig(model="m", gpu_memory_utilization=0.9)
    budget = cuda_kv_budget(total=100 * GiB, in_use=20 * GiB, held=19 * GiB, activations=2 * GiB, later=GiB,
                            config=config)
    assert budget == 90 * GiB - 20 * GiB - 2 * GiB - GiB - CUDA_RESERVE_BYTES


def test_a_cap_too_small_leaves_nothing():
    config = EngineConfig(model="m", max_gpu_memory=8 * GiB)
    assert cuda_kv_budget(141 * GiB, 12 * GiB, 11 * GiB, GiB, GiB, config) == 0


def test_the_vision_caches_are_set_aside_at_their_bounds():
    config = EngineConfig(model="m", vision_cache_bytes=300 << 20)
    tower = SimpleNamespace(GRID_TABLE_BYTES=256 << 20)
    assert later_device_bytes(SimpleNamespace(vision=tower), config) == (300 << 20) + (256 << 20)
    assert later_device_bytes(SimpleNamespace(vision=None), config) == 0
