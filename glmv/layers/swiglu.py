"""The SwiGLU MLP's first half, act = up * silu(gate), computed from x and a stacked gate/up weight by the fastest
path this device has; shared by the text decoder, the vision tower and its merger.

Why a dispatcher: on CUDA with glmv's Triton kernels the gating runs in the matmul's epilogue (glmv.kernels.
triton_swiglu), which needs the weight's rows interleaved [g0, u0, g1, u1, ...]; `prepare` does that once at load,
and from then on every product with that weight must gate pairwise. Which kernel wins depends on the row count: the
Triton decode matmul with its epilogue (rows <= 128, where plan_gemv chose it), the large-row fused matmul (where
`plan` found it faster), or cuBLAS + the pairwise gating. Quantized gate/up weights are interleaved the same way
(their Linear gates in the decode matmul's epilogue where planned, else after its product). Elsewhere (CPU,
GLMV_SWIGLU=0) the weight stays stacked and the gating is a separate step.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F

from glmv.layers.linear import DenseLinear, GemvPlan, Linear
from glmv.layers.quant.linears import PlannedDecode


class GateUpAct:
    """`gate_up_act(x, linear)` -> up * silu(gate) for a decoder Linear; `dense(x, weight)` for a plain stacked
    weight (the vision tower); `prepare` lays a dense weight out for the fused gating once, at load."""

    def __init__(self, kernels: ModuleType | None, silu_mul: Callable[[torch.Tensor], torch.Tensor], plan: GemvPlan,
                 planner: Callable | None = None):
        self.kernels = kernels  # glmv.kernels.triton_swiglu, or None: stacked weights, gating as a separate step
        # kernels.plan, or the same behind the on-disk plan cache (glmv/kernels/plan_cache.py)
        self.planner = planner if planner is not None else (kernels.plan if kernels is not None else None)
        self.silu_mul = silu_mul  # the stacked-layout gating (Triton, C or PyTorch)
        self.large_plan: dict[tuple[int, int], list] = {}  # (N, K) -> [(rows, MatmulSiluConfig | None)]
        self.small_plan = plan  # the model's decode-matmul plan (its configs carry the gating epilogue)

    @property
    def interleaved(self) -> bool:
        return self.kernels is not None

    def prepare(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight as this dispatcher multiplies it (interleaved rows when the fused kernels are in use)."""
        return self.kernels.interleave_gate_up(weight) if self.kernels is not None else weight

    def __call__(self, x: torch.Tensor, linear: Linear) -> torch.Tensor:
        """x [rows, K] through a decoder gate/up Linear -> up * silu(gate) [rows, N // 2]. Dense weights gate in
        the matmul where the fused kernels run; every other format multiplies first and gates after."""
        if self.interleaved and isinstance(linear, DenseLinear):
            return self.dense(x, linear.weight)
        if isinstance(linear, PlannedDecode) and linear.gate_up_interleaved:
            return linear.gate_up_act(x, self.kernels.silu_mul_pairs)
        return self.silu_mul(linear(x))

    def dense(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x [rows, K] @ weight (as `prepare` left it) -> up * silu(gate) [rows, N // 2]."""
        sw = self.kernels
        if sw is None:
            return self.silu_mul(F.linear(x, weight))
        rows = x.shape[0]
        cfg = self.small_plan.config(weight, False, rows)
        if cfg is not None:
            return self.small_plan.gemv(x, weight, None, cfg, True)
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
            self.large_plan.update(self.planner([weights], points, report))
            used += sum(cfg is not None for _, cfg in self.large_plan[tuple(weights[0].shape)])
        return used
