"""glmv's CPU kernels (glmv/cpu) against the PyTorch steps they replace, on random inputs of several shapes.

The fused steps round where eager PyTorch rounds, so they match it in bfloat16 to the last bit but for rare one-ulp
flips (a sum of squares added in another order, exp by polynomial rather than libm's). Decode attention
keeps float32 throughout (the torch path rounds scores and probabilities to bf16), so it is held to a float32
reference instead, and must be closer to it than the torch bf16 path is. Packed oneDNN weights must give exactly
F.linear's result.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from glmv.cpu import build, ops
from glmv.cpu import linear as cpu_linear
from glmv.layers import attention as ref
from glmv.layers.torch_ops import apply_rotary, rms_norm

BF16 = torch.bfloat16

pytestmark = pytest.mark.skipif(not ops.available(), reason=f"no C compiler here: {build.load_error()}")


def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape) * scale).to(BF16)


def assert_bf16_equal_but_rare_ulps(got: torch.Tensor, expected: torch.Tensor) -> None:
    ulps = (got.view(torch.int16).int() - expected.view(torch.int16).int()).abs()
    assert int(ulps.max()) <= 1 and float((ulps > 0).float().mean()) < 0.01, (int(ulps.max()), ulps.float().mean())


def rel_err(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x.float() - reference.float()).norm() / reference.float().norm())


@pytest.mark.parametrize("rows", [1, 7, 64])
@pytest.mark.parametrize("hidden", [128, 1024])
def test_norms_match_torch(rows, hidden):
    torch.manual_seed(rows * hidden)
    x, res, w_post, w_next = rand(rows, hidden, scale=3), rand(rows, hidden), rand(hidden), rand(hidden)
    assert_bf16_equal_but_rare_ulps(ops.rms_norm(x, w_post, 1e-5), rms_norm(x, w_post, 1e-5))
    hidden_out, normed = ops.residual_rms_norm(x, res, w_post, w_next, 1e-5)
    expected_hidden = res + rms_norm(x, w_post, 1e-5)
    assert_bf16_equal_but_rare_ulps(hidden_out, expected_hidden)
    assert_bf16_equal_but_rare_ulps(normed, rms_norm(hidden_out, w_next, 1e-5))


@pytest.mark.parametrize("rows", [1, 5, 300])
def test_silu_mul_matches_torch(rows):
    torch.manual_seed(rows)
    gate_up = rand(rows, 2 * 704, scale=4)
    gate, up = gate_up.chunk(2, dim=-1)
    expected = up * F.silu(gate)
    assert_bf16_equal_but_rare_ulps(ops.silu_mul(gate_up), expected)


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(16, 2, 64), (4, 2, 32), (32, 2, 128)])
def test_rotary_write_kv_matches_torch(heads, kv_heads, dim):
    torch.manual_seed(dim)
    tokens, pairs, blocks, block_size = 6, dim // 4, 8, 16
    qkv = rand(tokens, (heads + 2 * kv_heads) * dim)
    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    q, k, v = q.view(tokens, heads, dim), k.view(tokens, kv_heads, dim), v.view(tokens, kv_heads, dim)
    cos, sin = rand(tokens, pairs), rand(tokens, pairs)
    k_cache = torch.zeros(blocks, block_size, kv_heads, dim, dtype=BF16)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.tensor([17, 18, 40, 3, 100, -1])  # the last token stores nothing
    k_out, v_out = torch.empty(tokens, kv_heads, dim, dtype=BF16), torch.empty(tokens, kv_heads, dim, dtype=BF16)
    q_rot = ops.rotary_write_kv(q, k, v, cos, sin, k_cache, v_cache, slots, k_out=k_out, v_out=v_out)

    k_expected = apply_rotary(k, cos, sin)
    assert torch.equal(q_rot, apply_rotary(q, cos, sin))
    assert torch.equal(k_out, k_expected) and torch.equal(v_out, v)
    k_ref, v_ref = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    ref.write_kv(k_expected[:-1], v[:-1], k_ref, v_ref, slots[:-1])
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


@pytest.mark.parametrize("strided_q", [False, True])  # True: heads not back to back, the float (non-BF16-dot) path
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(16, 2, 64), (32, 2, 128), (4, 2, 32), (12, 4, 64)])
def test_decode_attention_is_closer_to_float32_than_torch_bf16(heads, kv_heads, dim, strided_q):
    torch.manual_seed(heads + dim)
    block_size, num_blocks = 16, 80
    lens = torch.tensor([1, 16, 17, 200, 33, 64], dtype=torch.int32)
    k_cache, v_cache = rand(num_blocks, block_size, kv_heads, dim), rand(num_blocks, block_size, kv_heads, dim)
    tables = torch.zeros(len(lens), 13, dtype=torch.int32)
    free = (torch.randperm(num_blocks - 1) + 1).tolist()  # scattered blocks, never the null block 0
    for b, n in enumerate(lens.tolist()):
        used = -(-n // block_size)
        tables[b, :used] = torch.tensor(free[:used])
        free = free[used:]
    q = rand(len(lens), heads, 2 * dim, scale=2)[:, :, :dim] if strided_q else rand(len(lens), heads, dim, scale=2)
    got = ops.paged_decode_attention(q, k_cache, v_cache, tables, lens, dim**-0.5)
    exact = ref.paged_decode_attention(q.float(), k_cache.float(), v_cache.float(), tables, lens, dim**-0.5)
    torch_bf16 = ref.paged_decode_attention(q, k_cache, v_cache, tables, lens, dim**-0.5)
    assert got.dtype == BF16 and got.shape == q.shape
    assert rel_err(got, exact) < 4e-3
    assert rel_err(got, exact) <= rel_err(torch_bf16, exact)
    # one token of context: the output is that token's value row, exactly
    assert torch.equal(got[0], v_cache[tables[0, 0]][0].repeat_interleave(heads // kv_heads, dim=0))


def test_decode_attention_survives_scores_far_below_the_maximum():
    """A key far more aligned with the query than the rest: every other probability underflows (to 0, not NaN)."""
    heads, kv_heads, dim, block_size = 8, 1, 64, 16
    k_cache = torch.zeros(3, block_size, kv_heads, dim, dtype=BF16)
    v_cache = rand(3, block_size, kv_heads, dim)
    q = torch.full((1, heads, dim), 4.0, dtype=BF16)
    k_cache[1, 5] = 8.0  # score 8*4*64/8 = 256 above every other key's 0
    tables = torch.tensor([[1, 2]], dtype=torch.int32)
    out = ops.paged_decode_attention(q, k_cache, v_cache, tables, torch.tensor([20], dtype=torch.int32), dim**-0.5)
    assert torch.isfinite(out.float()).all()
    assert torch.equal(out[0], v_cache[1, 5].expand(heads, dim))


def test_wrong_dtype_is_refused():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="bfloat16"):
        ops.rms_norm(x, torch.ones(8), 1e-5)


@pytest.mark.skipif(not cpu_linear.packing_supported(torch.device("cpu"), BF16), reason="no oneDNN bf16 here")
@pytest.mark.parametrize("rows", [1, 3, 32, 257])
def test_packed_linear_equals_f_linear(rows):
    torch.manual_seed(rows)
    weight, bias, x = rand(96, 64), rand(96), rand(rows, 64)
    packed = cpu_linear.pack_weight(weight)
    assert packed.is_mkldnn
    assert torch.equal(cpu_linear.linear(x, packed, bias), F.linear(x, weight, bias))
    assert torch.equal(cpu_linear.linear(x, packed), F.linear(x, weight))
    strided = rand(rows, 128)[:, ::2]  # a non-contiguous input
    assert torch.equal(cpu_linear.linear(strided, packed), F.linear(strided, weight))


def test_loading_the_kernels_keeps_subnormal_floats():
    """The library is compiled with fast-math but must not switch the process to flush-to-zero when it loads
    (linking with -ffast-math would: it broke hypothesis' float strategies in the server tests)."""
    import numpy as np

    assert build.load() is not None
    tiny = np.float32(1e-40)  # a float32 subnormal
    assert tiny * np.float32(1.0) > 0
    assert float(torch.tensor([1e-40], dtype=torch.float32).mul(1.0)[0]) > 0
