"""Triton matmul for decode batches (M <= 128 rows): out = x @ w.T (+ bias), streaming the weight once.

Why: a decode step of a 9B model is ~17.6 GB of weight reads through four matmuls per layer plus the lm_head: at decode
batch sizes it is bound by reading weights, and cuBLAS reaches 2.2-2.7 TB/s there on an H100 (split-K kernels with a
second reduction launch at one to a few rows). This kernel gives each program a slab of BLOCK_N weight rows over the
whole K (or a slice of it, the last program reducing), loads it in [BLOCK_N, BLOCK_K] tiles several stages deep, and
multiplies on the tensor cores with the rows padded to BLOCK_M (16, 64 or 128), or for one row with multiply-adds on
the CUDA cores. The same kernel reads quantized weights (`QuantizedWeight`: FP8, packed 4/8-bit integers), widened
or unpacked tile by tile in registers, so they keep its launch, PDL and epilogues (`gemv_quantized`).

`plan(weights, batch_sizes)` times this kernel's configurations against `F.linear` for each weight shape at a few
representative batch sizes, inside CUDA graphs and over several distinct weights (so L2 does not serve them), and
keeps a configuration only where it is clearly faster: the plan never makes a shape slower than cuBLAS was there.
`plan_quantized` does the same for quantized weights against the formats' own kernels.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from glmv.kernels import pdl, quantized_weight
from glmv.kernels.quantized_weight import QuantizedWeight
from glmv.kernels.split_k import MatmulTiles
from glmv.kernels.timing import graph_time_us
from glmv.kernels.triton_argmax import first_max_rows, pick_rows
from glmv.kernels.triton_fp8 import round_rows_to_fp8, w8a8_matmul
from glmv.kernels.triton_swiglu import cublas_silu, silu_pairs
from glmv.kernels.triton_w4a16 import values_minus_zero, values_minus_zero_f16

MAX_ROWS = 128
# How a weight is stored (QuantizedWeight.format; the kernel's W_FORMAT)
FORMAT_DENSE = tl.constexpr(0)
FORMAT_FP8 = tl.constexpr(quantized_weight.FP8)
FORMAT_INT = tl.constexpr(quantized_weight.INT)


@dataclass(frozen=True)
class GemvConfig:
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    split_k: int = 1  # programs per BLOCK_N rows, each over a slice of K; the last to finish reduces (one launch)
    tma: bool = False  # tiles come in through tensor descriptors (Hopper's bulk copies) instead of pointer loads
    fma: bool = False  # one row only: multiply-adds on the CUDA cores, reduced once at the end (no rows padded to 16)
    slices: bool = False  # integer weights on the tensor cores: one dot per packed value slice, not one reshaped tile
    w8a8: bool = False  # FP8 weights with per-channel scales: activations to E4M3 per token, FP8 dots (triton_fp8)

    def fits(self, weight: QuantizedWeight) -> bool:
        """Whether this configuration can read `weight` (QuantizedWeight.fits on its tiles and roads)."""
        return weight.fits(self.block_k, self.tma, self.fma, self.slices, self.w8a8)


G = GemvConfig
CONFIGS = {  # by BLOCK_M (bench/notes/gpu_engine.md, session 2: the sweep's best per GLM shape); shared memory
    # = stages * (BLOCK_M + BLOCK_N) * BLOCK_K * 2 B stays under ~200 KB
    16: [G(32, 256, 4, 4), G(16, 256, 4, 4), G(64, 128, 4, 4, 2), G(64, 128, 4, 4, 4), G(32, 256, 4, 4, 2),
         G(128, 128, 4, 3, 4)],
    64: [G(128, 128, 8, 3), G(64, 128, 4, 4), G(128, 64, 4, 4), G(64, 128, 4, 4, 2), G(64, 64, 4, 6, 4)],
    128: [G(64, 128, 8, 3), G(32, 128, 4, 4), G(128, 128, 8, 3), G(128, 64, 8, 3, 2)],
}
CONFIGS[16] += [G(32, 256, 4, 4, tma=True), G(64, 128, 4, 4, 4, tma=True), G(128, 128, 4, 3, 4, tma=True)]
CONFIGS[64] += [G(128, 128, 8, 3, tma=True), G(64, 128, 4, 4, tma=True), G(32, 256, 4, 4, tma=True),
                G(64, 128, 4, 4, 2, tma=True), G(64, 128, 4, 4, 4, tma=True)]
CONFIGS[128] += [G(64, 128, 8, 3, tma=True), G(128, 128, 8, 3, tma=True), G(32, 128, 4, 4, tma=True)]
# Quantized weights (gemv_quantized): pointer loads only; a configuration is used with a weight only where its K tiles
# fit the weight's scale groups (QuantizedWeight.fits). Narrow FP8 tiles read half of bf16's bytes per K step, so
# the lists reach to wider K tiles than CONFIGS.
QUANT_CONFIGS = {
    16: [G(64, 128, 4, 4), G(32, 128, 4, 4, 2), G(64, 128, 4, 4, 2), G(64, 128, 4, 4, 4), G(128, 128, 4, 3, 4),
         G(128, 128, 4, 6, 2), G(256, 128, 8, 4), G(32, 256, 4, 4), G(64, 256, 4, 4, 2), G(32, 512, 4, 3),
         G(16, 512, 4, 4, 2), G(64, 128, 4, 4, 4, slices=True), G(128, 128, 4, 3, 4, slices=True)],
    64: [G(64, 128, 4, 4), G(128, 128, 8, 3), G(128, 64, 4, 4), G(64, 128, 4, 4, 2), G(64, 64, 4, 6, 4),
         G(128, 128, 8, 3, 2), G(64, 256, 4, 3)],
    128: [G(64, 128, 8, 3), G(128, 128, 8, 3), G(32, 128, 4, 4), G(128, 64, 8, 3, 2), G(64, 128, 8, 3, 2)],
}
# FP8 weights from 16 rows (triton_fp8.w8a8_matmul): split-K, so that a narrow output (4,096 columns) still has
# a program for every SM, which cuBLAS's FP8 kernel lacks there.
W8A8_CONFIGS = {
    16: [G(64, 128, 4, 4, 4, w8a8=True), G(128, 128, 4, 3, 4, w8a8=True), G(64, 256, 4, 3, 2, w8a8=True)],
    64: [G(64, 128, 4, 4, 4, w8a8=True), G(128, 128, 8, 3, 2, w8a8=True), G(128, 128, 8, 3, 4, w8a8=True)],
    128: [G(128, 128, 8, 3, 2, w8a8=True), G(64, 128, 4, 4, 4, w8a8=True), G(128, 128, 8, 3, 4, w8a8=True)],
}
# One row (single-stream decode): multiply-add configurations, for dense and quantized weights alike (`plan` and
# `plan_quantized` try them at the plan point 1, which only a batch of one maps to).
ROW_CONFIGS = [G(64, 128, 4, 4, fma=True), G(32, 256, 4, 4, fma=True), G(64, 256, 8, 3, 2, fma=True),
               G(128, 128, 8, 3, 2, fma=True), G(32, 128, 4, 4, 4, fma=True), G(16, 256, 4, 4, 2, fma=True),
               G(64, 128, 4, 4, 4, fma=True), G(16, 512, 4, 4, 2, fma=True), G(32, 512, 8, 3, fma=True)]
del G
# Batch sizes timed by `plan`; a bucket uses the result of the smallest point >= it in its BLOCK_M class.
PLAN_POINTS = [1, 4, 16, 32, 64, 96, 128]


def block_m(rows: int) -> int:
    return 16 if rows <= 16 else 64 if rows <= 64 else 128


def candidates(rows: int, quantized: bool) -> list[GemvConfig]:
    """The configurations a plan tries at `rows` (a plan point): the tensor-core ones of its BLOCK_M class, and
    for one row the multiply-add ones."""
    listed = (QUANT_CONFIGS if quantized else CONFIGS)[block_m(rows)]
    w8a8 = W8A8_CONFIGS[block_m(rows)] if quantized and rows >= 16 else []
    return listed + w8a8 + (ROW_CONFIGS if rows == 1 else [])


@triton.jit
def _prefetch_l2(ptrs, nbytes):
    """Start copying nbytes from each address into L2 (the copy engine's bulk prefetch; nothing waits for it)."""
    tl.inline_asm_elementwise("cp.async.bulk.prefetch.L2.global [$1], $2; // $0", "=r,l,r", [ptrs, nbytes],
                              dtype=tl.int32, is_pure=False, pack=1)  # fmt: skip


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, x_desc, w_desc, b_ptr, out_ptr, ws_ptr, count_ptr, s_ptr, z_ptr, M, N, K, stride_xm, stride_wn,
    stride_sg, stride_om, pf_bytes, pf_programs, best_val_ptr, best_idx_ptr,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr, USE_PDL: tl.constexpr, PREFETCH: tl.constexpr, W_BYTES: tl.constexpr,
    SILU_MUL: tl.constexpr, TMA: tl.constexpr, ARGMAX: tl.constexpr, W_FORMAT: tl.constexpr, BITS: tl.constexpr,
    GROUP: tl.constexpr, FMA: tl.constexpr, SLICES: tl.constexpr,
):  # fmt: skip
    """One program = BLOCK_N weight rows x one of SPLIT_K slices of K (whole BLOCK_K tiles). With SPLIT_K > 1 each
    program leaves its float32 partial in ws; the last of an n-block's programs to finish (an atomic counter per
    n-block) sums the partials in split order (deterministic), adds the bias, writes the output and re-arms the
    counter to 0 for the next launch.

    With PDL the weights (which no earlier kernel writes) start flowing into L2 before the wait for the previous
    kernel: the first pf_bytes of each row of the first pf_programs programs (those resident from the start).

    SILU_MUL: the weight is an interleaved gate/up pair stack (glmv.kernels.triton_swiglu) and the output, N // 2 wide,
    is up * silu(gate). TMA: x and w tiles come through the descriptors x_desc and w_desc (rows and columns past the
    ends read as zeros), else by pointer loads from x_ptr and w_ptr. ARGMAX (SPLIT_K == 1, no SILU_MUL): each program
    also leaves, per row, the largest output of its tile as stored (rounded) and its column, at [row, n-block] of
    best_val / best_idx, for glmv.kernels.triton_argmax.pick_rows.

    W_FORMAT (a QuantizedWeight's format): FORMAT_DENSE, w [N, K] in x's dtype. FORMAT_FP8: w [N, K] E4M3 (as
    bytes) widened in registers; s [N] per-channel scales applied once in the epilogue, or with GROUP > 0 scales
    [N, K / GROUP] (row stride stride_sg) applied to each K tile's product. FORMAT_INT: w int32 words [K*BITS/32, N]
    (row stride stride_wn; word r holds K rows r*32/BITS.. in its low bits first), s and z float32 [K / GROUP, N]
    (row stride stride_sg); each K tile (within one group) multiplies (q - z), exact in 16 bits, and scales the
    product by s."""
    pid = tl.program_id(0)
    pid_n = pid // SPLIT_K
    pid_k = pid % SPLIT_K
    tiles_per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K)
    k_start = pid_k * tiles_per_split * BLOCK_K
    k_end = tl.minimum(k_start + tiles_per_split * BLOCK_K, K)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    n_mask = offs_n < N
    m_mask = offs_m < M
    if USE_PDL:
        if PREFETCH:
            nbytes = tl.minimum(pf_bytes, (k_end - k_start) * W_BYTES) // 16 * 16  # the prefetch takes 16 B units
            if (pid < pf_programs) & (nbytes > 0):
                rows = tl.minimum(offs_n, N - 1).to(tl.int64)
                _prefetch_l2(w_ptr + rows * stride_wn + k_start, tl.full([BLOCK_N], nbytes, tl.int32))
        tl.extra.cuda.gdc_wait()  # x (and the output buffers) belong to the kernels before this one
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if W_FORMAT == FORMAT_INT:
        acc = _int_tiles(x_ptr, w_ptr, s_ptr, z_ptr, acc, offs_m, offs_n, m_mask, n_mask, k_start, k_end, stride_xm,
                         stride_wn, stride_sg, BLOCK_M, BLOCK_N, BLOCK_K, BITS, GROUP, FMA, SLICES)
    elif TMA:
        for k in range(k_start, k_end, BLOCK_K):
            acc += tl.dot(x_desc.load([0, k]), tl.trans(w_desc.load([pid_n * BLOCK_N, k])))
    else:
        acc = _row_major_tiles(x_ptr, w_ptr, s_ptr, acc, offs_m, offs_n, m_mask, n_mask, k_start, k_end, stride_xm,
                               stride_wn, stride_sg, BLOCK_N, BLOCK_K, EVEN_K, W_FORMAT == FORMAT_FP8, GROUP, FMA)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()  # late: the next kernels' waiting programs would take SM slots
    if W_FORMAT == FORMAT_FP8 and GROUP == 0:  # per-channel scales: linear, so each split's partial takes them
        acc *= tl.load(s_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        _store_tile(out_ptr, acc, offs_m, pid_n, M, N, stride_om, BLOCK_M, BLOCK_N, SILU_MUL)
        if ARGMAX:
            stored = acc.to(out_ptr.dtype.element_ty).to(tl.float32)
            best, at = first_max_rows(stored, offs_n, m_mask[:, None] & n_mask[None, :])
            n_blocks = tl.num_programs(0)
            tl.store(best_val_ptr + offs_m * n_blocks + pid_n, best, mask=m_mask)
            tl.store(best_idx_ptr + offs_m * n_blocks + pid_n, at, mask=m_mask)
    else:
        part = offs_m[:, None] * N + offs_n[None, :]
        part_mask = m_mask[:, None] & n_mask[None, :]
        tl.store(ws_ptr + pid_k * M * N + part, acc, mask=part_mask)
        tl.debug_barrier()  # every thread's partial is written before the counter says so (release below)
        arrived = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):
                total += tl.load(ws_ptr + s * M * N + part, mask=part_mask, other=0.0, cache_modifier=".cg")
            if HAS_BIAS:
                total += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
            _store_tile(out_ptr, total, offs_m, pid_n, M, N, stride_om, BLOCK_M, BLOCK_N, SILU_MUL)
            tl.atomic_xchg(count_ptr + pid_n, 0, sem="relaxed", scope="gpu")


