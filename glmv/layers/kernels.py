"""Kernels: the one choice of every kernel a model calls, made once per model from KernelOptions and handed in.

Why a typed, frozen choice: the decoder, the vision tower, the SwiGLU dispatcher and the model runner all call the
same steps (norms, rotary, KV writes, paged attention, the decode matmul, the greedy argmax). Choosing each of them
in one place, logging the choice, and handing the result to every consumer at construction means a typo or a
missing library fails at start-up with a sentence instead of quietly running other code, and there is one forward
path per model: the PyTorch references (glmv.layers.torch_ops) have the same signatures as the Triton and C kernels.

The sets:
- "torch": every step in PyTorch (any device; KernelOptions.attention == "torch" forces it).
- "cpu": glmv's C kernels (glmv.cpu.ops) for the decoder's norms, gating, rotary + KV write and decode attention, on
  the CPU in bfloat16; PyTorch for the rest (and everywhere on the CPU in float32, where exactness tests run).
- "triton": glmv.kernels on CUDA (or under Triton's CPU interpreter for tests), with the decode matmul, the fused
  gate/up matmul and programmatic dependent launch as the options allow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import torch

from glmv.layers import attention as torch_attention
from glmv.layers import torch_ops
from glmv.options import KernelOptions

log = logging.getLogger("glmv.kernels")


class KernelUnavailableError(RuntimeError):
    """A kernel set the options ask for cannot run here (no Triton, C kernels that do not build)."""


@dataclass(frozen=True)
class Kernels:
    """Every step a model calls, by role. Fields are plain callables with the signatures of glmv.layers.torch_ops
    and glmv.layers.attention; `swiglu`, `gemv` and `plan_gemv` are None where the device has no such kernel."""

    name: str
    write_kv: Callable
    paged_decode_attention: Callable
    paged_prefill_attention: Callable
    rms_norm: Callable
    residual_rms_norm: Callable
    add_rms_norm: Callable
    silu_mul: Callable
    rotary_write_kv: Callable
    rotary_half_pair: Callable
    mrope_cos_sin: Callable
    decode_step_inputs: Callable
    argmax: Callable
    swiglu: ModuleType | None = None  # glmv.kernels.triton_swiglu: the gating in the gate/up matmul's epilogue
    gemv: Callable | None = None  # glmv.kernels.triton_gemv.gemv: the decode-batch matmul
    plan_gemv: Callable | None = None  # its planner against cuBLAS
    gemv_quantized: Callable | None = None  # triton_gemv.gemv_quantized: the same on FP8 / integer weights
    plan_gemv_quantized: Callable | None = None  # its planner against the formats' own kernels
    plan_swiglu: Callable | None = None  # the fused gate/up matmul's planner (triton_swiglu.plan, maybe cached)
    native_decode_attention: bool = False  # decode attention reads only each sequence's blocks (graphs pay off)
    vision_graphs: bool = False  # record the vision tower as CUDA graphs per input shape
    cpu_packed: bool = False  # oneDNN-packed matmul weights on the CPU

    def describe(self) -> str:
        extras = [n for n, on in (("swiglu", self.swiglu is not None), ("gemv", self.gemv is not None),
                                  ("vision-graphs", self.vision_graphs), ("cpu-packed", self.cpu_packed)) if on]
        return self.name + (f" ({', '.join(extras)})" if extras else "")


TORCH_KERNELS = Kernels(
    name="torch",
    write_kv=torch_attention.write_kv,
    paged_decode_attention=torch_attention.paged_decode_attention,
    paged_prefill_attention=torch_attention.paged_prefill_attention,
    rms_norm=torch_ops.rms_norm,
    residual_rms_norm=torch_ops.residual_rms_norm,
    add_rms_norm=torch_ops.add_rms_norm,
    silu_mul=torch_ops.silu_mul,
    rotary_write_kv=torch_ops.rotary_write_kv,
    rotary_half_pair=torch_ops.rotary_half_pair,
    mrope_cos_sin=torch_ops.mrope_cos_sin,
    decode_step_inputs=torch_ops.decode_step_inputs,
    argmax=torch_ops.argmax,
)


def select_kernels(device: torch.device | str, dtype: torch.dtype, options: KernelOptions) -> Kernels:
    """The kernel set for a model on `device` in `dtype` under `options` (logged once)."""
    device = torch.device(device)
    if options.attention == "torch":
        chosen = TORCH_KERNELS
    elif device.type == "cuda":
        chosen = _triton_kernels(dtype, options)
    elif device.type == "cpu":
        chosen = _cpu_kernels(dtype, options)
    else:
        chosen = TORCH_KERNELS
    log.info("kernels on %s %s: %s [%s]", device, str(dtype).removeprefix("torch."), chosen.describe(),
             options.describe())
    return chosen


def _cpu_kernels(dtype: torch.dtype, options: KernelOptions) -> Kernels:
    from glmv.cpu import linear as cpu_linear

    packed = options.cpu_packed and cpu_linear.packing_supported(torch.device("cpu"), dtype)
    if dtype != torch.bfloat16 or not (options.fused and options.cpu_kernels):
        return replace(TORCH_KERNELS, cpu_packed=packed)
    from glmv.cpu import build, ops

    if not ops.available():
        raise KernelUnavailableError(
            f"glmv's CPU kernels did not build here ({build.load_error()}); install a C compiler (gcc) or set "
            "GLMV_CPU_KERNELS=0 to run the PyTorch steps instead.")
    return replace(TORCH_KERNELS, name="cpu", rms_norm=ops.rms_norm, residual_rms_norm=ops.residual_rms_norm,
                   silu_mul=ops.silu_mul, rotary_write_kv=ops.rotary_write_kv,
                   paged_decode_attention=ops.paged_decode_attention, native_decode_attention=True,
                   cpu_packed=packed)


def _triton_kernels(dtype: torch.dtype, options: KernelOptions) -> Kernels:
    try:
        from glmv.kernels import pdl, triton_argmax, triton_attention, triton_fused, triton_gemv, triton_swiglu
    except ImportError as exc:
        raise KernelUnavailableError(
            f"glmv's CUDA kernels need Triton, which failed to import ({exc}); install triton (it comes with "
            "PyTorch's CUDA builds) or set GLMV_ATTENTION=torch to run the PyTorch steps instead.") from exc
    pdl.allow(options.pdl)
    triton_gemv.set_prefetch_window(options.gemv_prefetch_mb)
    chosen = replace(TORCH_KERNELS, name="triton", write_kv=triton_attention.write_kv,
                     paged_decode_attention=triton_attention.paged_decode_attention,
                     paged_prefill_attention=triton_attention.paged_prefill_attention, native_decode_attention=True,
                     vision_graphs=options.vision_graphs)
    if not options.fused:
        return chosen
    sixteen_bit = dtype in (torch.bfloat16, torch.float16)
    plan_gemv, plan_swiglu, plan_quantized = triton_gemv.plan, triton_swiglu.plan, triton_gemv.plan_quantized
    if options.plan_cache_dir is not None:  # timed once per device, driver, library versions and shapes
        from glmv.kernels import plan_cache as pc

        cache = pc.PlanCache(Path(options.plan_cache_dir))
        plan_gemv = pc.cached_gemv_planner(cache, options.gemv_prefetch_mb)
        plan_swiglu = pc.cached_swiglu_planner(cache)
        plan_quantized = pc.cached_quantized_gemv_planner(cache, options.gemv_prefetch_mb)
    return replace(
        chosen,
        rms_norm=triton_fused.rms_norm,
        residual_rms_norm=triton_fused.residual_rms_norm,
        add_rms_norm=triton_fused.add_rms_norm,
        silu_mul=triton_fused.silu_mul,
        rotary_write_kv=triton_fused.rotary_write_kv,
        rotary_half_pair=triton_fused.rotary_half_pair,
        mrope_cos_sin=_strided_or_reference(triton_fused.mrope_cos_sin),
        decode_step_inputs=triton_fused.decode_step_inputs,
        argmax=triton_argmax.argmax,
        swiglu=triton_swiglu if options.swiglu else None,
        gemv=triton_gemv.gemv if options.gemv and sixteen_bit else None,
        plan_gemv=plan_gemv if options.gemv and sixteen_bit else None,
        gemv_quantized=triton_gemv.gemv_quantized if options.gemv else None,
        plan_gemv_quantized=plan_quantized if options.gemv else None,
        plan_swiglu=plan_swiglu if options.swiglu else None,
    )


def _strided_or_reference(kernel: Callable) -> Callable:
    """The Triton rotary-angle kernel reads positions with a unit last stride; other layouts take the reference."""

    def mrope_cos_sin(positions, cos_table, sin_table, row_of_freq, dtype):
        if positions.stride(-1) == 1:
            return kernel(positions, cos_table, sin_table, row_of_freq, dtype)
        return torch_ops.mrope_cos_sin(positions, cos_table, sin_table, row_of_freq, dtype)

    return mrope_cos_sin
