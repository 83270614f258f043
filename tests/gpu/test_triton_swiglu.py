"""SwiGLU's gate/up matmul with the gating fused in (glmv.kernels.triton_swiglu, gemv's epilogue) and the model-side
dispatcher (glmv.layers.swiglu.GateUpAct), against float64 math on the stacked weight.

GPU tests: CUDA, or the CPU through `TRITON_INTERPRET=1` (float32 there: the interpreter's 16-bit dot is unreliable).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.gpu.where import DEVICE, GPU_TEST_MARKS, ON_GPU
from tests.gpu.where import TRITON as kernels

pytestmark = GPU_TEST_MARKS
DTYPE = torch.bfloat16 if ON_GPU else torch.float32
TOL = 1e-2 if ON_GPU else 1e-5


def swiglu():
    from glmv.kernels import triton_swiglu

    return triton_swiglu


def stacked_case(rows: int, inter: int, k: int, seed: int):
    """x, the stacked [gate; up] weight and the float64 reference of up * silu(gate) on the same inputs."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=gen).to(DTYPE).to(DEVICE)
    w = (torch.randn(2 * inter, k, generator=gen) * 2 / k**0.5).to(DTYPE).to(DEVICE)
    gate, up = (x.double() @ w.double().t()).chunk(2, dim=-1)
    return x, w, up * F.silu(gate)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all()
    return ((out.double() - ref).norm() / ref.norm()).item()


def test_interleave_puts_each_gate_row_beside_its_up_row():
    sw = swiglu()
    w = torch.randn(2 * 5, 3)
    inter = sw.interleave_gate_up(w)
    assert torch.equal(inter[0::2], w[:5]) and torch.equal(inter[1::2], w[5:])
    assert torch.equal(sw.deinterleave_gate_up(inter), w)
    with pytest.raises(ValueError, match="even"):
        sw.interleave_gate_up(torch.randn(7, 3))


@pytest.mark.parametrize("rows,inter", [(1, 48), (5, 1500)])
def test_pairwise_gating_equals_the_stacked_kernel_bitwise(rows, inter):
    sw = swiglu()
    gen = torch.Generator().manual_seed(rows + inter)
    gate_up = (torch.randn(rows, 2 * inter, generator=gen) * 4).to(DTYPE).to(DEVICE)
    pairs = gate_up.view(rows, 2, inter).transpose(1, 2).reshape(rows, 2 * inter)  # the interleaved layout
    out = sw.silu_mul_pairs(pairs)
    assert out.shape == (rows, inter)
    assert torch.equal(out, kernels.silu_mul(gate_up))


MATMUL_CASES = [(37, 48, 64), (130, 200, 128)] + ([(300, 1000, 256), (1334, 13696, 4096)] if ON_GPU else [])


@pytest.mark.parametrize("rows,inter,k", MATMUL_CASES)
def test_matmul_silu_matches_float64(rows, inter, k):
    sw = swiglu()
    x, w, ref = stacked_case(rows, inter, k, seed=rows + inter)
    wi = sw.interleave_gate_up(w)
    configs = sw.CONFIGS if ON_GPU else [sw.MatmulSiluConfig(16, 32, 16, 4, 2),
                                         sw.MatmulSiluConfig(32, 64, 32, 4, 2, group_m=2, persistent=True)]
    unfused = relative_error(kernels.silu_mul(F.linear(x, w)), ref)
    for cfg in configs:
        out = sw.matmul_silu(x, wi, cfg)
        assert out.shape == (rows, inter) and out.dtype == DTYPE, cfg
        err = relative_error(out, ref)
        assert err < TOL, (cfg, err)
        if ON_GPU:  # as accurate as cuBLAS followed by the separate gating (within 2x)
            assert err <= 2 * unfused + 1e-6, (cfg, err, unfused)