# Quantized weights meet the tensor cores in float16 when the activations are 16-bit: E4M3 -> float16 is one
# conversion instruction per two values, while E4M3 -> bfloat16 takes three (through float16 and float32), and
# conversions issue at 16 a clock per SM against 128 FMAs (the bf16 road held the H200's large FP8 matmuls near 2 TB/s);
# integers reach float16 by bits alone (values_minus_zero_f16). bf16 activations are scaled by F16_X_SCALE into
# float16's range first (_to_f16) and the product is scaled back. Float32 activations keep float32.
F16_X_SCALE = tl.constexpr(1.0 / 256.0)


@triton.jit
def _to_f16(x):
    """A bf16 tile times F16_X_SCALE as float16 (so |x| up to 1.6e7 fits; a float16 tile is returned as is).
    The 2^-8 comes off the exponent bits, not from a float multiply, which the kernel compiled for the H200
    applied as if after the narrowing (NaN past 65,504). Values below 2^-118 become signed zeros."""
    if x.dtype == tl.bfloat16:
        bits = x.to(tl.int16, bitcast=True)
        exponent = (bits >> 7) & 0xFF
        scaled = tl.where(exponent > 8, bits - (8 << 7), bits & -32768).to(tl.int16)
        x = scaled.to(tl.bfloat16, bitcast=True).to(tl.float16)
    return x


