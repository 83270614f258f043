"""Fused layer kernels (RMSNorm, residual + two norms, SiLU-gating, rotary + KV write) against eager PyTorch.

GPU tests, like test_triton_attention.py: CUDA, or the CPU through `TRITON_INTERPRET=1`; skipped elsewhere. The
references restate glmv/models' torch steps; bf16 results must agree to within one bf16 rounding step.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.gpu.where import DEVICE, GPU_TEST_MARKS, ON_GPU
from tests.gpu.where import TRITON as kernels

pytestmark = GPU_TEST_MARKS
DTYPES = [torch.bfloat16, torch.float16] if ON_GPU else [torch.float32, torch.bfloat16]
# One rounding step of the output dtype (products and sums may land on the other side of a rounding boundary).
RTOL = {torch.bfloat16: 2**-7, torch.float16: 2**-10, torch.float32: 1e-5}
if kernels.interpreting():
    RTOL[torch.bfloat16] = 2**-5  # Triton's interpreter casts to bf16 by truncation, not round-to-nearest (seen, 3.8)

if kernels.interpreting():
    torch.set_num_threads(1)


def ref_rms_norm(x, weight, eps):
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def ref_rotary(x, cos, sin):
    rot = cos.shape[-1] * 2
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    return torch.cat((torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2), x_pass), dim=-1)


def rotary_magnitude(x, cos, sin):
    """|x1 c| + |x2 s| per output: the size of the terms a rotated value is summed from (its rounding scale)."""
    rot = cos.shape[-1] * 2
    x = x.float().abs()
    x1, x2 = x[..., :rot][..., 0::2], x[..., :rot][..., 1::2]
    c, s = cos.float().abs().unsqueeze(1), sin.float().abs().unsqueeze(1)
    return torch.cat((torch.stack((x1 * c + x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2), x[..., rot:]), dim=-1)


def assert_close_to_scale(out, ref, scale, dtype):
    """|out - ref| within one rounding step of the terms summed (a sum that cancels keeps their absolute error)."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    err = (out.float() - ref.float()).abs().cpu()
    bound = RTOL[dtype] * scale.float().cpu() + 1e-6
    assert (err <= bound).all(), f"{int((err > bound).sum())} elements off; worst excess {(err - bound).max():.3g}"


