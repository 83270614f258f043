"""What the weight-only quantized matmuls (triton_fp8, triton_w4a16) share: a program's tile of the output, and
split-K, where programs along grid axis 2 each sum a slice of K into float32 partials that one torch sum reduces.

Why split K: at decode batch sizes an [M, N] output has too few tiles to keep every SM reading weights; slicing K
multiplies the programs, and the partials cost M x N x splits floats, small next to the weight."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class MatmulTiles:
    """A launch's tiles: BLOCK_M x BLOCK_N outputs a program, K in BLOCK_K steps, `split_k` programs along K."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3


@triton.jit
def tile_start(M, N, k_per_split, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's rows and columns (with their bounds masks), its zeroed accumulator and its first K."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    return offs_m, offs_n, offs_m < M, offs_n < N, acc, tl.program_id(2) * k_per_split


@triton.jit
def tile_store(acc, b_ptr, y_ptr, offs_m, offs_n, m_ok, n_ok, stride_ys, stride_ym, HAS_BIAS: tl.constexpr):
    """The tile (plus bias, which only an unsplit launch adds) into y, or into this split's partials."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y = y_ptr + tl.program_id(2) * stride_ys + offs_m[:, None] * stride_ym + offs_n[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def split(k: int, unit: int, split_k: int) -> tuple[int, int]:
    """(splits, K per split): at most `split_k` slices, each a whole number of `unit`s (a K tile or a group)."""
    splits = max(1, min(split_k, k // unit))
    k_per_split = -(-k // (splits * unit)) * unit
    return -(-k // k_per_split), k_per_split


def output(x: torch.Tensor, n: int, splits: int) -> torch.Tensor:
    """Where the kernel writes: y [M, N] in x's dtype, or float32 partials [splits, M, N]."""
    if splits == 1:
        return torch.empty((x.shape[0], n), dtype=x.dtype, device=x.device)
    return torch.empty((splits, x.shape[0], n), dtype=torch.float32, device=x.device)


def finish(y: torch.Tensor, splits: int, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The result from what the kernel wrote: y itself, or the partials summed, plus the bias, in `dtype`."""
    if splits == 1:
        return y
    out = y.sum(dim=0)
    if bias is not None:
        out += bias.float()
    return out.to(dtype)
