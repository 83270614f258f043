"""Triton FP8 matmuls: a weight-only E4M3 matmul that dequantizes in registers (decode, and any GPU), and the
per-token activation quantizer that feeds FP8 tensor cores through torch._scaled_mm (prefill on sm89+).

Why two paths: at decode batch sizes the matmul is bound by reading the weight, so halving its bytes is the win and
the activations can stay bf16: the kernel loads E4M3 tiles, widens them in registers and runs a bf16 dot, applying
the per-channel scale once at the end (or a block's scales per tile). For prefill the matmul is bound by
compute, where FP8 tensor cores double bf16's rate; there the activations are quantized per token (one scale per
row, from its absmax) and cuBLASLt's FP8 GEMM with row-wise scales (torch._scaled_mm) runs it: it is NVIDIA's tuned
FP8 tensor-core path, which a Triton kernel would only match after tuning per shape on the device.

Between the two, at 16-128 rows, cuBLAS's FP8 kernel gives a narrow output few tiles (4,096 columns: 32 tiles of
128 for 132 SMs on an H200) and reads such a weight at a third of the copy rate. `w8a8_matmul` is the same
arithmetic (activations per token in E4M3, FP8 dots, row and channel scales in the epilogue) with split-K, so a
narrow output still puts every SM on the weight; the decode plan offers it (`GemvConfig.w8a8`) and keeps it only
where it measured faster.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glmv.kernels import split_k
from glmv.kernels.split_k import MatmulTiles, tile_start, tile_store
from glmv.kernels.triton_swiglu import silu_mul_pairs, silu_pairs

FP8_MAX = 448.0


def default_config(rows: int, k: int) -> MatmulTiles:
    if rows <= 16:
        return MatmulTiles(16, 64, 128, split_k=4 if k >= 4096 else 1)
    if rows <= 64:
        return MatmulTiles(64, 64, 128, split_k=2 if k >= 8192 else 1)
    return MatmulTiles(128, 128, 64, num_warps=8)


@triton.jit
def _fp8_matmul_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_sb, stride_ys,
                       stride_ym, k_per_split,
                       BLOCK_SCALE: tl.constexpr, SCALE_BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_m, offs_n, m_ok, n_ok, acc, k_start = tile_start(M, N, k_per_split, BLOCK_M, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(k_start, k_start + k_per_split, BLOCK_K):
        k = k0 + offs_k
        k_ok = k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        raw = tl.load(w_ptr + offs_n[None, :] * stride_wn + k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0)
        w = raw.to(tl.float8e4nv, bitcast=True).to(tl.float32)
        if BLOCK_SCALE:  # BLOCK_K divides SCALE_BLOCK: one scale column per tile
            s = tl.load(s_ptr + offs_n * stride_sb + k0 // SCALE_BLOCK, mask=n_ok, other=0.0)
            w = w * s[None, :]
        acc = tl.dot(x, w.to(x.dtype), acc)
    if not BLOCK_SCALE:
        acc *= tl.load(s_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    tile_store(acc, b_ptr, y_ptr, offs_m, offs_n, m_ok, n_ok, stride_ys, stride_ym, HAS_BIAS)


def fp8_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
               scale_block: int | None = None, config: MatmulTiles | None = None) -> torch.Tensor:
    """x [M, K] @ (E4M3 weight [N, K] * scale).T -> [M, N] in x's dtype. scale: float32 [N] per channel, or
    [N, ceil(K/B)] per row and B-wide block of K (scale_block=B)."""
    m, k = x.shape
    n = weight.shape[0]
    cfg = config or default_config(m, k)
    if scale_block is not None and scale_block % cfg.block_k:
        cfg = MatmulTiles(cfg.block_m, cfg.block_n, scale_block, cfg.split_k, cfg.num_warps, cfg.num_stages)
    splits, k_per_split = split_k.split(k, cfg.block_k, cfg.split_k)
    y = split_k.output(x, n, splits)
    raw = weight.view(torch.uint8)
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n), splits)
    _fp8_matmul_kernel[grid](
        x, raw, scale, bias if bias is not None and splits == 1 else scale, y, m, n, k, x.stride(0), raw.stride(0),
        scale.stride(0) if scale_block is not None else 0, y.stride(0) if splits > 1 else 0, n, k_per_split,
        BLOCK_SCALE=scale_block is not None, SCALE_BLOCK=scale_block or 1, HAS_BIAS=bias is not None and splits == 1,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages)
    return split_k.finish(y, splits, bias, x.dtype)


@triton.jit
def _quantize_rows_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm, BLOCK_K: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_K)
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        v = tl.load(x_ptr + row * stride_xm + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(v))
    scale = tl.maximum(tl.max(amax, axis=0) / 448.0, 1e-12)
    tl.store(s_ptr + row, scale)
    for k0 in range(0, K, BLOCK_K):
        v = tl.load(x_ptr + row * stride_xm + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(v / scale, -448.0), 448.0)
        tl.store(q_ptr + row * stride_qm + k0 + offs, q.to(tl.float8e4nv), mask=k0 + offs < K)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token FP8: x [M, K] -> (E4M3 [M, K], float32 scales [M, 1]) with x ~= q * scale."""
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    _quantize_rows_kernel[(m,)](x, q, s, k, x.stride(0), q.stride(0), BLOCK_K=1024)
    return q, s


