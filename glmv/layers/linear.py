"""Linear: the seam every text-decoder matmul goes through, whatever format its weight is stored in.

Why a seam: a decoder layer multiplies by four weights (q/k/v stacked, o, gate/up stacked, down). Stored in bf16
they run on cuBLAS, on glmv's Triton decode matmul where its plan beats cuBLAS, or on oneDNN-packed weights on the
CPU; stored quantized (FP8, 4-bit) they need their own kernels. The model only calls `linear(x)`; which object it
calls is decided at load, by the checkpoint's format (a `LinearLoader`), and never looked up again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from glmv.cpu import linear as cpu_linear


@runtime_checkable
class Linear(Protocol):
    """y = x @ W.T + b for x [T, in_features] (contiguous, the activation dtype) -> [T, out_features]."""

    in_features: int
    out_features: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def dequantized(self) -> torch.Tensor:
        """The weight as a dense [out, in] tensor in the activation dtype (for references and tests)."""
        ...

    @property
    def nbytes(self) -> int:
        """Device bytes this layer holds (weights, scales, bias)."""
        ...


class GemvPlan:
    """Which decode-batch matmuls of one model run on glmv's Triton decode matmul, chosen by timing at graph
    capture: dense weights by (N, K, has bias, rows) against cuBLAS, quantized ones by (format tag, N, K, has bias,
    rows) against their own split-K kernels. Shared by every Linear of the model and by the SwiGLU dispatcher;
    empty (cuBLAS / oneDNN / the quantized kernels everywhere) until planned."""

    def __init__(self, gemv: Callable | None = None, gemv_quantized: Callable | None = None):
        self.gemv = gemv  # glmv.kernels.triton_gemv.gemv, or None where the device has no such kernel
        self.gemv_quantized = gemv_quantized  # triton_gemv.gemv_quantized, likewise
        self.configs: dict = {}

    def config(self, weight: torch.Tensor, has_bias: bool, rows: int):
        if not self.configs:
            return None
        return self.configs.get((weight.shape[0], weight.shape[1], has_bias, rows))

    def quantized_config(self, weight, has_bias: bool, rows: int):
        """The configuration for a glmv.kernels.quantized_weight.QuantizedWeight at `rows`, or None."""
        if not self.configs:
            return None
        return self.configs.get((weight.tag, weight.n, weight.k, has_bias, rows))


class DenseLinear:
    """A 16- or 32-bit weight: cuBLAS, the planned Triton decode matmul, or oneDNN's packed layout on the CPU."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, plan: GemvPlan):
        self.weight = weight
        self.bias = bias
        self.plan = plan
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.plan.config(self.weight, self.bias is not None, x.shape[0])
        if cfg is not None:
            return self.plan.gemv(x, self.weight, self.bias, cfg)
        return cpu_linear.linear(x, self.weight, self.bias)

    def with_argmax(self, x: torch.Tensor, argmax_out: torch.Tensor, argmax: Callable) -> torch.Tensor:
        """`self(x)`, and every row's argmax into argmax_out: from the decode matmul's epilogue where the plan put
        this weight on it (no bias, one K split), else by `argmax` over the product."""
        cfg = self.plan.config(self.weight, self.bias is not None, x.shape[0])
        if cfg is not None and cfg.split_k == 1 and self.bias is None:
            return self.plan.gemv(x, self.weight, None, cfg, argmax_out=argmax_out)
        out = self(x)
        argmax(out, out=argmax_out)
        return out

    def pack_for_cpu(self) -> bool:
        """Lay the weight out for oneDNN (in place; bit-identical products). False if it already is."""
        if self.weight.is_mkldnn:
            return False
        self.weight = cpu_linear.pack_weight(self.weight)
        return True

    def dequantized(self) -> torch.Tensor:
        if self.weight.is_mkldnn:
            raise ValueError("this weight is packed for oneDNN; its dense form is gone")
        return self.weight

    @property
    def nbytes(self) -> int:
        total = self.weight.numel() * self.weight.element_size()
        return total + (self.bias.numel() * self.bias.element_size() if self.bias is not None else 0)


class LinearLoader(Protocol):
    """Builds one Linear from the checkpoint; `parts` are concatenated along the output dim in order. Parts are
    text-module names relative to the decoder (`layers.3.self_attn.q_proj`), resolved by the reader's prefixes.
    `plan` is the model's decode-matmul plan, which every Linear it builds consults."""

    def load(self, reader, parts: list[str], bias: bool, plan: GemvPlan) -> Linear: ...


class DenseLinearLoader:
    """bf16 / fp16 / fp32 checkpoints: `<part>.weight` (and `<part>.bias`) read in the model dtype."""

    def load(self, reader, parts: list[str], bias: bool, plan: GemvPlan) -> DenseLinear:
        weights = [reader.text(p + ".weight") for p in parts]
        weight = weights[0] if len(weights) == 1 else torch.cat(weights, dim=0)
        del weights
        b = None
        if bias:
            biases = [reader.text(p + ".bias") for p in parts]
            b = biases[0] if len(biases) == 1 else torch.cat(biases, dim=0)
        return DenseLinear(weight, b, plan)
