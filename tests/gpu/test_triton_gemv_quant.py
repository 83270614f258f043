"""The decode matmul on quantized weights (glmv.kernels.triton_gemv.gemv_quantized) against dequantize + matmul:
FP8 with per-channel and 128-wide block scales, 4- and 8-bit integers with group zero points, every candidate
configuration, split K, bias and the SiLU-gating epilogue.

GPU tests: CUDA (the 9B decoder's shapes), or the CPU through `TRITON_INTERPRET=1` (small shapes, float32
activations: the interpreter's 16-bit dot is unreliable)."""

from __future__ import annotations

import pytest
import torch

from tests.gpu.where import DEVICE, GPU_TEST_MARKS, ON_GPU

pytestmark = GPU_TEST_MARKS

SHAPES = [(4608, 4096), (4096, 13696), (27392, 4096)] if ON_GPU else [(96, 256), (40, 384)]
ROWS = [1, 7, 16, 33, 64, 100, 128] if ON_GPU else [1, 17, 65]
DTYPE = torch.bfloat16 if ON_GPU else torch.float32
TOL = 1e-2 if ON_GPU else 1e-5  # relative (Frobenius) error against float64


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def fp8_weight(n: int, k: int, block: int | None, gen: torch.Generator):
    from glmv.kernels.quantized_weight import QuantizedWeight

    raw = (torch.randn(n, k, generator=gen) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
    if block:
        scale = torch.rand(n, -(-k // block), generator=gen) * 1e-3 + 1e-4
        dense = raw.float() * scale.repeat_interleave(block, dim=1)[:, :k]
    else:
        scale = torch.rand(n, generator=gen) * 1e-3 + 1e-4
        dense = raw.float() * scale[:, None]
    return QuantizedWeight.fp8(raw.to(DEVICE), scale.to(DEVICE), block), dense


def int_weight(n: int, k: int, bits: int, group: int, gen: torch.Generator):
    from glmv.kernels.quantized_weight import QuantizedWeight
    from glmv.layers.quant.unpack import pack_k

    q = torch.randint(0, 1 << bits, (n, k), generator=gen, dtype=torch.uint8)
    scales = torch.rand(k // group, n, generator=gen) * 0.02 + 1e-3
    zeros = torch.randint(0, 1 << bits, (k // group, n), generator=gen).float()
    g = torch.arange(k) // group
    dense = (q.float() - zeros[g].t()) * scales[g].t()
    words = pack_k(q.to(DEVICE), bits)
    return QuantizedWeight.packed_int(words, scales.to(DEVICE), zeros.to(DEVICE), bits, group), dense


def w8a8_configs(configs: list) -> list:
    return [c for c in configs if c.w8a8][:1]


def w8a8_reference(x: torch.Tensor, dense: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """What W8A8 computes exactly: the rows rounded to E4M3 per token (as triton_fp8.quantize_rows rounds them)
    times the dequantized weight, in float64."""
    from glmv.kernels.triton_fp8 import round_rows_to_fp8

    ref = round_rows_to_fp8(x.float().to(DEVICE)).cpu().double() @ dense.double().t()  # rounded by the kernel
    return ref + bias.double() if bias is not None else ref


def cases(n: int, k: int, gen: torch.Generator):
    yield "fp8", fp8_weight(n, k, None, gen)
    yield "fp8-b128", fp8_weight(n, k, 128, gen)
    yield "int4-g128", int_weight(n, k - k % 128, 4, 128, gen)
    yield "int8-g128", int_weight(n, k - k % 128, 8, 128, gen)


@pytest.mark.parametrize("n,k", SHAPES)
def test_every_fitting_configuration_matches_the_dequantized_product(n, k):
    from glmv.kernels.triton_gemv import candidates, gemv_quantized

    gen = torch.Generator().manual_seed(n + k)
    for tag, (weight, dense) in cases(n, k, gen):
        assert weight.tag == tag
        bias = torch.randn(n, generator=gen).to(DTYPE)
        for rows in ROWS:
            x = torch.randn(rows, weight.k, generator=gen).to(DTYPE)
            ref = x.double() @ dense.double().t() + bias.double()
            configs = [c for c in candidates(rows, True) if c.fits(weight)]
            assert configs, (tag, rows)
            for cfg in configs if rows == ROWS[0] or not ON_GPU else configs[:2] + w8a8_configs(configs):
                out = gemv_quantized(x.to(DEVICE), weight, bias.to(DEVICE), cfg)
                assert out.shape == (rows, n) and out.dtype == DTYPE
                expected = w8a8_reference(x, dense, bias) if cfg.w8a8 else ref
                assert relative_error(out.cpu(), expected) < TOL, (tag, rows, cfg)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_activations_past_float16s_range(dtype):
    """16-bit activations meet quantized weights in a float16 dot (F16_X_SCALE): values far past float16's 65,504
    (as bf16 activations reach) still give the product, within the output's own rounding."""
    from glmv.kernels.triton_gemv import candidates, gemv_quantized

    gen = torch.Generator().manual_seed(11)
    n, k = SHAPES[0]
    for tag, (weight, dense) in cases(n, k, gen):
        for rows in ROWS[:2]:
            x = torch.randn(rows, weight.k, generator=gen) * (3e5 if dtype == torch.bfloat16 else 1.0)
            x = x.to(dtype)
            ref = x.double() @ dense.double().t()
            for cfg in [c for c in candidates(rows, True)
                        if c.fits(weight) and not c.w8a8]:  # the float16 road; W8A8 scales rows into E4M3 instead
                out = gemv_quantized(x.to(DEVICE), weight, None, cfg)
                assert torch.isfinite(out).all(), (tag, cfg)
                assert relative_error(out.cpu(), ref) < 5e-3, (tag, rows, cfg)


def test_split_k_and_gating_epilogue():
    """Split K (several programs per column block, the last one reducing) and the SiLU gating on interleaved
    gate/up rows: up * silu(gate) of the dequantized product."""
    import torch.nn.functional as F

    from glmv.kernels.triton_gemv import GemvConfig, gemv_quantized
    from glmv.kernels.triton_swiglu import interleave_gate_up

    gen = torch.Generator().manual_seed(5)
    n, k = (2048, 4096) if ON_GPU else (64, 512)
    for tag, (weight, dense) in cases(n, k, gen):
        x = torch.randn(3, weight.k, generator=gen).to(DTYPE)
        ref = x.double() @ dense.double().t()
        split = GemvConfig(32, 128, 4, 2, split_k=4)
        assert relative_error(gemv_quantized(x.to(DEVICE), weight, None, split).cpu(), ref) < TOL, tag
        gate, up = ref[:, : n // 2], ref[:, n // 2:]
        gated = up * F.silu(gate)
        inter = weight.interleaved_gate_up(interleave_gate_up)
        for cfg in (GemvConfig(32, 128, 4, 2), split):
            out = gemv_quantized(x.to(DEVICE), inter, None, cfg, silu_mul=True)
            assert out.shape == (3, n // 2)
            assert relative_error(out.cpu(), gated) < TOL, (tag, cfg)


def test_w8a8_split_k_and_gating_and_what_it_refuses():
    """W8A8 (activations to E4M3 per token, FP8 dots) on per-channel FP8: unsplit and split K, with bias, and the
    SiLU gating fused (unsplit) or after the partials' sum (split), each equal to the product on rows rounded as
    it rounds them; block-scaled FP8 and integer weights are refused."""
    import torch.nn.functional as F

    from glmv.kernels.triton_gemv import GemvConfig, gemv_quantized
    from glmv.kernels.triton_swiglu import interleave_gate_up

    gen = torch.Generator().manual_seed(9)
    n, k = (4096, 13696) if ON_GPU else (64, 512)
    weight, dense = fp8_weight(n, k, None, gen)
    inter = weight.interleaved_gate_up(interleave_gate_up)
    bias = torch.randn(n, generator=gen).to(DTYPE)
    for rows in (16, 64, 100):
        x = torch.randn(rows, k, generator=gen).to(DTYPE)
        ref = w8a8_reference(x, dense, None)
        gate, up = ref[:, : n // 2], ref[:, n // 2:]
        for split in (1, 4):
            cfg = GemvConfig(64, 128, 4, 3, split_k=split, w8a8=True)
            out = gemv_quantized(x.to(DEVICE), weight, bias.to(DEVICE), cfg)
            assert out.shape == (rows, n) and out.dtype == DTYPE
            assert relative_error(out.cpu(), ref + bias.double()) < TOL, (rows, split)
            gated = gemv_quantized(x.to(DEVICE), inter, None, cfg, silu_mul=True)
            assert gated.shape == (rows, n // 2)
            assert relative_error(gated.cpu(), up * F.silu(gate)) < TOL, (rows, split)
    x = torch.zeros(16, 256, dtype=DTYPE, device=DEVICE)
    for refused in (fp8_weight(32, 256, 128, gen)[0], int_weight(32, 256, 4, 128, gen)[0]):
        with pytest.raises(ValueError, match="W8A8 takes FP8 weights with per-channel scales"):
            gemv_quantized(x, refused, None, GemvConfig(64, 128, 4, 3, w8a8=True))


def test_a_tile_across_groups_is_refused():
    from glmv.kernels.triton_gemv import GemvConfig, gemv_quantized

    weight, _ = int_weight(32, 256, 4, 64, torch.Generator().manual_seed(6))
    x = torch.zeros(1, 256, dtype=DTYPE, device=DEVICE)
    with pytest.raises(ValueError, match="does not tile"):
        gemv_quantized(x, weight, None, GemvConfig(32, 128, 4, 2))


@pytest.mark.parametrize("kind", ["fp8", "int4-act-order"])
def test_quantized_linears_take_the_planned_decode_matmul_and_gate_through_the_dispatcher(kind):
    """Fp8Linear / IntLinear: rows the plan covers run gemv_quantized (the act-ordered GPTQ gather included), other
    rows their own kernels; once their gate/up stack is interleaved, GateUpAct gates in the epilogue where planned
    and pairwise after the product elsewhere. Every path equals the dequantized reference."""
    import torch.nn.functional as F

    from glmv.kernels import triton_swiglu
    from glmv.kernels.triton_gemv import GemvConfig, gemv_quantized
    from glmv.layers import torch_ops
    from glmv.layers.linear import GemvPlan
    from glmv.layers.quant.linears import Fp8Linear, IntLinear
    from glmv.layers.quant.loaders import QuantKernels
    from glmv.layers.quant.unpack import IntWeight, quantize_fp8_rows
    from glmv.layers.swiglu import GateUpAct

    gen = torch.Generator().manual_seed(7)
    n, k = (1024, 2048) if ON_GPU else (64, 256)
    qk = QuantKernels.for_device(torch.device(DEVICE))
    calls: list[str] = []
    plan = GemvPlan(None, lambda *a: calls.append("gemv") or gemv_quantized(*a))
    if kind == "fp8":
        lin = Fp8Linear(quantize_fp8_rows(torch.randn(n, k, generator=gen).to(DEVICE) * 0.05), None,
                        qk.fp8_weight_only, None, DTYPE, plan=plan)
    else:
        q = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
        g_idx = (torch.arange(k) // 128)[torch.randperm(k, generator=gen)]
        w = IntWeight(q.to(DEVICE), (torch.rand(n, k // 128, generator=gen) * 0.02).to(DEVICE),
                      torch.randint(0, 16, (n, k // 128), generator=gen).float().to(DEVICE), g_idx.to(DEVICE), 4, 128)
        lin = IntLinear(w, None, qk.int_matmul, DTYPE, plan=plan)
    dense = lin.dequantized().double().cpu()
    x = torch.randn(5, k, generator=gen).to(DTYPE)
    ref = x.double() @ dense.t()
    cfg = GemvConfig(32, 128, 4, 2)
    plan.configs = {(lin.packed.tag, n, k, False, 3): cfg}
    for rows, path in [(3, ["gemv"]), (5, [])]:
        calls.clear()
        out = lin(x[:rows].to(DEVICE))
        assert calls == path and relative_error(out.cpu(), ref[:rows]) < TOL, rows

    lin.interleave_gate_up(triton_swiglu.interleave_gate_up)
    assert torch.equal(lin.dequantized().double().cpu(), triton_swiglu.interleave_gate_up(dense))
    act = GateUpAct(triton_swiglu, torch_ops.silu_mul, plan)
    gated = ref[:, n // 2:] * F.silu(ref[:, : n // 2])
    plan.configs = {(lin.packed.tag, n, k, False, 3): cfg}
    for rows, path in [(3, ["gemv"]), (5, [])]:
        calls.clear()
        out = act(x[:rows].to(DEVICE), lin)
        assert calls == path and relative_error(out.cpu(), gated[:rows]) < TOL, rows