def scaled_mm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
              input_scale: torch.Tensor | None = None) -> torch.Tensor:
    """FP8 tensor cores: x quantized per token (or by a static per-tensor input_scale) times the E4M3 weight
    [N, K] with per-channel scales [N], in cuBLASLt (row-wise scaling)."""
    if input_scale is None:
        xq, xs = quantize_rows(x)
    else:
        xs = input_scale.reshape(1, 1).expand(x.shape[0], 1).contiguous()
        xq = (x.float() / input_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return torch._scaled_mm(xq, weight.t(), scale_a=xs, scale_b=scale.reshape(1, -1), bias=bias,
                            out_dtype=x.dtype)


@triton.jit
def _w8a8_matmul_kernel(xq_ptr, xs_ptr, w_ptr, ws_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ys,
                        stride_ym, k_per_split, HAS_BIAS: tl.constexpr, SILU_MUL: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """y = (xq * xs) @ (w * ws).T over this program's K slice: E4M3 x E4M3 dots into float32, then the row and
    channel scales. SILU_MUL (unsplit only): columns come as (gate, up) pairs, and y gets up * silu(gate)."""
    offs_m, offs_n, m_ok, n_ok, acc, k_start = tile_start(M, N, k_per_split, BLOCK_M, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(k_start, tl.minimum(k_start + k_per_split, K), BLOCK_K):
        k = k0 + offs_k
        k_ok = k < K
        x = tl.load(xq_ptr + offs_m[:, None] * stride_xm + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0)
        w = tl.load(w_ptr + offs_n[None, :].to(tl.int64) * stride_wn + k[:, None], mask=k_ok[:, None] & n_ok[None, :],
                    other=0)
        acc = tl.dot(x.to(tl.float8e4nv, bitcast=True), w.to(tl.float8e4nv, bitcast=True), acc)
    acc *= tl.load(xs_ptr + offs_m, mask=m_ok, other=0.0)[:, None]
    acc *= tl.load(ws_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    if SILU_MUL:
        out = silu_pairs(acc, BLOCK_M, BLOCK_N, y_ptr.dtype.element_ty)
        offs_h = tl.program_id(1) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_h[None, :], out,
                 mask=m_ok[:, None] & (offs_h < N // 2)[None, :])
    else:
        tile_store(acc, b_ptr, y_ptr, offs_m, offs_n, m_ok, n_ok, stride_ys, stride_ym, HAS_BIAS)


def w8a8_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                config: MatmulTiles, silu_mul: bool = False) -> torch.Tensor:
    """x [M, K] (16-bit), quantized per token to E4M3, @ (E4M3 weight [N, K] (uint8 bits) * per-channel scale
    [N]).T -> [M, N] in x's dtype; with silu_mul, N holds interleaved (gate, up) pairs and the result is
    up * silu(gate), [M, N / 2]."""
    m, k = x.shape
    n = weight.shape[0]
    if silu_mul and (bias is not None or n % 2 or config.block_n % 2):
        raise ValueError("w8a8_matmul's SiLU epilogue takes an even N, an even block_n and no bias")
    if m == 0:
        return torch.empty((0, n // 2 if silu_mul else n), dtype=x.dtype, device=x.device)
    xq, xs = quantize_rows(x if x.stride(-1) == 1 else x.contiguous())
    splits, k_per_split = split_k.split(k, config.block_k, config.split_k)
    fused_silu = silu_mul and splits == 1
    y = torch.empty((m, n // 2), dtype=x.dtype, device=x.device) if fused_silu else split_k.output(x, n, splits)
    grid = (triton.cdiv(m, config.block_m), triton.cdiv(n, config.block_n), splits)
    _w8a8_matmul_kernel[grid](
        xq.view(torch.uint8), xs, weight.view(torch.uint8), scale, bias if bias is not None and splits == 1 else scale,
        y, m, n, k, xq.stride(0), weight.stride(0), y.stride(0) if splits > 1 else 0, y.stride(-2), k_per_split,
        HAS_BIAS=bias is not None and splits == 1, SILU_MUL=fused_silu, BLOCK_M=config.block_m,
        BLOCK_N=config.block_n, BLOCK_K=config.block_k, num_warps=config.num_warps, num_stages=config.num_stages)
    if fused_silu:
        return y
    out = split_k.finish(y, splits, bias, x.dtype)
    return silu_mul_pairs(out) if silu_mul else out


def round_rows_to_fp8(x: torch.Tensor) -> torch.Tensor:
    """x as `quantize_rows` leaves it (E4M3 per token, times its scale), back in x's dtype: what a W8A8 product is
    checked against (the dequantized weight times these rows). The quantizer itself rounds, so the check holds
    whatever rounding its conversion does (Triton's CPU interpreter truncates)."""
    q, scale = quantize_rows(x)
    return (q.float() * scale).to(x.dtype)
