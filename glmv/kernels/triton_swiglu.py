"""SwiGLU's gate/up matmul with the SiLU-gating in its epilogue: act = silu(x @ gate.T) * (x @ up.T) in one kernel.

Why: the MLP's gate_up matmul writes a [rows, 2 * inter] tensor that a second kernel reads back whole to write
[rows, inter]. For a 4,096-token prefill of GLM-4.1V-9B that round trip is 336 MB a layer (~0.11 ms at 3 TB/s, ~4.5
ms over 40 layers); for the vision tower ~1 ms of a picture's TTFT; at decode one more launch per layer. Doing the
gating where the matmul's accumulator still sits in registers writes only `act`.

The trick is a row order: `interleave_gate_up` stores the stacked [gate; up] weight as [g0, u0, g1, u1, ...], so
every output tile holds matching gate and up columns side by side and the epilogue pairs them with one reshape.
Everything that multiplies by an interleaved weight must then gate pairwise: `silu_mul_pairs` is the fallback after a
cuBLAS matmul, `matmul_silu` the large-row kernel here, and glmv.kernels.triton_gemv's `silu_mul=True` the decode one.

Rounding follows the unfused path (cuBLAS -> bf16 gate_up -> glmv.kernels.silu_mul): gate and up are rounded to the
output dtype, SiLU is computed in float32 and rounded, then the product is rounded.

`plan(weights, points)` times `matmul_silu`'s configurations against cuBLAS + `silu_mul_pairs` inside CUDA graphs at
a few row counts and keeps a configuration only where it clearly wins, so planning never makes a shape slower.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from glmv.kernels.pdl import launch_options, pdl_start
from glmv.kernels.timing import graph_time_us


def interleave_gate_up(weight: torch.Tensor) -> torch.Tensor:
    """[gate; up] stacked on dim 0 ([2 * inter, ...]) -> rows [g0, u0, g1, u1, ...] (a new tensor)."""
    if weight.shape[0] % 2:
        raise ValueError(f"a stacked gate/up weight has an even number of rows; got {weight.shape[0]}")
    inter = weight.shape[0] // 2
    return weight.view(2, inter, *weight.shape[1:]).transpose(0, 1).reshape(weight.shape).contiguous()


def deinterleave_gate_up(weight: torch.Tensor) -> torch.Tensor:
    """The inverse of `interleave_gate_up`."""
    inter = weight.shape[0] // 2
    return weight.view(inter, 2, *weight.shape[1:]).transpose(0, 1).reshape(weight.shape).contiguous()


@triton.jit
def silu_pairs(acc, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """[BLOCK_M, BLOCK_N] float32 with columns (gate, up) alternating -> [BLOCK_M, BLOCK_N // 2] of up * silu(gate),
    rounded as the unfused path rounds."""
    gate, up = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N // 2, 2)))
    gate = gate.to(OUT_DTYPE).to(tl.float32)
    up = up.to(OUT_DTYPE).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(OUT_DTYPE).to(tl.float32)
    return (up * act).to(OUT_DTYPE)


# ---------------------------------------------------------------------------------------------------------------------
# the pairwise gating alone (after a cuBLAS matmul)
# ---------------------------------------------------------------------------------------------------------------------


@triton.jit
def _silu_mul_pairs_kernel(gu_ptr, out_ptr, stride_gu, stride_o, INTER: tl.constexpr, BLOCK: tl.constexpr,
                           USE_PDL: tl.constexpr):  # fmt: skip
    pdl_start(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs_in = tl.program_id(1) * 2 * BLOCK + tl.arange(0, 2 * BLOCK)
    gu = tl.load(gu_ptr + row * stride_gu + offs_in, mask=offs_in < 2 * INTER, other=0.0).to(tl.float32)
    act = silu_pairs(tl.reshape(gu, (1, 2 * BLOCK)), 1, 2 * BLOCK, out_ptr.dtype.element_ty)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + row * stride_o + offs[None, :], act, mask=offs[None, :] < INTER)


def silu_mul_pairs(gate_up: torch.Tensor) -> torch.Tensor:
    """up * silu(gate) for gate_up = [..., 2 * inter] with gate and up columns alternating (an interleaved weight's
    matmul output) -> [..., inter]."""
    rows = gate_up.reshape(-1, gate_up.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    inter = rows.shape[-1] // 2
    out = torch.empty((*gate_up.shape[:-1], inter), dtype=gate_up.dtype, device=gate_up.device)
    if rows.shape[0]:
        block = min(1024, triton.next_power_of_2(inter))
        _silu_mul_pairs_kernel[(rows.shape[0], triton.cdiv(inter, block))](
            rows, out.view(-1, inter), rows.stride(0), inter, INTER=inter, BLOCK=block, num_warps=4,
            **launch_options(),
        )  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the fused matmul for many rows (prefill, the vision tower)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatmulSiluConfig:
    block_m: int
    block_n: int  # weight rows (gate/up pairs x 2) per tile: the tile writes block_n // 2 output columns
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8  # row tiles that walk the weight's column tiles together (L2 reuse of the weight)
    persistent: bool = False  # one program per SM looping over tiles, instead of one program per tile


C = MatmulSiluConfig
CONFIGS = [  # bench/probe_swiglu.py's winners on an H100 (session 3): 128 x 256 tiles, 8 warps. Pointer loads
    # (cp.async) instead of descriptors ran 10-25% slower at every shape; 128 x 128 and 64 x 256 tiles lost too.
    # Shared memory = stages * (block_m + block_n) * block_k * 2 B (<= 227 KB on an H100).
    C(128, 256, 64, 8, 3), C(128, 256, 64, 8, 4), C(128, 256, 64, 8, 3, persistent=True),
]
del C
PLAN_POINTS = [256, 1024, 4096, 16384]  # row counts `plan` times; a call uses the largest point <= its rows


@triton.jit
def _matmul_silu_tile(x_desc, w_desc, out_ptr, tile, M, N, K, stride_om,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """One output tile. The tiles come in through tensor descriptors (Hopper's bulk copies; rows past the end
    read as zeros) and the out-of-range part is not stored."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n  # GROUP_M row tiles walk the column tiles together: they share weight tiles in L2
    first_m = (tile // per_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (tile % per_group) % size_m
    pid_n = (tile % per_group) // size_m
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kk in range(0, K, BLOCK_K):
        a = x_desc.load([pid_m * BLOCK_M, kk])
        b = w_desc.load([pid_n * BLOCK_N, kk])
        acc = tl.dot(a, tl.trans(b), acc)
    half: tl.constexpr = BLOCK_N // 2
    act = silu_pairs(acc, BLOCK_M, BLOCK_N, out_ptr.dtype.element_ty)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_o = pid_n * half + tl.arange(0, half)
    mask = (offs_m[:, None] < M) & (offs_o[None, :] < N // 2)
    tl.store(out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_o[None, :], act, mask=mask)


@triton.jit
def _matmul_silu_kernel(
    x_desc, w_desc, out_ptr, M, N, K, stride_om, num_programs,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PERSISTENT: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """out[M, N // 2] = silu_pairs(x[M, K] @ w[N, K].T); K a multiple of BLOCK_K (checked by the caller)."""
    pdl_start(USE_PDL)
    if PERSISTENT:
        num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
        for tile in range(tl.program_id(0), num_tiles, num_programs):
            _matmul_silu_tile(x_desc, w_desc, out_ptr, tile, M, N, K, stride_om, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    else:
        _matmul_silu_tile(x_desc, w_desc, out_ptr, tl.program_id(0), M, N, K, stride_om, BLOCK_M, BLOCK_N, BLOCK_K,
                          GROUP_M)


@functools.lru_cache(maxsize=8)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def fits(x: torch.Tensor, weight: torch.Tensor, config: MatmulSiluConfig) -> bool:
    """Whether `matmul_silu` takes these operands: matching K in whole tiles, an even N, and rows a tensor
    descriptor can address (unit stride along K; 16-byte aligned starts and row strides)."""
    return (
        x.dim() == 2 and weight.dim() == 2 and weight.shape[1] == x.shape[1] and weight.shape[0] % 2 == 0
        and x.shape[1] % config.block_k == 0
        and all(t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and t.stride(0) * t.element_size() % 16 == 0
                for t in (x, weight))
    )  # fmt: skip


def matmul_silu(x: torch.Tensor, weight: torch.Tensor, config: MatmulSiluConfig) -> torch.Tensor:
    """silu_mul_pairs(x @ weight.T) in one kernel: x [M, K], weight [N, K] interleaved (`interleave_gate_up`),
    operands as `fits` says -> [M, N // 2] in x's dtype."""
    c = config
    if not fits(x, weight, c):
        raise ValueError(f"matmul_silu needs matching K (a multiple of {c.block_k}), an even N and 16-byte aligned "
                         f"rows with unit stride; got x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    m, k = x.shape
    n = weight.shape[0]
    out = torch.empty((m, n // 2), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    tiles = triton.cdiv(m, c.block_m) * triton.cdiv(n, c.block_n)
    programs = min(tiles, _sm_count(x.device)) if c.persistent else tiles
    meta = dict(BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_K=c.block_k, GROUP_M=c.group_m, PERSISTENT=c.persistent,
                num_warps=c.num_warps, num_stages=c.num_stages, **launch_options())
    x_desc = TensorDescriptor.from_tensor(x, [c.block_m, c.block_k])
    w_desc = TensorDescriptor.from_tensor(weight, [c.block_n, c.block_k])
    _matmul_silu_kernel[(programs,)](x_desc, w_desc, out, m, n, k, out.stride(0), programs, **meta)
    return out


def cublas_silu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The unfused path for an interleaved weight: cuBLAS matmul, then the pairwise gating."""
    return silu_mul_pairs(F.linear(x, weight))


# ---------------------------------------------------------------------------------------------------------------------
# planning: which row counts the fused kernel wins at, on this device
# ---------------------------------------------------------------------------------------------------------------------

PlanKey = tuple[int, int]  # (N, K) of the interleaved weight


def time_us(x: torch.Tensor, weights: list[torch.Tensor], config: MatmulSiluConfig | None) -> float:
    """Per-call device time of the fused kernel (config) or cuBLAS + silu_mul_pairs (None), over the weights."""
    count = len(weights)

    def call(i: int) -> None:
        if config is None:
            cublas_silu(x, weights[i % count])
        else:
            matmul_silu(x, weights[i % count], config)

    return graph_time_us(call, max(2, count))


def plan(weight_groups: list[list[torch.Tensor]], points: list[int] | None = None,
         report: list | None = None) -> dict[PlanKey, list[tuple[int, MatmulSiluConfig | None]]]:
    """For each group of same-shaped interleaved weights: at each row count of `points` the fastest configuration
    when it beats cuBLAS + silu_mul_pairs by 2% (None where none does). `report` receives
    ((N, K, rows), cuBLAS us, best us, config)."""
    chosen: dict[PlanKey, list[tuple[int, MatmulSiluConfig | None]]] = {}
    for weights in weight_groups:
        n, k = weights[0].shape
        per_point: list[tuple[int, MatmulSiluConfig | None]] = []
        for rows in points or PLAN_POINTS:
            x = torch.randn(rows, k, dtype=weights[0].dtype, device=weights[0].device)
            ref = cublas_silu(x, weights[0]).float()
            base = time_us(x, weights, None)
            best, best_us = None, base
            for cfg in CONFIGS:
                if not fits(x, weights[0], cfg):
                    continue
                try:
                    out = matmul_silu(x, weights[0], cfg).float()
                    err = ((out - ref).norm() / ref.norm().clamp(min=1e-30)).item()
                    if not err < 2e-2:  # a safety net: never plan a configuration that computes something else
                        raise RuntimeError(f"relative error {err:.3g} against cuBLAS + silu_mul_pairs")
                    us = time_us(x, weights, cfg)
                except Exception as exc:  # noqa: BLE001 - a configuration this device cannot run is skipped
                    if report is not None:
                        report.append(((n, k, rows), None, None, f"{cfg} failed: {exc}"))
                    continue
                if us < best_us * 0.98:
                    best, best_us = cfg, us
            per_point.append((rows, best))
            if report is not None:
                report.append(((n, k, rows), round(base, 2), round(best_us, 2), best))
        chosen[(n, k)] = per_point
    return chosen


def planned_config(plan_rows: list[tuple[int, MatmulSiluConfig | None]] | None, rows: int
                   ) -> MatmulSiluConfig | None:
    """The configuration planned for the largest point <= rows (the smallest point below all of them)."""
    if not plan_rows:
        return None
    config = plan_rows[0][1]
    for point, cfg in plan_rows:
        if point <= rows:
            config = cfg
    return config
