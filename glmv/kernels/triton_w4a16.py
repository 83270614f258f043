"""Triton W4A16 / W8A16 matmul: out = x @ W.T (+ bias) with W stored as 4- or 8-bit integers, dequantized in
registers (the job Marlin/Machete do in vLLM).

Why: 4-bit weights quarter the bytes a decode step reads; the matmul is bound by those reads at decode batch sizes,
so the weight tile is unpacked, offset by its zero point and scaled inside the kernel, right before the tensor-core
dot, and never written back dequantized. Layout (made once at load by glmv.layers.quant.unpack.pack_k): int32
words [K*bits/32, N], value j of a word is input row word*(32/bits)+j; float32 scales and zero points [K/group, N].
Groups are runs of `group` consecutive input channels (act-ordered GPTQ weights are permuted to that at load, and
their activations gathered by the same permutation). One kernel serves decode (BLOCK_M 16, split-K partial sums
for few rows) and mid-sized batches (larger BLOCK_M); `MatmulTiles` picks the tiles.

Prompts (many rows) are bound by compute, not by the weight's bytes: there `dequantize` writes the weight out in
bf16 once per call (~0.13 ms for a 9B layer's gate/up on an H200) and cuBLAS multiplies it, which beats
dequantizing every tile once per row block by far.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glmv.kernels import split_k
from glmv.kernels.split_k import MatmulTiles, tile_start, tile_store


def default_config(rows: int, n: int, k: int, group: int) -> MatmulTiles:
    """Decode rows stream the weight with narrow N tiles and split K to fill the SMs; prefill rows use wide tiles."""
    block_k = min(group, 128)
    if rows <= 16:
        return MatmulTiles(16, 64, block_k, split_k=4 if k >= 4096 else 1)
    if rows <= 64:
        return MatmulTiles(64, 64, block_k, split_k=2 if k >= 8192 else 1)
    return MatmulTiles(128, 128, min(block_k, 64), num_warps=8, num_stages=3)


@triton.jit
def _int_matmul_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wk, stride_sg, stride_ys,
                       stride_ym, k_per_split,
                       BITS: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    PER: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    offs_m, offs_n, m_ok, n_ok, acc, k_start = tile_start(M, N, k_per_split, BLOCK_M, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(k_start, k_start + k_per_split, BLOCK_K):
        k = k0 + offs_k
        k_ok = k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        words = tl.load(w_ptr + (k // PER)[:, None] * stride_wk + offs_n[None, :], mask=k_ok[:, None] & n_ok[None, :],
                        other=0)
        q = (words >> ((k % PER) * BITS)[:, None]) & MASK
        g = k0 // GROUP  # BLOCK_K divides GROUP: one group per tile
        s = tl.load(s_ptr + g * stride_sg + offs_n, mask=n_ok, other=0.0)
        z = tl.load(z_ptr + g * stride_sg + offs_n, mask=n_ok, other=0.0)
        w = ((q.to(tl.float32) - z[None, :]) * s[None, :]).to(x.dtype)
        acc = tl.dot(x, w, acc)
    tile_store(acc, b_ptr, y_ptr, offs_m, offs_n, m_ok, n_ok, stride_ys, stride_ym, HAS_BIAS)


def int_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               bias: torch.Tensor | None, bits: int, group: int,
               config: MatmulTiles | None = None) -> torch.Tensor:
    """x [M, K] (bf16/fp16/fp32) @ the integer weight -> [M, N] in x's dtype. K must be a multiple of `group`."""
    m, k = x.shape
    n = qweight.shape[1]
    if k % group or qweight.shape[0] * (32 // bits) != k:
        raise ValueError(f"int_matmul: K={k} must be a multiple of the group {group} and match the packed weight")
    cfg = config or default_config(m, n, k, group)
    if group % cfg.block_k:
        raise ValueError(f"int_matmul: block_k {cfg.block_k} must divide the group {group}")
    splits, k_per_split = split_k.split(k, group, cfg.split_k)
    bias_arg = bias if bias is not None else scales
    y = split_k.output(x, n, splits)
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n), splits)
    _int_matmul_kernel[grid](
        x, qweight, scales, zeros, bias_arg if splits == 1 else scales, y, m, n, k, x.stride(0), qweight.stride(0),
        scales.stride(0), y.stride(0) if splits > 1 else 0, n, k_per_split,
        BITS=bits, GROUP=group, HAS_BIAS=bias is not None and splits == 1, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return split_k.finish(y, splits, bias, x.dtype)


@triton.jit
def values_minus_zero(words, z_biased, BITS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """A [BLOCK_K / (32 / BITS), BLOCK_N] tile of words -> the [BLOCK_K, BLOCK_N] float32 tile of value - zero, value
    j of word r at row r * (32 / BITS) + j; z_biased [BLOCK_N] is the zero point plus 2^23. Exponent trick: the bits
    of 2^23 + v read as a float are 2^23 + v, so subtracting z_biased gives v - z exactly (one OR and one subtract
    where an int-to-float conversion runs at a quarter of the rate)."""
    shifts = tl.arange(0, 32 // BITS) * BITS
    v = (words[:, None, :] >> shifts[None, :, None]) & ((1 << BITS) - 1)
    v = tl.reshape(v | 0x4B000000, (BLOCK_K, BLOCK_N)).to(tl.float32, bitcast=True)
    return v - z_biased[None, :]


@triton.jit
def values_minus_zero_f16(words, z_f16, BITS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """values_minus_zero in float16, for a float16 dot: z_f16 [BLOCK_N] is the zero point plus 1024, as float16. The
    bits 0x6400 | v read as a float16 are 1024 + v (exact for v < 1024), so no conversion instruction runs at all,
    where the float32 tile needs one to reach 16 bits."""
    shifts = tl.arange(0, 32 // BITS) * BITS
    v = (words[:, None, :] >> shifts[None, :, None]) & ((1 << BITS) - 1)
    v = tl.reshape(v | 0x6400, (BLOCK_K, BLOCK_N)).to(tl.int16).to(tl.float16, bitcast=True)
    return v - z_f16[None, :]


@triton.jit
def _dequantize_kernel(w_ptr, s_ptr, z_ptr, out_ptr, N, stride_wk, stride_sg, stride_ok,
                       BITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    PER: tl.constexpr = 32 // BITS
    WORDS: tl.constexpr = BLOCK_K // PER
    k0 = tl.program_id(0) * BLOCK_K
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    words = tl.load(w_ptr + (k0 // PER + tl.arange(0, WORDS))[:, None] * stride_wk + offs_n[None, :],
                    mask=n_ok[None, :], other=0)
    g = k0 // GROUP
    s = tl.load(s_ptr + g * stride_sg + offs_n, mask=n_ok, other=0.0)
    z = tl.load(z_ptr + g * stride_sg + offs_n, mask=n_ok, other=0.0)
    w = values_minus_zero(words, z + 8388608.0, BITS, BLOCK_K, BLOCK_N) * s[None, :]
    offs_k = k0 + tl.arange(0, BLOCK_K)
    tl.store(out_ptr + offs_k[:, None].to(tl.int64) * stride_ok + offs_n[None, :], w.to(out_ptr.dtype.element_ty),
             mask=n_ok[None, :])


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, group: int,
               dtype: torch.dtype) -> torch.Tensor:
    """The packed weight as a dense [K, N] tensor in `dtype` (x @ it is the matmul)."""
    k, n = qweight.shape[0] * (32 // bits), qweight.shape[1]
    block_k = min(group, 64)
    if k % group or group % block_k:
        raise ValueError(f"dequantize: K={k} must be a multiple of the group {group}")
    out = torch.empty((k, n), dtype=dtype, device=qweight.device)
    grid = (k // block_k, triton.cdiv(n, 128))
    _dequantize_kernel[grid](qweight, scales, zeros, out, n, qweight.stride(0), scales.stride(0), out.stride(0),
                             BITS=bits, GROUP=group, BLOCK_K=block_k, BLOCK_N=128, num_warps=4)
    return out


def prompt_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                  bias: torch.Tensor | None, bits: int, group: int) -> torch.Tensor:
    """`int_matmul` for many rows: the weight dequantized once, then one cuBLAS matmul."""
    w = dequantize(qweight, scales, zeros, bits, group, x.dtype)
    out = x @ w
    del w
    return out + bias if bias is not None else out
