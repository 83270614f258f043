"""Triton matmul for decode batches (M <= 128 rows): out = x @ w.T (+ bias), streaming the weight once.

Why: a decode step of a 9B model is ~17.6 GB of weight reads through four matmuls per layer plus the lm_head: at decode
batch sizes it is bound by reading weights, and cuBLAS reaches 2.2-2.7 TB/s there on an H100 (split-K kernels with a
second reduction launch at one to a few rows). This kernel gives each program a slab of BLOCK_N weight rows over the
whole K (no split, no second launch), loads it in [BLOCK_N, BLOCK_K] tiles several stages deep, and multiplies on the
tensor cores with the rows padded to BLOCK_M (16, 64 or 128).

`plan(weights, batch_sizes)` times this kernel's configurations against `F.linear` for each weight shape at a few
representative batch sizes, inside CUDA graphs and over several distinct weights (so L2 does not serve them), and
keeps a configuration only where it is clearly faster: the plan never makes a shape slower than cuBLAS was there.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

MAX_ROWS = 128


@dataclass(frozen=True)
class GemvConfig:
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


CONFIGS = {  # by BLOCK_M; shared memory = stages * (BLOCK_M + BLOCK_N) * BLOCK_K * 2 B stays under ~160 KB
    16: [GemvConfig(16, 256, 4, 4), GemvConfig(32, 256, 4, 4), GemvConfig(64, 128, 4, 4), GemvConfig(16, 512, 4, 3)],
    64: [GemvConfig(64, 128, 4, 4), GemvConfig(32, 256, 4, 3)],
    128: [GemvConfig(64, 128, 8, 3), GemvConfig(32, 128, 4, 4)],
}
# Batch sizes timed by `plan`; a bucket uses the result of the smallest point >= it in its BLOCK_M class.
PLAN_POINTS = [1, 4, 16, 32, 64, 96, 128]


def block_m(rows: int) -> int:
    return 16 if rows <= 16 else 64 if rows <= 64 else 128


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    n_mask = offs_n < N
    m_mask = offs_m < M
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        if EVEN_K:
            w = tl.load(w_ptrs, mask=n_mask[:, None], other=0.0)
            x = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)
        else:
            k_ok = (k + offs_k) < K
            w = tl.load(w_ptrs, mask=n_mask[:, None] & k_ok[None, :], other=0.0)
            x = tl.load(x_ptrs, mask=m_mask[:, None] & k_ok[None, :], other=0.0)
        acc += tl.dot(x, tl.trans(w))
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: GemvConfig) -> torch.Tensor:
    """x [M, K] (M <= 128, last dim contiguous) @ weight [N, K].T (+ bias [N]) -> [M, N] in x's dtype."""
    m, k = x.shape
    n = weight.shape[0]
    if m > MAX_ROWS or x.stride(-1) != 1 or weight.stride(-1) != 1 or weight.shape[1] != k:
        raise ValueError(f"gemv takes at most {MAX_ROWS} rows with contiguous last dims and matching K")
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    c = config
    _gemv_kernel[(triton.cdiv(n, c.block_n),)](
        x, weight, bias if bias is not None else weight, out, m, n, k, x.stride(0), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=block_m(m), BLOCK_N=c.block_n, BLOCK_K=c.block_k, EVEN_K=k % c.block_k == 0,
        num_warps=c.num_warps, num_stages=c.num_stages,
    )  # fmt: skip
    return out


PlanKey = tuple[int, int, bool, int]  # (N, K, has bias, rows)


def _graph_time_us(fn, calls: int) -> float:
    """Device time per call of fn(i) for i in range(calls), captured in one CUDA graph (median of 5 replays)."""
    for i in range(calls):
        fn(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        graph.replay()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) * 1e3 / calls)
    del graph
    return statistics.median(times)


def _time_us(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor] | None,
             config: GemvConfig | None) -> float:
    """Per-call device time of F.linear (config None) or gemv, cycling twice over the weights in one graph."""
    count = len(weights)

    def call(i: int) -> None:
        w, b = weights[i % count], biases[i % count] if biases is not None else None
        if config is None:
            F.linear(x, w, b)
        else:
            gemv(x, w, b, config)

    return _graph_time_us(call, 2 * count)


def plan(weight_groups: list[tuple[list[torch.Tensor], list[torch.Tensor] | None]], batch_sizes: list[int],
         report: list | None = None) -> dict[PlanKey, GemvConfig]:
    """For each group of same-shaped weights (with their biases, or None): at each plan point the fastest
    configuration when it clearly beats F.linear (timed in CUDA graphs cycling over the group's weights), applied to
    every batch size of `batch_sizes` that maps to that point. `report` receives (key, cuBLAS us, best us, config)."""
    sizes = sorted({b for b in batch_sizes if 0 < b <= MAX_ROWS})
    point_of = {b: next(p for p in PLAN_POINTS if p >= b and block_m(p) == block_m(b)) for b in sizes}
    chosen: dict[PlanKey, GemvConfig] = {}
    for weights, biases in weight_groups:
        n, k = weights[0].shape
        at_point: dict[int, GemvConfig | None] = {}
        for point in sorted(set(point_of.values())):
            x = torch.randn(point, k, dtype=weights[0].dtype, device=weights[0].device)
            base = _time_us(x, weights, biases, None)
            best, best_us = None, base
            ref = F.linear(x, weights[0], biases[0] if biases is not None else None).float()
            for cfg in CONFIGS[block_m(point)]:
                try:
                    out = gemv(x, weights[0], biases[0] if biases is not None else None, cfg).float()
                    err = ((out - ref).norm() / ref.norm().clamp(min=1e-30)).item()
                    if not err < 2e-2:  # a safety net: never plan a configuration that computes something else
                        raise RuntimeError(f"relative error {err:.3g} against F.linear")
                    us = _time_us(x, weights, biases, cfg)
                except Exception as exc:  # noqa: BLE001 - a configuration this device cannot run is skipped
                    if report is not None:
                        report.append(((n, k, biases is not None, point), None, None, f"{cfg} failed: {exc}"))
                    continue
                if us < best_us * 0.98:  # a clear win only
                    best, best_us = cfg, us
            at_point[point] = best
            if report is not None:
                report.append(((n, k, biases is not None, point), round(base, 2), round(best_us, 2), best))
        for b in sizes:
            if at_point[point_of[b]] is not None:
                chosen[(n, k, biases is not None, b)] = at_point[point_of[b]]
    return chosen