def rand(*shape, dtype, gen, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(DEVICE)


def assert_close(out, ref, dtype, steps=1):
    """Within `steps` rounding steps of the output dtype (a chain of roundings may flip each one)."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    rtol = steps * RTOL[dtype]
    torch.testing.assert_close(out.cpu(), ref.cpu(), rtol=rtol, atol=rtol * 1e-2)


HIDDEN_SIZES = [128, 1536, 4096] if ON_GPU else [128, 96]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN_SIZES)
def test_rms_norm_matches_torch(hidden, dtype):
    gen = torch.Generator().manual_seed(hidden)
    x = rand(3, 5, hidden, dtype=dtype, gen=gen, scale=3.0)
    w = rand(hidden, dtype=dtype, gen=gen)
    out = kernels.rms_norm(x, w, 1e-5)
    assert_close(out, ref_rms_norm(x, w, 1e-5), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN_SIZES)
def test_residual_rms_norm_matches_the_glm_layer_exit(hidden, dtype):
    gen = torch.Generator().manual_seed(hidden + 1)
    x = rand(7, hidden, dtype=dtype, gen=gen, scale=2.0)
    residual = rand(7, hidden, dtype=dtype, gen=gen, scale=5.0)
    w_post, w_next = rand(hidden, dtype=dtype, gen=gen), rand(hidden, dtype=dtype, gen=gen)
    hidden_out, normed = kernels.residual_rms_norm(x, residual, w_post, w_next, 1e-5)
    post = ref_rms_norm(x, w_post, 1e-5)
    assert_close_to_scale(hidden_out, residual + post, residual.abs().float() + post.abs().float(), dtype)
    # the second norm is checked on the kernel's own hidden, so a rounding flip in the first does not cascade
    assert_close(normed, ref_rms_norm(hidden_out, w_next, 1e-5), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter", [256, 13696] if ON_GPU else [256, 40])
def test_silu_mul_matches_chunk_silu_mul(inter, dtype):
    gen = torch.Generator().manual_seed(inter)
    gate_up = rand(6, 2 * inter, dtype=dtype, gen=gen, scale=3.0)
    gate, up = gate_up.chunk(2, dim=-1)
    # two roundings in a row (silu's, then the product's), and Triton's exp may differ from torch's by an ulp
    assert_close(kernels.silu_mul(gate_up), up * F.silu(gate), dtype, steps=2)


ROTARY_DIMS = [(4, 2, 32, 8), (3, 1, 48, 12)]  # heads, kv_heads, head_dim, rotary pairs (GLM: head_dim / 4)
if ON_GPU:
    ROTARY_DIMS.append((32, 2, 128, 32))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,head_dim,pairs", ROTARY_DIMS)
def test_rotary_write_kv_rotates_q_and_k_and_stores_k_and_v(heads, kv_heads, head_dim, pairs, dtype):
    gen = torch.Generator().manual_seed(head_dim)
    tokens, num_blocks, block_size = 11, 4, 16
    qkv = rand(tokens, (heads + 2 * kv_heads) * head_dim, dtype=dtype, gen=gen)
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q = q.view(tokens, heads, head_dim)  # strided views, as the model's fused projection gives them
    k = k.view(tokens, kv_heads, head_dim)
    v = v.view(tokens, kv_heads, head_dim)
    angles = torch.rand(tokens, pairs, generator=gen) * 100
    cos, sin = angles.cos().to(dtype).to(DEVICE), angles.sin().to(dtype).to(DEVICE)
    k_cache = rand(num_blocks, block_size, kv_heads, head_dim, dtype=dtype, gen=gen)
    v_cache = rand(num_blocks, block_size, kv_heads, head_dim, dtype=dtype, gen=gen)
    before_k, before_v = k_cache.clone(), v_cache.clone()
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens]
    slots[4] = -1  # a padding token: nothing stored

    k_out = torch.full((tokens, kv_heads, head_dim), float("nan"), dtype=dtype, device=DEVICE)
    v_out = torch.full((tokens, kv_heads, head_dim), float("nan"), dtype=dtype, device=DEVICE)
    q_rot = kernels.rotary_write_kv(q, k, v, cos, sin, k_cache, v_cache, slots.to(DEVICE), k_out=k_out, v_out=v_out)
    assert torch.equal(v_out, v)  # every token's v, dense (padding slots included)

    assert_close_to_scale(q_rot, ref_rotary(q, cos, sin), rotary_magnitude(q, cos, sin), dtype)
    # k_out holds every token's rotated k (padding slots included), as the cache holds it
    assert_close_to_scale(k_out, ref_rotary(k, cos, sin), rotary_magnitude(k, cos, sin), dtype)
    keep = slots >= 0
    exp_k = before_k.view(-1, kv_heads, head_dim).clone()
    exp_v = before_v.view(-1, kv_heads, head_dim).clone()
    exp_k[slots[keep].to(DEVICE)] = ref_rotary(k, cos, sin)[keep.to(DEVICE)]
    exp_v[slots[keep].to(DEVICE)] = v[keep.to(DEVICE)]
    written = slots[keep].to(DEVICE)
    assert_close_to_scale(k_cache.view(-1, kv_heads, head_dim)[written], exp_k[written],
                          rotary_magnitude(k, cos, sin)[keep.to(DEVICE)], dtype)  # fmt: skip
    assert torch.equal(v_cache.view(-1, kv_heads, head_dim), exp_v)
    untouched = torch.ones(num_blocks * block_size, dtype=torch.bool)
    untouched[slots[keep]] = False
    assert torch.equal(k_cache.view(-1, kv_heads, head_dim)[untouched.to(DEVICE)], exp_k[untouched.to(DEVICE)])
    assert torch.equal(k_cache.view(-1, kv_heads, head_dim)[written], k_out[keep.to(DEVICE)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,head_dim", [(2, 32), (3, 16)] + ([(12, 128)] if ON_GPU else []))
def test_rotary_half_matches_the_vision_towers_rotary(heads, head_dim, dtype):
    from glmv.layers import torch_ops as vision
    gen = torch.Generator().manual_seed(heads * head_dim)
    tokens = 9
    qkv = rand(tokens, 3, heads, head_dim, dtype=dtype, gen=gen)
    q = qkv.unbind(1)[0]  # a strided view, as the tower's fused projection gives it
    tables = (torch.rand(tokens, 3 * head_dim, generator=gen) * 50).to(DEVICE)
    angles = tables[:, head_dim:2 * head_dim]  # row-strided views, as the tower's table split gives them
    cos, sin = angles.cos(), angles.sin()
    cos_view = torch.cat([cos, sin], dim=-1)[:, :head_dim]
    sin_view = torch.cat([cos, sin], dim=-1)[:, head_dim:]
    qf = q.float()
    ref = (qf * cos.unsqueeze(1) + vision._rotate_half(qf) * sin.unsqueeze(1)).to(dtype)
    out = kernels.rotary_half(q, cos_view, sin_view)
    mag = (qf.abs() * cos.abs().unsqueeze(1) + vision._rotate_half(qf).abs() * sin.abs().unsqueeze(1))
    assert_close_to_scale(out, ref, mag, dtype)
    assert out.is_contiguous()


def test_models_torch_steps_are_what_the_kernels_fuse():
    """If glmv/models' torch functions change their math, these kernels must follow: compare against them."""
    from glmv.layers import torch_ops as glm4v
    from glmv.layers import torch_ops as vision
    gen = torch.Generator().manual_seed(3)
    dtype = DTYPES[0]
    x = rand(5, 128, dtype=dtype, gen=gen, scale=2.0)
    w = rand(128, dtype=dtype, gen=gen)
    assert_close(kernels.rms_norm(x, w, 1e-5), vision.rms_norm(x, w, 1e-5), dtype)
    q = rand(5, 4, 32, dtype=dtype, gen=gen)
    k = rand(5, 2, 32, dtype=dtype, gen=gen)
    angles = torch.rand(5, 8, generator=gen) * 10
    cos, sin = angles.cos().to(dtype).to(DEVICE), angles.sin().to(dtype).to(DEVICE)
    k_cache = torch.zeros(1, 16, 2, 32, dtype=dtype, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    q_rot = kernels.rotary_write_kv(q, k, k, cos, sin, k_cache, v_cache, torch.arange(5, device=DEVICE))
    assert_close_to_scale(q_rot, glm4v.apply_rotary(q, cos, sin), rotary_magnitude(q, cos, sin), dtype)
    assert_close_to_scale(k_cache[0, :5], glm4v.apply_rotary(k, cos, sin), rotary_magnitude(k, cos, sin), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN_SIZES)
def test_add_rms_norm_is_the_add_then_the_norm(hidden, dtype):
    """The vision tower's residual add and next norm: the sum rounded as torch rounds it, the norm of that sum."""
    gen = torch.Generator().manual_seed(hidden + 2)
    x = rand(9, hidden, dtype=dtype, gen=gen, scale=4.0)
    delta = rand(9, hidden, dtype=dtype, gen=gen, scale=2.0)
    w = rand(hidden, dtype=dtype, gen=gen)
    h, normed = kernels.add_rms_norm(x, delta, w, 1e-5)
    assert torch.equal(h, x + delta)
    assert torch.equal(normed, kernels.rms_norm(x + delta, w, 1e-5))
    assert_close(normed, ref_rms_norm(x + delta, w, 1e-5), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,head_dim", [(2, 32), (3, 16)] + ([(12, 128)] if ON_GPU else []))
def test_rotary_half_pair_equals_two_rotary_half_calls(heads, head_dim, dtype):
    gen = torch.Generator().manual_seed(heads * head_dim + 1)
    qkv = rand(13, 3, heads, head_dim, dtype=dtype, gen=gen)
    q, k, _ = qkv.unbind(1)
    tables = (torch.rand(13, 2 * head_dim, generator=gen) * 50).to(DEVICE)
    cos, sin = tables[:, :head_dim].cos(), tables[:, head_dim:].sin()
    q_rot, k_rot = kernels.rotary_half_pair(q, k, cos, sin)
    assert q_rot.is_contiguous() and k_rot.is_contiguous()
    assert torch.equal(q_rot, kernels.rotary_half(q, cos, sin))
    assert torch.equal(k_rot, kernels.rotary_half(k, cos, sin))


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_step_inputs_gathers_pending_tokens_and_embeds(dtype):
    gen = torch.Generator().manual_seed(21)
    vocab, hidden, rows = 50, 96, 6
    table = torch.randn(vocab, hidden, generator=gen).to(dtype).to(DEVICE)
    meta = torch.zeros(3, 8, dtype=torch.long)  # rows of one int64 buffer, as the runner keeps them
    meta[0, :rows] = torch.tensor([3, 0, 7, 0, 49, 0])  # ids (0 where the token is pending)
    meta[1, :rows] = torch.tensor([-1, 2, -1, 0, -1, 5])  # row of the previous step that sampled it, or -1
    meta[2, :rows] = torch.tensor([10, 11, 1, 700, 3, 2])  # sequence lengths
    meta = meta.to(DEVICE)
    prev = torch.tensor([11, 12, 13, 14, 15, 16, 17, 18], device=DEVICE)
    ids, src, lens = meta[0, :rows], meta[1, :rows], meta[2, :rows]
    embeds, lens32 = kernels.decode_step_inputs(ids, src, prev, table, lens)
    tokens = torch.where(src >= 0, prev[src.clamp(min=0)], ids)
    assert tokens.cpu().tolist() == [3, 13, 7, 11, 49, 16]
    assert torch.equal(embeds, table[tokens])
    assert lens32.dtype == torch.int32 and lens32.cpu().tolist() == [10, 11, 1, 700, 3, 2]


@pytest.mark.parametrize("dtype", DTYPES)
def test_mrope_cos_sin_is_the_rotary_tables_gather(dtype):
    """GLM-4.1V-9B's M-RoPE (head_dim 128, rotary 64 dims, sections 8/12/12) over image-like positions, and over
    positions that are one row broadcast (a prompt without pictures): the same values as the PyTorch gather."""
    from glmv.config import TextDims
    from glmv.layers import torch_ops
    from glmv.models.glm4v import MRotaryEmbedding

    dims = TextDims(hidden_size=4096, num_layers=1, num_heads=32, num_kv_heads=2, head_dim=128, intermediate_size=8,
                    vocab_size=8, rms_norm_eps=1e-5, rope_theta=10000.0, partial_rotary_factor=0.5,
                    mrope_section=(8, 12, 12), max_position_embeddings=4096)
    rope = MRotaryEmbedding(dims, 4096, torch.device(DEVICE))
    gen = torch.Generator().manual_seed(3)
    image_like = torch.randint(0, 4096, (3, 37), generator=gen).to(DEVICE)
    text_like = torch.arange(100, 140, device=DEVICE).expand(3, -1)
    for positions in (image_like, text_like):
        want = rope(positions, dtype, torch_ops.mrope_cos_sin)
        got = rope(positions, dtype, kernels.mrope_cos_sin)
        assert got[0].dtype == dtype
        if kernels.interpreting() and dtype == torch.bfloat16:  # the interpreter truncates to bf16 (see RTOL)
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w, rtol=RTOL[dtype], atol=0)
        else:
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
