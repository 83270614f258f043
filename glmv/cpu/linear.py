"""Decoder matmul weights pre-packed for oneDNN, the CPU's fast path for 16-bit matmuls.

A 16-bit `F.linear` on the CPU reaches oneDNN with a plain row-major weight, which oneDNN re-lays out into its
blocked format on every call. Packing each weight once at load time into that blocked format (a `torch._mkldnn`
tensor) and calling oneDNN's linear directly gives bit-identical results at about twice the speed for decode-sized
batches (measured on 2 AMD EPYC cores with AVX-512 bf16: a 5632x1024 weight at 1 row, 0.20 -> 0.10 ms; at 128 rows,
1.67 -> 1.49 ms). Packed weights replace the plain ones in place (no second copy); `linear` below is the one way to
multiply by either kind. Whether to pack is the kernel choice's (glmv.layers.kernels; GLMV_CPU_PACKED=0: never).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def packing_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """True where packed oneDNN weights apply: 16-bit weights on a CPU whose oneDNN runs them natively."""
    if device.type != "cpu":
        return False
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return False


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """A [out, in] weight in oneDNN's blocked layout (an opaque tensor only `linear` below can use)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias for a plain or a packed weight."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)