def test_matmul_silu_refuses_a_k_that_is_not_whole_tiles():
    sw = swiglu()
    cfg = sw.MatmulSiluConfig(16, 32, 16, 4, 2)
    assert not sw.fits(torch.zeros(4, 40, dtype=DTYPE), torch.zeros(64, 40, dtype=DTYPE), cfg)
    with pytest.raises(ValueError, match="multiple"):
        sw.matmul_silu(torch.zeros(4, 40, dtype=DTYPE, device=DEVICE), torch.zeros(64, 40, dtype=DTYPE, device=DEVICE),
                       cfg)


@pytest.mark.parametrize("rows", [1, 40])
def test_gemv_epilogue_gates_pairs(rows):
    from glmv.kernels.triton_gemv import GemvConfig

    sw = swiglu()
    x, w, ref = stacked_case(rows, 320, 256, seed=rows)
    wi = sw.interleave_gate_up(w)
    for cfg in [GemvConfig(32, 64, 4, 2), GemvConfig(64, 64, 4, 2, split_k=2)]:
        out = kernels.gemv(x, wi, None, cfg, silu_mul=True)
        assert out.shape == (rows, 320)
        assert relative_error(out, ref) < TOL, cfg
    with pytest.raises(ValueError, match="no bias"):
        kernels.gemv(x, wi, torch.zeros(640, dtype=DTYPE, device=DEVICE), GemvConfig(32, 64, 4, 2), silu_mul=True)


def test_dispatcher_takes_each_planned_path_and_agrees(monkeypatch):
    from glmv.kernels.triton_gemv import GemvConfig
    from glmv.layers import torch_ops
    from glmv.layers.linear import DenseLinear, GemvPlan
    from glmv.layers.swiglu import GateUpAct

    sw = swiglu()
    calls = []
    plan = GemvPlan(lambda *a: calls.append("gemv") or kernels.gemv(*a))
    act = GateUpAct(sw, kernels.silu_mul, plan)
    plain = GateUpAct(None, kernels.silu_mul, GemvPlan())
    torch_only = GateUpAct(None, torch_ops.silu_mul, GemvPlan())
    x, w, ref = stacked_case(200, 96, 128, seed=5)
    wi = act.prepare(w)
    assert act.interleaved and plain.prepare(w) is w
    plan.configs = {(192, 128, False, 3): GemvConfig(32, 64, 4, 2)}
    act.large_plan = {(192, 128): [(129, None), (150, sw.MatmulSiluConfig(32, 64, 32, 4, 2))]}
    real_matmul = sw.matmul_silu
    monkeypatch.setattr(sw, "matmul_silu", lambda *a: calls.append("matmul") or real_matmul(*a))
    for rows, path in [(3, "gemv"), (4, None), (140, None), (200, "matmul")]:
        calls.clear()
        out = act(x[:rows], DenseLinear(wi, None, plan))
        assert calls == ([path] if path else []), rows
        assert relative_error(out, ref[:rows]) < TOL, rows
        assert relative_error(plain.dense(x[:rows], w), ref[:rows]) < TOL
        assert relative_error(torch_only(x[:rows], DenseLinear(w, None, GemvPlan())), ref[:rows]) < TOL


@pytest.mark.skipif(not ON_GPU, reason="times kernels in CUDA graphs")
def test_plan_chooses_only_configurations_that_win():
    sw = swiglu()
    weights = [sw.interleave_gate_up(torch.randn(2 * 2048, 1024, dtype=torch.bfloat16, device="cuda") / 32)
               for _ in range(2)]
    report: list = []
    plan = sw.plan([weights], [256, 4096], report)
    points = plan[(4096, 1024)]
    assert [p for p, _ in points] == [256, 4096]
    timed = {key[2]: (base, best) for key, base, best, cfg in report if base is not None}
    for point, cfg in points:
        base, best = timed[point]
        assert (cfg is None) == (best == base), point
        assert cfg is None or best < 0.98 * base
    assert sw.planned_config(points, 100) is points[0][1] and sw.planned_config(points, 5000) is points[1][1]


