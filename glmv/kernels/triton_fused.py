"""Triton kernels that fuse the decoder layer's small elementwise steps: RMSNorms, residual adds, SiLU-gating, rotary.

Why: at decode batch sizes these tensors are a few KB to a few MB, so eager PyTorch's cost is the number of kernels,
not bytes. GLM-4's layer runs four RMSNorms (about eight kernels each in eager PyTorch), two residual adds, a chunk +
SiLU + multiply, and a rotary of q and k (a dozen kernels) before the KV write: hundreds of launches per step over 40
layers, each ~2 us even inside a CUDA graph. Each function here is one launch.

Every function rounds where eager PyTorch rounds (products and sums in float32, results cast to the input dtype at the
same points as glmv/models' torch code), so bf16 outputs match the torch path to the last bit or nearly so:

    rms_norm(x, w, eps)                          == w * (x.float() * rsqrt(mean(x.float()**2) + eps)).to(x.dtype)
    residual_rms_norm(x, res, w_post, w_next, eps) == (h := res + rms_norm(x, w_post, eps), rms_norm(h, w_next, eps))
    silu_mul(gate_up)                            == up * silu(gate), with gate, up = gate_up.chunk(2, dim=-1)
    rotary_write_kv(q, k, v, cos, sin, k_cache, v_cache, slot_mapping) -> q rotated; k rotated and v stored at slots
        (GLM's interleaved partial rotary: pair (2j, 2j+1) of the first 2*cos.shape[-1] dims turns by angle j)
    mrope_cos_sin(positions, cos_table, sin_table, row_of_freq, dtype)
        == (cos_table[positions[row_of_freq].t(), j].to(dtype), the same for sin), j = arange(len(row_of_freq))
    decode_step_inputs(ids, src, prev, table, lens) == (table[where(src >= 0, prev[src], ids)], lens.int())
        (the decode graph's inputs: a row whose token the previous step sampled on the device reads it there)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glmv.kernels.pdl import launch_options, pdl_start


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _row_warps(block: int) -> int:
    return max(1, min(16, block // 512))


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as [rows, hidden] with a contiguous last dim (a view when possible)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


@triton.jit
def _rms_scale(h, w, eps, HIDDEN: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """weight * (h * rstd).to(dtype), rounded as eager PyTorch rounds (h float32, masked lanes zero)."""
    var = tl.sum(h * h, axis=0) / HIDDEN
    normed = (h * tl.rsqrt(var + eps)).to(OUT_DTYPE).to(tl.float32)
    return (normed * w).to(OUT_DTYPE)


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, stride_x, stride_o, eps, HIDDEN: tl.constexpr, BLOCK: tl.constexpr,
                     USE_PDL: tl.constexpr):
    pdl_start(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < HIDDEN
    h = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    out = _rms_scale(h, w, eps, HIDDEN, out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * stride_o + offs, out, mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim in one launch (see the module docstring for the exact rounding)."""
    rows = _rows(x)
    hidden = rows.shape[-1]
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    if rows.shape[0]:
        block = _next_pow2(hidden)
        _rms_norm_kernel[(rows.shape[0],)](
            rows, weight, out, rows.stride(0), out.stride(0), eps, HIDDEN=hidden, BLOCK=block,
            num_warps=_row_warps(block), **launch_options(),
        )  # fmt: skip
    return out.view(x.shape)