@triton.jit
def _row_major_tiles(x_ptr, w_ptr, s_ptr, acc, offs_m, offs_n, m_mask, n_mask, k_start, k_end, stride_xm,
                     stride_wn, stride_sg, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                     IS_FP8: tl.constexpr, GROUP: tl.constexpr, FMA: tl.constexpr):
    """acc + x @ w.T over [k_start, k_end) for w [N, K] in x's dtype, or E4M3 bytes (IS_FP8) widened tile by tile
    (to float16 for the dot, see F16_X_SCALE; block-scaled per tile when GROUP > 0: BLOCK_K divides GROUP). FMA
    (one row): products summed elementwise into a [BLOCK_N, BLOCK_K] float32 tile and reduced across K once, after
    the loop."""
    offs_k = tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + (k_start + offs_k)[None, :]
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + (k_start + offs_k)[None, :]
    wide = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    dots = tl.zeros_like(acc)
    X_16_BIT: tl.constexpr = x_ptr.dtype.element_ty != tl.float32
    F16_UNSCALE: tl.constexpr = 1.0 / F16_X_SCALE if x_ptr.dtype.element_ty == tl.bfloat16 else 1.0  # _to_f16's
    for k in range(k_start, k_end, BLOCK_K):
        if EVEN_K:
            w = tl.load(w_ptrs, mask=n_mask[:, None], other=0)
            x = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)
        else:
            k_ok = (k + offs_k) < k_end
            w = tl.load(w_ptrs, mask=n_mask[:, None] & k_ok[None, :], other=0)
            x = tl.load(x_ptrs, mask=m_mask[:, None] & k_ok[None, :], other=0.0)
        if IS_FP8:
            w = w.to(tl.float8e4nv, bitcast=True)
        if FMA:
            prod = w.to(tl.float32) * x.to(tl.float32)
            if GROUP > 0:
                prod *= tl.load(s_ptr + offs_n * stride_sg + k // GROUP, mask=n_mask, other=0.0)[:, None]
            wide += prod
        else:
            if IS_FP8 and X_16_BIT:
                w = w.to(tl.float16)
                x = _to_f16(x)
            elif IS_FP8:
                w = w.to(tl.float32)
            if GROUP > 0:
                s = tl.load(s_ptr + offs_n * stride_sg + k // GROUP, mask=n_mask, other=0.0)
                dots += tl.dot(x, tl.trans(w)) * s[None, :]
            else:
                dots += tl.dot(x, tl.trans(w))
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    if FMA:
        return acc + tl.sum(wide, axis=1)[None, :]
    if IS_FP8 and X_16_BIT:
        return acc + dots * F16_UNSCALE
    return acc + dots


@triton.jit
def _int_tiles(x_ptr, w_ptr, s_ptr, z_ptr, acc, offs_m, offs_n, m_mask, n_mask, k_start, k_end, stride_xm,
               stride_wk, stride_sg, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               BITS: tl.constexpr, GROUP: tl.constexpr, FMA: tl.constexpr, SLICES: tl.constexpr):
    """acc + x @ W over [k_start, k_end) for packed integer words [K*BITS/32, N] (whole tiles, each within one
    group). A value v becomes a float by the exponent trick (triton_w4a16.values_minus_zero): the bits of 2^23 + v,
    minus 2^23 + z, is v - z exactly.

    A tile is unpacked either as one [BLOCK_K, BLOCK_N] tile (values_minus_zero: the values of each word reshaped
    into consecutive rows) for one dot, or (SLICES) as PER slices, slice j holding value j of each word, i.e. input rows
    k0 + w*PER + j, each multiplied with the matching strided columns of x: no reshape, PER smaller dots (the sum
    over K does not care about its order); which is faster depends on the rows, so the plan times both. FMA (one
    row, sliced): slices multiply-add into a [WORDS, BLOCK_N] float32 tile, scaled once per group and reduced at
    the end. With 16-bit activations the dots run in float16 (F16_X_SCALE), the values made by
    values_minus_zero_f16's bits."""
    PER: tl.constexpr = 32 // BITS
    WORDS: tl.constexpr = BLOCK_K // PER
    offs_w = tl.arange(0, WORDS)
    w_ptrs = w_ptr + (k_start // PER + offs_w)[:, None].to(tl.int64) * stride_wk + offs_n[None, :]
    if SLICES:
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + (k_start + offs_w * PER)[None, :]
    else:
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + (k_start + tl.arange(0, BLOCK_K))[None, :]
    wide = tl.zeros((WORDS, BLOCK_N), dtype=tl.float32)
    F16: tl.constexpr = (x_ptr.dtype.element_ty != tl.float32) and not FMA  # the float16 dot (F16_X_SCALE)
    F16_UNSCALE: tl.constexpr = 1.0 / F16_X_SCALE if x_ptr.dtype.element_ty == tl.bfloat16 else 1.0  # _to_f16's
    for k in range(k_start, k_end, BLOCK_K):
        words = tl.load(w_ptrs, mask=n_mask[None, :], other=0)
        g = k // GROUP
        z = tl.load(z_ptr + g * stride_sg + offs_n, mask=n_mask, other=0.0)
        z = (z + 1024.0).to(tl.float16) if F16 else z + 8388608.0
        s = tl.load(s_ptr + g * stride_sg + offs_n, mask=n_mask, other=0.0)
        if F16:
            s *= F16_UNSCALE
        if SLICES:
            if FMA:
                tile = tl.zeros((WORDS, BLOCK_N), dtype=tl.float32)
            else:
                tile = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for j in tl.static_range(PER):
                v = (words >> (j * BITS)) & ((1 << BITS) - 1)
                x = tl.load(x_ptrs + j, mask=m_mask[:, None], other=0.0)
                if F16:
                    w = (v | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - z[None, :]
                    tile = tl.dot(_to_f16(x), w, tile)
                else:
                    w = (v | 0x4B000000).to(tl.float32, bitcast=True) - z[None, :]
                    if FMA:
                        tile += tl.reshape(x.to(tl.float32), (WORDS,))[:, None] * w
                    else:
                        tile = tl.dot(x, w, tile)
            if FMA:
                wide += tile * s[None, :]
            else:
                acc += tile * s[None, :]
        else:
            x = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)
            if F16:
                w = values_minus_zero_f16(words, z, BITS, BLOCK_K, BLOCK_N)
                acc += tl.dot(_to_f16(x), w) * s[None, :]
            else:
                acc += tl.dot(x, values_minus_zero(words, z, BITS, BLOCK_K, BLOCK_N)) * s[None, :]
        w_ptrs += WORDS * stride_wk
        x_ptrs += BLOCK_K
    if FMA:
        acc += tl.sum(wide, axis=0)[None, :]
    return acc


@triton.jit
def _store_tile(out_ptr, acc, offs_m, pid_n, M, N, stride_om, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                SILU_MUL: tl.constexpr):
    """Write a finished [BLOCK_M, BLOCK_N] float32 tile: as is, or gated pairwise into BLOCK_N // 2 columns."""
    if SILU_MUL:
        offs_o = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        val = silu_pairs(acc, BLOCK_M, BLOCK_N, out_ptr.dtype.element_ty)
        mask = (offs_m[:, None] < M) & (offs_o[None, :] < N // 2)
    else:
        offs_o = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        val = acc.to(out_ptr.dtype.element_ty)
        mask = (offs_m[:, None] < M) & (offs_o[None, :] < N)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_o[None, :], val, mask=mask)


_COUNTERS: dict[torch.device, torch.Tensor] = {}
_COUNTER_SLOTS = 1 << 16


def _counters(device: torch.device, needed: int) -> torch.Tensor:
    """The n-block arrival counters split-K launches share: zero between launches (each launch re-arms what it
    used), so one buffer per device serves every call issued on one stream, graph replays included."""
    buf = _COUNTERS.get(device)
    if buf is None or buf.numel() < needed:  # allocated inside a graph capture, its zeroing replays harmlessly
        buf = torch.zeros(max(needed, _COUNTER_SLOTS), dtype=torch.int32, device=device)
        _COUNTERS[device] = buf
    return buf


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: GemvConfig,
         silu_mul: bool = False, argmax_out: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] (M <= 128, last dim contiguous) @ weight [N, K].T (+ bias [N]) -> [M, N] in x's dtype.

    silu_mul: weight is an interleaved gate/up stack (glmv.kernels.triton_swiglu.interleave_gate_up); returns
    [M, N // 2] = up * silu(gate), gated in the epilogue. argmax_out (int64 [M], split_k 1 only): also writes each
    row's argmax of the output into it (torch.argmax's answer), from per-tile maxima the epilogue leaves and one
    short launch after. Split-K configurations synchronise through per-device counters: issue them from one stream
    at a time."""
    n, k = weight.shape
    if weight.stride(-1) != 1:
        raise ValueError("gemv takes a weight with a contiguous last dim")
    if argmax_out is not None and (silu_mul or config.split_k != 1):
        raise ValueError("gemv's argmax epilogue needs split_k 1 and no SiLU epilogue")
    aligned = weight.data_ptr() % 16 == 0 and weight.stride(0) * weight.element_size() % 16 == 0
    return _launch(x, weight, n, k, bias, config, silu_mul, argmax_out, int(FORMAT_DENSE), weight, weight,
                   weight.stride(0), 0, 0, 0, weight.element_size() if aligned else 0, config.tma and aligned)


def gemv_quantized(x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None, config: GemvConfig,
                   silu_mul: bool = False) -> torch.Tensor:
    """`gemv` for a quantized weight: x [M, K] (16-bit, M <= 128) -> [M, N] in x's dtype, the weight dequantized
    tile by tile in registers (FP8 widened, integers unpacked and offset by their zero points, both scaled); a W8A8
    configuration runs triton_fp8.w8a8_matmul instead (E4M3 activations, FP8 dots)."""
    if not config.fits(weight):
        if config.w8a8:
            raise ValueError(f"gemv: W8A8 takes FP8 weights with per-channel scales, not {weight.tag}")
        raise ValueError(f"gemv: block_k {config.block_k} does not tile the {weight.tag} weight's groups")
    if config.w8a8:
        tiles = MatmulTiles(block_m(x.shape[0]), config.block_n, config.block_k, config.split_k, config.num_warps,
                            config.num_stages)
        return w8a8_matmul(x, weight.data, weight.scale, bias, tiles, silu_mul)
    w = weight.data
    is_int = weight.format == quantized_weight.INT
    aligned = w.data_ptr() % 16 == 0 and w.stride(0) % 16 == 0
    stride_sg = weight.scale.stride(0) if is_int or weight.group else 0
    return _launch(x, w, weight.n, weight.k, bias, config, silu_mul, None, weight.format, weight.scale,
                   weight.zeros if weight.zeros is not None else weight.scale, w.stride(0), stride_sg, weight.bits,
                   weight.group, 1 if aligned and not is_int else 0, False)


def _launch(x: torch.Tensor, w: torch.Tensor, n: int, k: int, bias: torch.Tensor | None, c: GemvConfig,
            silu_mul: bool, argmax_out: torch.Tensor | None, w_format, scale: torch.Tensor, zeros: torch.Tensor,
            stride_wn: int, stride_sg: int, bits: int, group: int, prefetch_elem: int, tma: bool) -> torch.Tensor:
    """One launch of _gemv_kernel; prefetch_elem: the weight's bytes per element where its rows can be
    prefetched into L2 (0: they cannot)."""
    m = x.shape[0]
    if m > MAX_ROWS or x.stride(-1) != 1 or x.shape[1] != k:
        raise ValueError(f"gemv takes at most {MAX_ROWS} rows with contiguous last dims and matching K")
    if c.fma and (m > 1 or c.tma):
        raise ValueError("gemv's multiply-add configurations take one row and pointer loads")
    if silu_mul and (bias is not None or n % 2 or c.block_n % 2):
        raise ValueError("gemv's SiLU epilogue takes an even N, an even block_n and no bias")
    out = torch.empty((m, n // 2 if silu_mul else n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    n_blocks = triton.cdiv(n, c.block_n)
    if c.split_k > 1:
        counters = _counters(x.device, n_blocks)
        ws = torch.empty((c.split_k, m, n), dtype=torch.float32, device=x.device)
    else:
        counters = ws = out  # unused by the kernel
    grid = n_blocks * c.split_k
    launch = pdl.launch_options()
    pf_bytes, pf_programs = _prefetch_plan(x.device, grid, m, k, prefetch_elem, c) \
        if launch["USE_PDL"] and prefetch_elem else (0, 0)
    tma = tma and x.data_ptr() % 16 == 0 and x.stride(0) * x.element_size() % 16 == 0
    x_desc = TensorDescriptor.from_tensor(x, [block_m(m), c.block_k]) if tma else x  # else unused
    w_desc = TensorDescriptor.from_tensor(w, [c.block_n, c.block_k]) if tma else w
    if argmax_out is not None:
        best_val = torch.empty(m, n_blocks, dtype=torch.float32, device=x.device)
        best_idx = torch.empty(m, n_blocks, dtype=torch.int32, device=x.device)
    else:
        best_val = best_idx = out  # unused by the kernel
    _gemv_kernel[(grid,)](
        x, w, x_desc, w_desc, bias if bias is not None else scale, out, ws, counters, scale, zeros, m, n, k,
        x.stride(0), stride_wn, stride_sg, out.stride(0), pf_bytes, pf_programs, best_val, best_idx,
        HAS_BIAS=bias is not None, BLOCK_M=1 if c.fma else block_m(m), BLOCK_N=c.block_n, BLOCK_K=c.block_k,
        SPLIT_K=c.split_k, EVEN_K=k % c.block_k == 0, PREFETCH=pf_bytes > 0, W_BYTES=max(prefetch_elem, 1),
        SILU_MUL=silu_mul, TMA=tma, ARGMAX=argmax_out is not None, W_FORMAT=w_format, BITS=bits, GROUP=group,
        FMA=c.fma, SLICES=c.slices or c.fma, num_warps=c.num_warps, num_stages=c.num_stages, **launch,
    )  # fmt: skip
    if argmax_out is not None:
        pick_rows(best_val, best_idx, argmax_out)
    return out


PREFETCH_BYTES = 24 << 20  # L2 is 50 MB on an H100; set_prefetch_window changes it


def set_prefetch_window(megabytes: float) -> None:
    """How much of the next weights the decode matmul prefetches into L2 (0: none); the caller's option."""
    global PREFETCH_BYTES
    PREFETCH_BYTES = int(megabytes * 2**20)


def _prefetch_plan(device: torch.device, grid: int, m: int, k: int, elem: int, c: GemvConfig) -> tuple[int, int]:
    """(bytes per weight row, programs) to prefetch before the PDL wait: the programs resident from the start, and
    per row as much of their K slice as keeps the total within PREFETCH_BYTES (whole BLOCK_K tiles)."""
    if PREFETCH_BYTES <= 0:
        return 0, 0
    smem = c.num_stages * (block_m(m) + c.block_n) * c.block_k * elem
    per_sm = max(1, min(227 * 1024 // max(smem, 1), 64 // c.num_warps))
    resident = min(grid, _sm_count(device) * per_sm)
    tile = c.block_k * elem
    slice_bytes = -(-k // (c.block_k * c.split_k)) * tile
    per_row = min(slice_bytes, PREFETCH_BYTES // (resident * c.block_n)) // tile * tile
    return (per_row, resident) if per_row > 0 else (0, 0)


@functools.lru_cache(maxsize=8)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


PlanKey = tuple[int, int, bool, int]  # (N, K, has bias, rows)


def _lead_kernel(x: torch.Tensor):
    """A ~3 us kernel that produces x's values (an RMSNorm, as before most decoder matmuls), for planning under
    PDL; None without PDL (each matmul then starts cold either way)."""
    if not pdl.enabled():
        return None
    from glmv.kernels.triton_fused import rms_norm

    ones = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
    return lambda: rms_norm(x, ones, 1e-5)


def plan(weight_groups: list[tuple], batch_sizes: list[int], report: list | None = None) -> dict[PlanKey, GemvConfig]:
    """For each group (weights, biases or None[, silu_mul]) of same-shaped weights: at each plan point the fastest
    configuration when it clearly beats cuBLAS (timed in CUDA graphs cycling over the group's weights), applied to
    every batch size of `batch_sizes` that maps to that point. A group flagged silu_mul holds interleaved gate/up
    weights: both sides are timed with the pairwise gating (gemv's epilogue against cuBLAS + silu_mul_pairs), and its
    configurations are for `gemv(..., silu_mul=True)`. `report` receives (key, cuBLAS us, best us, config)."""
    chosen: dict[PlanKey, GemvConfig] = {}
    for group in weight_groups:
        weights, biases = group[0], group[1]
        silu = len(group) > 2 and bool(group[2])
        n, k = weights[0].shape

        def baseline(x, i, weights=weights, biases=biases, silu=silu):
            w, b = weights[i % len(weights)], biases[i % len(weights)] if biases is not None else None
            return cublas_silu(x, w) if silu else F.linear(x, w, b)

        def candidate(x, i, cfg, weights=weights, biases=biases, silu=silu):
            w, b = weights[i % len(weights)], biases[i % len(weights)] if biases is not None else None
            return gemv(x, w, b, cfg, silu)

        # A clear win only (2%), except with the gating: there cuBLAS's side pays a second launch and a round
        # trip through memory that this isolated timing under-counts (in the decode graph at one row the
        # epilogue saved 0.17 ms a step while timing here ~2% faster), so any win counts.
        chosen.update(_plan_group((n, k, biases is not None), k, len(weights), weights[0].dtype, weights[0].device,
                                  lambda point: candidates(point, False), baseline, candidate,
                                  1.0 if silu else 0.98, batch_sizes, report))
    return chosen


@dataclass(frozen=True)
class QuantizedPlanGroup:
    """Same-shaped quantized weights of several layers, as `plan_quantized` times them: `baseline(x, i)` is layer
    i's product without a plan (the format's own kernels), `candidate(x, i, cfg)` the same on the decode matmul,
    `reference(x)` layer 0's product on its dequantized weight, what candidates are checked against (the baseline
    may round more: from 64 rows FP8 runs on tensor cores with its activations rounded to E4M3 too)."""

    weight: QuantizedWeight  # the first layer's (its tag and shape key the plan)
    count: int
    has_bias: bool
    dtype: torch.dtype  # of the activations
    baseline: Callable[[torch.Tensor, int], torch.Tensor]
    candidate: Callable[[torch.Tensor, int, GemvConfig], torch.Tensor]
    reference: Callable[[torch.Tensor], torch.Tensor]


def plan_quantized(groups: list[QuantizedPlanGroup], batch_sizes: list[int],
                   report: list | None = None) -> dict[tuple, GemvConfig]:
    """`plan` for quantized weights: per (format tag, N, K, has bias, rows), the fastest QUANT_CONFIGS entry that
    fits the weight's groups, where it beats the format's own kernel by 2%."""
    chosen: dict[tuple, GemvConfig] = {}
    for g in groups:
        w = g.weight
        def fitting(point: int, w=w) -> list[GemvConfig]:
            return [c for c in candidates(point, True) if c.fits(w)]

        chosen.update(_plan_group((w.tag, w.n, w.k, g.has_bias), w.k, g.count, g.dtype, w.data.device, fitting,
                                  g.baseline, g.candidate, 0.98, batch_sizes, report, g.reference))
    return chosen


def _plan_group(key: tuple, k: int, count: int, dtype: torch.dtype, device: torch.device, configs_at: Callable,
                baseline: Callable, candidate: Callable, margin: float, batch_sizes: list[int],
                report: list | None, reference: Callable | None = None) -> dict[tuple, GemvConfig]:
    """One group's plan: at each plan point, time `baseline` and every configuration's `candidate` (cycling twice
    over `count` layers in one CUDA graph, each call after a small lead kernel as in a layer), check each against
    `reference` (default: the baseline's output), and keep the fastest that beats the baseline's time times
    `margin`; then map every batch size to its point. Keys are key + (rows,)."""
    sizes = sorted({b for b in batch_sizes if 0 < b <= MAX_ROWS})
    point_of = {b: next(p for p in PLAN_POINTS if p >= b and block_m(p) == block_m(b)) for b in sizes}
    at_point: dict[int, GemvConfig | None] = {}
    for point in sorted(set(point_of.values())):
        x = torch.randn(point, k, dtype=dtype, device=device)
        lead = _lead_kernel(x)

        def timed(fn, lead=lead, x=x) -> float:
            return graph_time_us(lambda i: fn(lead() if lead is not None else x, i), 2 * count)

        base = timed(baseline)
        best, best_us = None, base
        check = reference if reference is not None else (lambda xi: baseline(xi, 0))
        ref = check(x).float()
        ref_w8a8 = None  # W8A8 rounds its activations to E4M3: checked against the reference on rows so rounded
        for cfg in configs_at(point):
            try:
                if cfg.w8a8 and ref_w8a8 is None:
                    ref_w8a8 = check(round_rows_to_fp8(x)).float()
                out = candidate(x, 0, cfg).float()
                expected = ref_w8a8 if cfg.w8a8 else ref
                err = ((out - expected).norm() / expected.norm().clamp(min=1e-30)).item()
                if not err < 2e-2:  # a safety net: never plan a configuration that computes something else
                    raise RuntimeError(f"relative error {err:.3g} against the reference")
                us = timed(lambda xi, i, cfg=cfg: candidate(xi, i, cfg))
            except Exception as exc:  # noqa: BLE001 - a configuration this device cannot run is skipped
                if report is not None:
                    report.append((key + (point,), None, None, f"{cfg} failed: {exc}"))
                continue
            if us < best_us * margin:
                best, best_us = cfg, us
        at_point[point] = best
        if report is not None:
            report.append((key + (point,), round(base, 2), round(best_us, 2), best))
    return {key + (b,): at_point[point_of[b]] for b in sizes if at_point[point_of[b]] is not None}
