"""LinearLoaders for quantized checkpoints and online FP8, chosen once from the scheme (glmv.layers.quant.schemes).

Each loader reads one decoder matmul's parts in its format, stacks them along the output dim, and builds either
the quantized Linear its kernels run (CUDA) or, on the CPU, a DenseLinear of the dequantized weight in the model
dtype (so the CPU engine serves every format, and oneDNN packs it like any dense weight). Modules a checkpoint
leaves unquantized (compressed-tensors `ignore`, fp8 `modules_to_not_convert`, GPTQ `dynamic` "-:" rules) load
dense, as the checkpoint stores them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from glmv.layers.checkpoint import TEXT_PREFIXES, CheckpointError
from glmv.layers.linear import DenseLinear, GemvPlan, Linear, LinearLoader
from glmv.layers.quant import unpack
from glmv.layers.quant.linears import Fp8Linear, IntLinear
from glmv.layers.quant.schemes import (
    AwqGemm,
    BlockFp8,
    CompressedFp8,
    CompressedInt,
    Gptq,
    OnlineFp8,
    Scheme,
    is_ignored,
    scheme_from_config,
)

Part = unpack.IntWeight | unpack.Fp8Weight | torch.Tensor  # a dense tensor: the module is stored unquantized


@dataclass(frozen=True)
class QuantKernels:
    """The matmuls quantized Linears call on this device (None on the CPU, where weights are dequantized)."""

    fp8_weight_only: Callable
    fp8_tensor_core: Callable | None  # sm89+ only
    int_matmul: Callable
    int_prompt_matmul: Callable  # many rows: dequantize once, then a dense matmul

    @classmethod
    def for_device(cls, device: torch.device) -> QuantKernels | None:
        from glmv import kernels

        if device.type != "cuda" and not kernels.interpreting():
            return None
        from glmv.kernels import triton_fp8, triton_w4a16

        tensor_cores = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
        return cls(triton_fp8.fp8_matmul, triton_fp8.scaled_mm if tensor_cores else None, triton_w4a16.int_matmul,
                   triton_w4a16.prompt_matmul)


def choose_linear_loader(raw_config: dict, quantization: str | None, device: torch.device,
                         kernels: QuantKernels | None = None) -> LinearLoader | None:
    """The loader for this checkpoint (config.json as a dict) and `--quantization`; None for dense weights.
    Raises QuantizationError for formats glmv does not serve."""
    scheme = scheme_from_config(raw_config, quantization)
    if scheme is None:
        return None
    device = torch.device(device)
    return QuantLinearLoader(scheme, kernels if kernels is not None else QuantKernels.for_device(device))


class QuantLinearLoader:
    """Reads every part of one matmul in the scheme's layout and builds its Linear."""

    def __init__(self, scheme: Scheme, kernels: QuantKernels | None):
        self.scheme = scheme
        self.kernels = kernels

    def load(self, reader, parts: list[str], bias: bool, plan: GemvPlan) -> Linear:
        read = [self._read_part(reader, p) for p in parts]
        b = None
        if bias:
            biases = [reader.text(p + ".bias") for p in parts]
            b = biases[0] if len(biases) == 1 else torch.cat(biases)
        dense = [isinstance(r, torch.Tensor) for r in read]
        if all(dense):
            return DenseLinear(read[0] if len(read) == 1 else torch.cat(read), b, plan)
        if any(dense):
            raise CheckpointError(f"{parts}: some of these fused parts are quantized and some are not; glmv fuses "
                                  "only parts stored alike")
        input_scale = None
        if isinstance(read[0], unpack.IntWeight):
            weight = unpack.cat_int(read)
        else:
            weight = unpack.cat_fp8(read)
            scales = [self._input_scale(reader, p) for p in parts]
            input_scale = torch.stack(scales).amax() if scales[0] is not None else None
        if self.kernels is None:
            return DenseLinear(weight.dense(reader.dtype).contiguous(), b, plan)
        if isinstance(weight, unpack.IntWeight):
            return IntLinear(weight, b, self.kernels.int_matmul, reader.dtype, plan, self.kernels.int_prompt_matmul)
        return Fp8Linear(weight, b, self.kernels.fp8_weight_only, self.kernels.fp8_tensor_core, reader.dtype,
                         input_scale, plan)

    # ---- one part, by format ----
    def _name(self, reader, part: str, suffix: str) -> str | None:
        return reader.resolve(f"{part}.{suffix}", TEXT_PREFIXES)

    def _need(self, reader, part: str, suffix: str, dtype: torch.dtype) -> torch.Tensor:
        name = self._name(reader, part, suffix)
        if name is None:
            raise CheckpointError(f"{reader.path}: '{part}.{suffix}' is missing; the checkpoint's "
                                  f"quantization_config says {type(self.scheme).__name__}.")
        return reader.get(name, dtype)

    def _module(self, reader, part: str) -> str:
        for suffix in ("weight", "weight_packed", "qweight"):
            name = self._name(reader, part, suffix)
            if name is not None:
                return name.rsplit(".", 1)[0]
        raise CheckpointError(f"{reader.path}: no weight for '{part}' (looked for weight, weight_packed, qweight).")

    def _input_scale(self, reader, part: str) -> torch.Tensor | None:
        if isinstance(self.scheme, CompressedFp8) and self.scheme.static_input:
            return self._need(reader, part, "input_scale", torch.float32).reshape(())
        return None

    def _read_part(self, reader, part: str) -> Part:
        s = self.scheme
        module = self._module(reader, part)
        if isinstance(s, OnlineFp8):  # from the stored precision (not the model dtype), as `glmv quantize` does
            return unpack.quantize_fp8_rows(self._need(reader, part, "weight", torch.float32))
        if isinstance(s, (CompressedFp8, BlockFp8, CompressedInt, AwqGemm)) and is_ignored(module, s.ignore):
            return reader.text(part + ".weight")
        if isinstance(s, CompressedFp8):
            w = self._need(reader, part, "weight", torch.float8_e4m3fn)
            return unpack.fp8_channel(w, self._need(reader, part, "weight_scale", torch.float32))
        if isinstance(s, BlockFp8):
            w = self._need(reader, part, "weight", torch.float8_e4m3fn)
            return unpack.fp8_block(w, self._need(reader, part, "weight_scale_inv", torch.float32), s.block[1])
        if isinstance(s, CompressedInt):
            zp = None
            if not s.layer.symmetric:
                zp = self._need(reader, part, "weight_zero_point", torch.int32)
            return unpack.compressed_pack(self._need(reader, part, "weight_packed", torch.int32),
                                          self._need(reader, part, "weight_scale", torch.float32), zp,
                                          self._need(reader, part, "weight_shape", torch.int64), s.layer.bits,
                                          s.layer.group_size)
        if isinstance(s, AwqGemm):
            return unpack.awq_gemm(self._need(reader, part, "qweight", torch.int32),
                                   self._need(reader, part, "qzeros", torch.int32),
                                   self._need(reader, part, "scales", torch.float32), s.layer.group_size)
        if isinstance(s, Gptq):
            layer = s.layer_for(module)
            if layer is None:
                return reader.text(part + ".weight")
            g_name = self._name(reader, part, "g_idx")
            g_idx = reader.get(g_name, torch.int64) if g_name is not None else None
            return unpack.gptq(self._need(reader, part, "qweight", torch.int32),
                               self._need(reader, part, "qzeros", torch.int32),
                               self._need(reader, part, "scales", torch.float32), g_idx, layer.bits,
                               layer.group_size, s.zero_offset)
        raise TypeError(f"no reader for {s!r}")
