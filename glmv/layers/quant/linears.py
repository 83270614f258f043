"""Quantized Linear objects for CUDA (the text decoder's matmuls): FP8 E4M3 and 4/8-bit integer weights.

Each keeps its weight in the form its kernels read and is handed its kernels at construction: at decode rows the
model's planned decode matmul (glmv.kernels.triton_gemv.gemv_quantized, where `GemvPlan` chose a configuration
for this format, shape and row count), else glmv.kernels.triton_fp8 / triton_w4a16. On the CPU the loaders
dequantize at load instead (glmv.layers.quant.loaders), so these classes run wherever Triton runs: CUDA, or its
interpreter in tests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from glmv.kernels.quantized_weight import QuantizedWeight
from glmv.layers.linear import GemvPlan
from glmv.layers.quant.unpack import Fp8Weight, IntWeight, pack_k

TENSOR_CORE_MIN_ROWS = 64  # below this a matmul is bound by weight reads: the weight-only kernel wins
DEQUANTIZE_MIN_ROWS = 256  # from here an integer weight is dequantized once and multiplied by cuBLAS


def _nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class PlannedDecode:
    """What both quantized Linears share: the decode matmul where the model's plan chose it for this weight, and
    the gate/up layout its SiLU-gating epilogue reads.

    `packed` is the weight as the decode matmul reads it; `interleave_gate_up` lays a [gate; up] stack out for
    the epilogue (once, at load), after which every product of this Linear must be gated pairwise
    (`gate_up_act`), and `dequantized()` is the interleaved weight (as a DenseLinear's is)."""

    packed: QuantizedWeight
    plan: GemvPlan
    bias: torch.Tensor | None
    gate_up_interleaved: bool = False

    def planned(self, x: torch.Tensor, silu_mul: bool = False) -> torch.Tensor | None:
        cfg = self.plan.quantized_config(self.packed, self.bias is not None, x.shape[0])
        if cfg is None:
            return None
        return self.plan.gemv_quantized(x, self.packed, self.bias, cfg, silu_mul)

    def gate_up_act(self, x: torch.Tensor, silu_mul_pairs) -> torch.Tensor:
        """up * silu(gate) of this interleaved gate/up Linear: in the decode matmul's epilogue where planned,
        else the product gated pairwise by `silu_mul_pairs`."""
        gated = self.planned(self.gathered(x), silu_mul=True)
        return gated if gated is not None else silu_mul_pairs(self(x))

    def gathered(self, x: torch.Tensor) -> torch.Tensor:
        """x with its channels in the order the packed weight's input channels are stored."""
        return x


class Fp8Linear(PlannedDecode):
    """E4M3 weight [out, in] with per-channel (or 128x128 block) float32 scales.

    Decode rows: the planned decode matmul, else the weight-only kernel (bf16 activations, weight widened in
    registers). Many rows on sm89+ with per-channel scales: activations quantized per token (or by the
    checkpoint's static input scale) into FP8 tensor cores (`tensor_core_matmul`, None where the GPU has none)."""

    def __init__(self, weight: Fp8Weight, bias: torch.Tensor | None, weight_only_matmul: Callable,
                 tensor_core_matmul: Callable | None, dtype: torch.dtype, input_scale: torch.Tensor | None = None,
                 plan: GemvPlan | None = None):
        self.w = weight
        self.packed = QuantizedWeight.fp8(weight.weight, weight.scale, weight.block)
        self.plan = plan if plan is not None else GemvPlan()
        self.dtype = dtype
        self.bias = bias
        self.input_scale = input_scale
        self.weight_only_matmul = weight_only_matmul
        self.tensor_core_matmul = tensor_core_matmul if weight.block is None else None
        self.out_features, self.in_features = int(weight.weight.shape[0]), int(weight.weight.shape[1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        planned = self.planned(x)
        if planned is not None:
            return planned
        if self.tensor_core_matmul is not None and x.shape[0] >= TENSOR_CORE_MIN_ROWS:
            return self.tensor_core_matmul(x, self.w.weight, self.w.scale, self.bias, self.input_scale)
        return self.weight_only_matmul(x, self.w.weight, self.w.scale, self.bias, self.w.block)

    def interleave_gate_up(self, interleave: Callable) -> None:
        self.packed = self.packed.interleaved_gate_up(interleave)
        self.w = Fp8Weight(self.packed.data.view(torch.float8_e4m3fn), self.packed.scale, self.w.block)
        self.gate_up_interleaved = True

    def dequantized(self) -> torch.Tensor:
        return self.w.dense(self.dtype)

    @property
    def nbytes(self) -> int:
        return _nbytes(self.w.weight, self.w.scale, self.bias, self.input_scale)


class IntLinear(PlannedDecode):
    """4- or 8-bit integer weight in the W4A16 kernel's layout (int32 words down K, float32 scales and zero
    points [groups, out]). Act-ordered (GPTQ desc_act) weights are stored with their input channels sorted by
    group; `perm` gathers the activations to match. Decode rows: the planned decode matmul, else `matmul`;
    prompts of DEQUANTIZE_MIN_ROWS rows or more: `prompt_matmul` (dequantize once, then cuBLAS)."""

    def __init__(self, weight: IntWeight, bias: torch.Tensor | None, matmul: Callable, dtype: torch.dtype,
                 plan: GemvPlan | None = None, prompt_matmul: Callable | None = None):
        perm = None
        q, g_idx = weight.q, weight.g_idx
        if weight.act_ordered:
            perm = torch.argsort(g_idx, stable=True)
            q, g_idx = q[:, perm], g_idx[perm]
            plain = torch.arange(q.shape[1], device=q.device) // weight.group_size
            if not torch.equal(g_idx, plain):
                raise ValueError("an act-ordered weight whose groups are not all of group_size channels")
        self.qweight = pack_k(q, weight.bits)
        self.scales = weight.scales.t().contiguous()
        self.zeros = weight.zeros.t().contiguous()
        self.perm = perm
        self.bias = bias
        self.bits = weight.bits
        self.group_size = weight.group_size
        self.dtype = dtype
        self.matmul = matmul
        self.prompt_matmul = prompt_matmul or matmul
        self.out_features, self.in_features = int(weight.q.shape[0]), int(weight.q.shape[1])
        self.plan = plan if plan is not None else GemvPlan()
        self._pack()

    def _pack(self) -> None:
        self.packed = QuantizedWeight.packed_int(self.qweight, self.scales, self.zeros, self.bits, self.group_size)

    def gathered(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.perm) if self.perm is not None else x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gathered(x)
        planned = self.planned(x)
        if planned is not None:
            return planned
        matmul = self.prompt_matmul if x.shape[0] >= DEQUANTIZE_MIN_ROWS else self.matmul
        return matmul(x, self.qweight, self.scales, self.zeros, self.bias, self.bits, self.group_size)

    def interleave_gate_up(self, interleave: Callable) -> None:
        packed = self.packed.interleaved_gate_up(interleave)
        self.qweight, self.scales, self.zeros = packed.data, packed.scale, packed.zeros
        self._pack()
        self.gate_up_interleaved = True

    def dequantized(self) -> torch.Tensor:
        per = 32 // self.bits
        shifts = torch.arange(per, device=self.qweight.device, dtype=torch.int32) * self.bits
        q = ((self.qweight[:, None, :] >> shifts[None, :, None]) & ((1 << self.bits) - 1)).reshape(-1, self.out_features)
        g = torch.arange(self.in_features, device=q.device) // self.group_size
        w = (q.float() - self.zeros[g]) * self.scales[g]  # [in (sorted), out]
        dense = torch.empty_like(w)
        if self.perm is None:
            dense = w
        else:
            dense[self.perm] = w
        return dense.t().contiguous().to(self.dtype)

    @property
    def nbytes(self) -> int:
        return _nbytes(self.qweight, self.scales, self.zeros, self.bias, self.perm)
