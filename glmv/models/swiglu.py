"""The SwiGLU MLP's first half, act = up * silu(gate), computed from x and a stacked gate/up weight by the fastest
path this device has; shared by the text decoder, the vision tower and its merger.

Why a dispatcher: on CUDA with glmv's Triton kernels the gating runs in the matmul's epilogue (glmv.kernels.
triton_swiglu), which needs the weight's rows interleaved [g0, u0, g1, u1, ...]; `prepare` does that once at load,
and from then on every product with that weight must gate pairwise. Which kernel wins depends on the row count: the
Triton decode matmul with its epilogue (rows <= 128, where plan_gemv chose it), the large-row fused matmul (where
`plan` found it faster), or cuBLAS + the pairwise gating. Elsewhere (CPU, GLMV_SWIGLU=0, no Triton) the weight stays
stacked and the gating is a separate step, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

Linear = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GateUpAct:
    """`gate_up_act(x, weight, linear)` -> up * silu(gate); `prepare(weight)` lays a stacked weight out for it."""

    def __init__(self, kernels: Any = None, silu_mul: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.kernels = kernels  # glmv.kernels.triton_swiglu, or None: stacked weights, gating as a separate step
        self.silu_mul = silu_mul  # the separate stacked-layout gating kernel (Triton or C), or None: PyTorch ops
        self.large_plan: dict[tuple[int, int], list] = {}  # (N, K) -> [(rows, MatmulSiluConfig | None)]
        self.small_plan: dict = {}  # the model's gemv plan: (N, K, False, rows) -> GemvConfig with the epilogue
        self.gemv: Callable | None = None

    @property
    def interleaved(self) -> bool:
        return self.kernels is not None

    def prepare(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight as this dispatcher multiplies it (interleaved rows when the fused kernels are in use)."""
        return self.kernels.interleave_gate_up(weight) if self.kernels is not None else weight

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, linear: Linear = F.linear) -> torch.Tensor:
        """x [rows, K] @ weight (as `prepare` left it) -> up * silu(gate) [rows, N // 2]. `linear` is the caller's
        matmul for the unfused path (the text decoder's picks cuBLAS, Triton or oneDNN per shape)."""
        sw = self.kernels
        if sw is None:
            gate_up = linear(x, weight)
            if self.silu_mul is not None:
                return self.silu_mul(gate_up)
            gate, up = gate_up.chunk(2, dim=-1)
            return up * F.silu(gate)
        rows = x.shape[0]
        if self.gemv is not None:
            cfg = self.small_plan.get((weight.shape[0], weight.shape[1], False, rows))
            if cfg is not None:
                return self.gemv(x, weight, None, cfg, True)
        cfg = sw.planned_config(self.large_plan.get(tuple(weight.shape)), rows) if rows > 128 else None
        if cfg is not None and sw.fits(x, weight, cfg):
            return sw.matmul_silu(x, weight, cfg)
        return sw.cublas_silu(x, weight)

    def plan(self, weight_groups: list[tuple[list[torch.Tensor], int]], report: list | None = None) -> int:
        """Time the large-row fused matmul against cuBLAS + gating for each group of same-shaped (prepared) weights,
        at the plan points up to that group's most rows. Returns how many (shape, rows) points use it."""
        if self.kernels is None:
            return 0
        used = 0
        for weights, max_rows in weight_groups:
            points = [p for p in self.kernels.PLAN_POINTS if p <= max_rows] or [self.kernels.PLAN_POINTS[0]]
            self.large_plan.update(self.kernels.plan([weights], points, report))
            used += sum(cfg is not None for _, cfg in self.large_plan[tuple(weights[0].shape)])
        return used