@triton.jit
def _add_rms_norm_kernel(
    x_ptr, res_ptr, w_post_ptr, w_next_ptr, hidden_ptr, normed_ptr,
    stride_x, stride_r, stride_h, stride_n, eps,
    HIDDEN: tl.constexpr, BLOCK: tl.constexpr, POST_NORM: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """hidden = res + (rms_norm(x, w_post) if POST_NORM else x), rounded to the output dtype; normed =
    rms_norm(hidden, w_next). Both sums round where eager PyTorch rounds them."""
    pdl_start(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < HIDDEN
    dtype = hidden_ptr.dtype.element_ty
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    if POST_NORM:
        w_post = tl.load(w_post_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = _rms_scale(x, w_post, eps, HIDDEN, dtype).to(tl.float32)
    res = tl.load(res_ptr + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)
    hidden = (res + x).to(dtype)
    tl.store(hidden_ptr + row * stride_h + offs, hidden, mask=mask)
    w_next = tl.load(w_next_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    normed = _rms_scale(hidden.to(tl.float32), w_next, eps, HIDDEN, dtype)
    tl.store(normed_ptr + row * stride_n + offs, normed, mask=mask)


def _add_then_norm(x: torch.Tensor, residual: torch.Tensor, post_weight: torch.Tensor | None,
                   next_weight: torch.Tensor, eps: float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One launch of `_add_rms_norm_kernel` over x's rows (post_weight None: x is added as it is); the outputs take
    `like`'s dtype and shape."""
    xs, rs = _rows(x), _rows(residual)
    hidden_size = xs.shape[-1]
    hidden = torch.empty(xs.shape, dtype=like.dtype, device=x.device)
    normed = torch.empty_like(hidden)
    if xs.shape[0]:
        block = _next_pow2(hidden_size)
        _add_rms_norm_kernel[(xs.shape[0],)](
            xs, rs, post_weight if post_weight is not None else next_weight, next_weight, hidden, normed,
            xs.stride(0), rs.stride(0), hidden.stride(0), normed.stride(0), eps,
            HIDDEN=hidden_size, BLOCK=block, POST_NORM=post_weight is not None, num_warps=_row_warps(block),
            **launch_options(),
        )  # fmt: skip
    return hidden.view(like.shape), normed.view(like.shape)


def residual_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, post_weight: torch.Tensor, next_weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GLM-4's sub-layer exit and the next entry in one launch: returns (hidden, normed) where
    hidden = residual + rms_norm(x, post_weight) and normed = rms_norm(hidden, next_weight)."""
    return _add_then_norm(x, residual, post_weight, next_weight, eps, like=x)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """A pre-norm block's residual add and the next norm in one launch (the vision tower's blocks): returns
    (h, rms_norm(h, weight)) with h = x + delta rounded to x's dtype first, as eager PyTorch rounds it."""
    return _add_then_norm(delta, x, None, weight, eps, like=x)


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, stride_gu, stride_o, INTER: tl.constexpr, BLOCK: tl.constexpr,
                     USE_PDL: tl.constexpr):
    pdl_start(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < INTER
    dtype = out_ptr.dtype.element_ty
    g = tl.load(gu_ptr + row * stride_gu + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * stride_gu + INTER + offs, mask=mask, other=0.0).to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (u * act).to(dtype), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """up * silu(gate) for gate_up = [..., 2 * inter] (gate first, as `chunk(2, dim=-1)` splits it)."""
    rows = _rows(gate_up)
    inter = rows.shape[-1] // 2
    out = torch.empty((*gate_up.shape[:-1], inter), dtype=gate_up.dtype, device=gate_up.device)
    if rows.shape[0]:
        block = min(1024, _next_pow2(inter))
        _silu_mul_kernel[(rows.shape[0], triton.cdiv(inter, block))](
            rows, out.view(-1, inter), rows.stride(0), inter, INTER=inter, BLOCK=block, num_warps=4, **launch_options()
        )
    return out


@triton.jit
def _rotate_rows(base, stride_h, cos, sin, offs_h, offs_d, mask, ROWS: tl.constexpr, DIM: tl.constexpr,
                 ROUND: tl.constexpr, DTYPE: tl.constexpr):  # fmt: skip
    """Load rows [ROWS, DIM] with whole-row (vectorized) loads, rotate each (even, odd) dim pair by its angle, and
    return the rows re-interleaved, rounded like eager torch (each product, then each sum, to the tensor dtype)."""
    x = tl.load(base + offs_h[:, None] * stride_h + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    x1, x2 = tl.split(tl.reshape(x, (ROWS, DIM // 2, 2)))
    if ROUND:
        a = (x1 * cos).to(DTYPE).to(tl.float32) - (x2 * sin).to(DTYPE).to(tl.float32)
        b = (x2 * cos).to(DTYPE).to(tl.float32) + (x1 * sin).to(DTYPE).to(tl.float32)
    else:
        a = x1 * cos - x2 * sin
        b = x2 * cos + x1 * sin
    return tl.reshape(tl.join(a, b), (ROWS, DIM)).to(DTYPE)


@triton.jit
def _rotary_write_kv_kernel(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, k_out_ptr, v_out_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ct, stride_st,
    stride_ot, stride_oh, stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
    stride_kot, stride_koh, stride_vot, stride_voh,
    HEADS: tl.constexpr, HEADS_PAD: tl.constexpr, KV_HEADS: tl.constexpr, KV_HEADS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, ROT_PAIRS: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    ROUND: tl.constexpr, K_OUT: tl.constexpr, V_OUT: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    pdl_start(USE_PDL)
    token = tl.program_id(0).to(tl.int64)
    dtype = q_out_ptr.dtype.element_ty
    offs_p = tl.arange(0, HEAD_DIM_PAD // 2)
    turns = offs_p < ROT_PAIRS  # pairs past the rotary part pass through (cos 1, sin 0 leave them exact)
    cos = tl.load(cos_ptr + token * stride_ct + offs_p, mask=turns, other=1.0).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + token * stride_st + offs_p, mask=turns, other=0.0).to(tl.float32)[None, :]
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = offs_d < HEAD_DIM

    offs_h = tl.arange(0, HEADS_PAD)
    mask = (offs_h[:, None] < HEADS) & d_ok[None, :]
    q = _rotate_rows(q_ptr + token * stride_qt, stride_qh, cos, sin, offs_h, offs_d, mask, HEADS_PAD, HEAD_DIM_PAD,
                     ROUND, dtype)  # fmt: skip
    tl.store(q_out_ptr + token * stride_ot + offs_h[:, None] * stride_oh + offs_d[None, :], q, mask=mask)

    slot = tl.load(slot_ptr + token).to(tl.int64)
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    offs_kh = tl.arange(0, KV_HEADS_PAD)
    head_mask = (offs_kh[:, None] < KV_HEADS) & d_ok[None, :]
    kv_mask = head_mask & (slot >= 0)
    k = _rotate_rows(k_ptr + token * stride_kt, stride_kh, cos, sin, offs_kh, offs_d, head_mask if K_OUT else kv_mask,
                     KV_HEADS_PAD, HEAD_DIM_PAD, ROUND, dtype)  # fmt: skip
    dst = k_cache_ptr + block * stride_kcb + offset * stride_kcs + offs_kh[:, None] * stride_kch + offs_d[None, :]
    tl.store(dst, k, mask=kv_mask)
    if K_OUT:  # rotated k also as a dense tensor (for attention over the chunk's own keys), whatever the slot
        tl.store(k_out_ptr + token * stride_kot + offs_kh[:, None] * stride_koh + offs_d[None, :], k, mask=head_mask)
    v = tl.load(v_ptr + token * stride_vt + offs_kh[:, None] * stride_vh + offs_d[None, :],
                mask=head_mask if K_OUT else kv_mask)  # fmt: skip
    dst = v_cache_ptr + block * stride_vcb + offset * stride_vcs + offs_kh[:, None] * stride_vch + offs_d[None, :]
    tl.store(dst, v, mask=kv_mask)
    if V_OUT:  # and v as a dense tensor next to it
        tl.store(v_out_ptr + token * stride_vot + offs_kh[:, None] * stride_voh + offs_d[None, :], v, mask=head_mask)


def rotary_write_kv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_out: torch.Tensor | None = None,
    v_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotate q and k (GLM's interleaved partial rotary), store rotated k and v at their slots, return rotated q.

    q [T, heads, head_dim], k/v [T, kv_heads, head_dim] (strided views of a fused qkv output are fine);
    cos/sin [T, rotary_dim/2] in q's dtype; negative slots store nothing. Returns a new contiguous q.
    k_out [T, kv_heads, head_dim] (last dim contiguous), when given, also receives the rotated k: a fresh prompt
    chunk can then attend over its own keys densely (SDPA) instead of reading them back from the pages.
    v_out (only with k_out; same shape rules) receives v, contiguous: the dense attention then needs no copy of it.
    """
    tokens, heads, head_dim = q.shape
    kv_heads = k.shape[1]
    if head_dim % 2 or q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("rotary_write_kv needs an even head_dim and q, k, v with a contiguous last dim")
    if cos.stride(-1) != 1 or sin.stride(-1) != 1:
        cos, sin = cos.contiguous(), sin.contiguous()
    q_out = torch.empty((tokens, heads, head_dim), dtype=q.dtype, device=q.device)
    if tokens == 0:
        return q_out
    for name, dense in (("k_out", k_out), ("v_out", v_out)):
        if dense is not None and (dense.shape != k.shape or dense.stride(-1) != 1 or dense.dtype != k.dtype):
            raise ValueError(f"rotary_write_kv: {name} must have k's shape and dtype and a contiguous last dim")
    if v_out is not None and k_out is None:
        raise ValueError("rotary_write_kv: v_out is written only together with k_out")
    k_dst = k_out if k_out is not None else q_out  # a placeholder pointer when K_OUT is off (never written)
    v_dst = v_out if v_out is not None else q_out  # likewise
    _rotary_write_kv_kernel[(tokens,)](
        q, k, v, cos, sin, q_out, k_cache, v_cache, slot_mapping, k_dst, v_dst,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos.stride(0), sin.stride(0),
        q_out.stride(0), q_out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        k_dst.stride(0), k_dst.stride(1), v_dst.stride(0), v_dst.stride(1),
        HEADS=heads, HEADS_PAD=_next_pow2(heads), KV_HEADS=kv_heads, KV_HEADS_PAD=_next_pow2(kv_heads),
        HEAD_DIM=head_dim, HEAD_DIM_PAD=_next_pow2(head_dim), ROT_PAIRS=cos.shape[-1], BLOCK_SIZE=k_cache.shape[1],
        ROUND=q.dtype != torch.float32, K_OUT=k_out is not None, V_OUT=v_out is not None,
        num_warps=4 if heads * head_dim >= 2048 else 1, **launch_options(),
    )  # fmt: skip
    return q_out


@triton.jit
def _rotary_half_kernel(
    x_ptr, cos_ptr, sin_ptr, out_ptr,
    stride_xt, stride_xh, stride_ct, stride_st, stride_ot, stride_oh,
    HEADS: tl.constexpr, HEADS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    pdl_start(USE_PDL)
    token = tl.program_id(0).to(tl.int64)
    half: tl.constexpr = HEAD_DIM // 2
    offs_h = tl.arange(0, HEADS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    mask = (offs_h[:, None] < HEADS) & (offs_d[None, :] < HEAD_DIM)
    row = x_ptr + token * stride_xt + offs_h[:, None] * stride_xh
    x = tl.load(row + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    # rotate_half: [-x[half:], x[:half]]
    partner = tl.where(offs_d < half, offs_d + half, offs_d - half)
    sign = tl.where(offs_d < half, -1.0, 1.0)
    xr = tl.load(row + partner[None, :], mask=mask, other=0.0).to(tl.float32) * sign[None, :]
    cos = tl.load(cos_ptr + token * stride_ct + offs_d).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + token * stride_st + offs_d).to(tl.float32)[None, :]
    out = x * cos + xr * sin
    tl.store(out_ptr + token * stride_ot + offs_h[:, None] * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask)


def rotary_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The vision tower's rotary in one launch: (x.float() * cos + rotate_half(x.float()) * sin).to(x.dtype), with
    rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2]) over the whole head.

    x [T, heads, head_dim] (a strided view of a fused qkv output is fine; last dim contiguous, head_dim a power of 2);
    cos/sin [T, head_dim] float32 (row-strided views are fine). Returns a new contiguous tensor in x's dtype.
    """
    tokens, heads, head_dim = x.shape
    if head_dim & (head_dim - 1) or x.stride(-1) != 1 or cos.stride(-1) != 1 or sin.stride(-1) != 1:
        raise ValueError("rotary_half needs a power-of-two head_dim and x, cos, sin with a contiguous last dim")
    out = torch.empty((tokens, heads, head_dim), dtype=x.dtype, device=x.device)
    if tokens:
        _rotary_half_kernel[(tokens,)](
            x, cos, sin, out, x.stride(0), x.stride(1), cos.stride(0), sin.stride(0), out.stride(0), out.stride(1),
            HEADS=heads, HEADS_PAD=_next_pow2(heads), HEAD_DIM=head_dim, num_warps=4 if heads * head_dim >= 1024 else 1,
            **launch_options(),
        )  # fmt: skip
    return out



@triton.jit
def _rotate_half_heads(src, stride_h, dst, stride_dh, cos, sin, offs_h, offs_d, mask, HALF: tl.constexpr):
    """dst[h] = src[h] * cos + rotate_half(src[h]) * sin for every head h of one token (float32 math)."""
    x = tl.load(src + offs_h[:, None] * stride_h + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    partner = tl.where(offs_d < HALF, offs_d + HALF, offs_d - HALF)
    sign = tl.where(offs_d < HALF, -1.0, 1.0)
    xr = tl.load(src + offs_h[:, None] * stride_h + partner[None, :], mask=mask, other=0.0).to(tl.float32)
    out = x * cos + (xr * sign[None, :]) * sin
    tl.store(dst + offs_h[:, None] * stride_dh + offs_d[None, :], out.to(dst.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_half_pair_kernel(
    q_ptr, k_ptr, cos_ptr, sin_ptr, out_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_ct, stride_st, tokens,
    HEADS: tl.constexpr, HEADS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    pdl_start(USE_PDL)
    token = tl.program_id(0).to(tl.int64)
    offs_h = tl.arange(0, HEADS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    mask = (offs_h[:, None] < HEADS) & (offs_d[None, :] < HEAD_DIM)
    cos = tl.load(cos_ptr + token * stride_ct + offs_d).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + token * stride_st + offs_d).to(tl.float32)[None, :]
    row = HEADS * HEAD_DIM
    _rotate_half_heads(q_ptr + token * stride_qt, stride_qh, out_ptr + token * row, HEAD_DIM, cos, sin, offs_h,
                       offs_d, mask, HEAD_DIM // 2)  # fmt: skip
    _rotate_half_heads(k_ptr + token * stride_kt, stride_kh, out_ptr + (tokens + token) * row, HEAD_DIM, cos, sin,
                       offs_h, offs_d, mask, HEAD_DIM // 2)  # fmt: skip


def rotary_half_pair(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """`rotary_half` of q and of k ([T, heads, head_dim] each, same rules) in one launch: returns two contiguous
    tensors, as rotary_half(q, cos, sin), rotary_half(k, cos, sin) would, bit for bit."""
    tokens, heads, head_dim = q.shape
    if k.shape != q.shape or k.dtype != q.dtype:
        raise ValueError("rotary_half_pair: q and k must have one shape and dtype")
    if head_dim & (head_dim - 1) or q.stride(-1) != 1 or k.stride(-1) != 1 or cos.stride(-1) != 1 \
            or sin.stride(-1) != 1:
        raise ValueError("rotary_half_pair needs a power-of-two head_dim and q, k, cos, sin with a contiguous last dim")
    out = torch.empty((2, tokens, heads, head_dim), dtype=q.dtype, device=q.device)
    if tokens:
        _rotary_half_pair_kernel[(tokens,)](
            q, k, cos, sin, out, q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), sin.stride(0),
            tokens, HEADS=heads, HEADS_PAD=_next_pow2(heads), HEAD_DIM=head_dim,
            num_warps=4 if heads * head_dim >= 1024 else 1, **launch_options(),
        )  # fmt: skip
    return out[0], out[1]


@triton.jit
def _decode_step_inputs_kernel(ids_ptr, src_ptr, prev_ptr, table_ptr, lens_ptr, out_ptr, lens_out_ptr, stride_t,
                               stride_o, HIDDEN: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_start(USE_PDL)
    row = tl.program_id(0)
    src = tl.load(src_ptr + row)
    token = tl.load(ids_ptr + row)
    if src >= 0:
        token = tl.load(prev_ptr + src)
    offs = tl.arange(0, BLOCK)
    mask = offs < HIDDEN
    emb = tl.load(table_ptr + token.to(tl.int64) * stride_t + offs, mask=mask)
    tl.store(out_ptr + row.to(tl.int64) * stride_o + offs, emb, mask=mask)
    tl.store(lens_out_ptr + row, tl.load(lens_ptr + row).to(tl.int32))


def decode_step_inputs(ids: torch.Tensor, src: torch.Tensor, prev: torch.Tensor, table: torch.Tensor,
                       lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One launch for what a decode step's graph does first (in eager PyTorch a where, a clamp, two gathers and a
    cast): each row's token is prev[src] where src >= 0 (sampled by the step before, still on the device), else its
    id; returns (the tokens' embeddings [rows, hidden] in table's dtype, lens as int32). ids, src, lens: int64 [rows];
    prev: int64; table: [vocab, hidden] with a contiguous last dim."""
    rows, hidden = ids.shape[0], table.shape[1]
    out = torch.empty(rows, hidden, dtype=table.dtype, device=table.device)
    lens32 = torch.empty(rows, dtype=torch.int32, device=table.device)
    if rows:
        block = _next_pow2(hidden)
        _decode_step_inputs_kernel[(rows,)](
            ids, src, prev, table, lens, out, lens32, table.stride(0), out.stride(0), HIDDEN=hidden, BLOCK=block,
            num_warps=_row_warps(block), **launch_options(),
        )  # fmt: skip
    return out, lens32


@triton.jit
def _mrope_cos_sin_kernel(pos_ptr, cos_tab_ptr, sin_tab_ptr, row_ptr, cos_ptr, sin_ptr, stride_p, stride_tab,
                          HALF: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_start(USE_PDL)
    token = tl.program_id(0)
    j = tl.arange(0, BLOCK)
    mask = j < HALF
    which = tl.load(row_ptr + j, mask=mask, other=0)  # the t, h or w position row of each frequency
    pos = tl.load(pos_ptr + which * stride_p + token, mask=mask, other=0)
    at = pos * stride_tab + j
    tl.store(cos_ptr + token * HALF + j, tl.load(cos_tab_ptr + at, mask=mask).to(cos_ptr.dtype.element_ty), mask=mask)
    tl.store(sin_ptr + token * HALF + j, tl.load(sin_tab_ptr + at, mask=mask).to(sin_ptr.dtype.element_ty), mask=mask)


def mrope_cos_sin(positions: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor,
                  row_of_freq: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE angles in one launch (eager PyTorch: a gather, two 2-D gathers, two casts): positions int64 [3, T] (last
    dim contiguous), tables float32 [max_pos, rot/2], row_of_freq int64 [rot/2] -> cos, sin [T, rot/2] in dtype."""
    tokens, half = positions.shape[1], cos_table.shape[1]
    cos = torch.empty(tokens, half, dtype=dtype, device=positions.device)
    sin = torch.empty(tokens, half, dtype=dtype, device=positions.device)
    if tokens:
        _mrope_cos_sin_kernel[(tokens,)](
            positions, cos_table, sin_table, row_of_freq, cos, sin, positions.stride(0), cos_table.stride(0),
            HALF=half, BLOCK=max(16, _next_pow2(half)), num_warps=1, **launch_options(),
        )  # fmt: skip
    return cos, sin