def test_model_lays_out_its_weights_once_and_matches_the_separate_gating(tmp_path, monkeypatch):
    """A tiny model whose kernels fuse the gating (forced for every prompt row count) gives the decoder's and the
    tower's outputs of the same model gating separately; weights interleaved for one model are not interleaved again
    for a second, and a model that gates separately refuses them."""
    from dataclasses import replace

    from glmv.config import ModelConfig
    from glmv.layers.attention import AttentionMetadata
    from glmv.layers.kernels import TORCH_KERNELS
    from glmv.models.glm4v import Glm4vModel
    from glmv.models.tiny import make_tiny_model

    sw = swiglu()
    make_tiny_model(tmp_path / "tiny", preset="tiny")
    config = ModelConfig.from_dir(tmp_path / "tiny")
    triton = replace(TORCH_KERNELS, name="test", write_kv=kernels.write_kv,
                     paged_decode_attention=kernels.paged_decode_attention,
                     paged_prefill_attention=kernels.paged_prefill_attention, rms_norm=kernels.rms_norm,
                     residual_rms_norm=kernels.residual_rms_norm, silu_mul=kernels.silu_mul,
                     rotary_write_kv=kernels.rotary_write_kv, rotary_half_pair=kernels.rotary_half_pair)

    def model(swiglu_module, loaded=None):
        chosen = replace(triton, swiglu=swiglu_module)
        if loaded is None:
            return Glm4vModel.load(config, DEVICE, torch.float32, max_positions=1024, kernels=chosen)
        act, plan = Glm4vModel.build_kernels(chosen)
        return Glm4vModel(config, loaded.w, None, loaded.device, loaded.dtype, 1024, chosen, act, plan)

    def prefill(m, ids):
        t, n, bs = m.dims, ids.numel(), 16
        blocks = -(-n // bs) + 1
        cache = torch.zeros(t.num_layers, 2, blocks, bs, t.num_kv_heads, t.head_dim, device=DEVICE)
        meta = AttentionMetadata(
            slot_mapping=torch.arange(n, device=DEVICE) + bs, num_prefill_tokens=n,
            prefill_block_tables=torch.arange(1, blocks, dtype=torch.int32, device=DEVICE).unsqueeze(0),
            prefill_cu_seqlens_q=torch.tensor([0, n], dtype=torch.int32, device=DEVICE),
            prefill_seq_lens=torch.tensor([n], dtype=torch.int32, device=DEVICE), prefill_max_seqlen_q=n,
            prefill_dense=True)
        with torch.inference_mode():
            return m.forward(m.embed(ids), torch.arange(n, device=DEVICE).expand(3, -1),
                             [(cache[i, 0], cache[i, 1]) for i in range(t.num_layers)], meta)

    plain, fused = model(None), model(sw)
    assert fused.w.gate_up_interleaved and not plain.w.gate_up_interleaved
    cfg = sw.MatmulSiluConfig(32, 64, 32, 4, 2) if not ON_GPU else sw.MatmulSiluConfig(64, 128, 32, 4, 3)  # float32
    for w in (fused.w.layers[0].gate_up.weight, fused.vision.w.blocks[0].gate_up_weight):
        fused.gate_up_act.large_plan[tuple(w.shape)] = [(129, cfg)]
    ids = torch.randint(0, config.text.vocab_size, (200,), device=DEVICE)
    ours, ref = prefill(fused, ids), prefill(plain, ids)
    assert relative_error(ours, ref.double()) < TOL * 10
    patch = 3 * config.vision.temporal_patch_size * config.vision.patch_size**2
    pixels = torch.randn(16 * 16, patch, device=DEVICE)
    with torch.inference_mode():
        assert relative_error(fused.vision.encode(pixels, [(1, 16, 16)]),
                              plain.vision.encode(pixels, [(1, 16, 16)]).double()) < TOL * 10
    first_layer = fused.w.layers[0].gate_up.weight
    again = model(sw, loaded=fused)
    assert again.w.layers[0].gate_up.weight is first_layer  # not interleaved a second time
    with pytest.raises(ValueError, match="laid out"):
        model(None, loaded=fused)
