"""GPU kernels (Triton): paged attention and fused layer steps; import-safe where Triton or CUDA is absent.

`available()` says whether the kernels can run here. The kernel functions load Triton on first use, so importing
`glmv.kernels` never fails on a machine without it (CI, CPU laptops):

    from glmv import kernels
    if kernels.available():
        out = kernels.paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale)

triton_attention: write_kv, paged_decode_attention, paged_prefill_attention (glmv/engine/attention.py's signatures).
triton_fused: rms_norm, residual_rms_norm, silu_mul, rotary_write_kv (glmv/models/glm4v.py's steps, one launch each),
rotary_half, rotary_half_pair and add_rms_norm (the vision tower's rotary and residual-add + norm), decode_step_inputs
(the decode graph's token gather + embedding), mrope_cos_sin (the decoder's rotary angles).
triton_gemv: gemv (decode-batch matmul, M <= 128, optionally split-K in one launch, optionally with the SwiGLU gating
in its epilogue) and plan_gemv (per-shape choice against cuBLAS, timed on the device).
triton_swiglu (imported directly): the gate/up matmul for many rows with the SiLU-gating in its epilogue, its
interleaved weight layout, the pairwise gating kernel, and its planner.
triton_argmax: argmax (a decode batch's greedy tokens from its logits, in two short launches).
pdl: programmatic dependent launch on Hopper (every kernel above launches with it where it works; GLMV_PDL=0: off).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

__all__ = [
    "available",
    "interpreting",
    "write_kv",
    "paged_decode_attention",
    "paged_prefill_attention",
    "DecodeTuning",
    "PrefillTuning",
    "rms_norm",
    "residual_rms_norm",
    "silu_mul",
    "rotary_write_kv",
    "rotary_half",
    "rotary_half_pair",
    "add_rms_norm",
    "gemv",
    "plan_gemv",
    "GemvConfig",
    "argmax",
    "decode_step_inputs",
    "mrope_cos_sin",
]

_ATTENTION_NAMES = {
    "write_kv",
    "paged_decode_attention",
    "paged_prefill_attention",
    "decode_num_splits",
    "DecodeTuning",
    "PrefillTuning",
}


_FUSED_NAMES = {"rms_norm", "residual_rms_norm", "silu_mul", "rotary_write_kv", "rotary_half", "rotary_half_pair",
                "add_rms_norm", "decode_step_inputs", "mrope_cos_sin"}
_GEMV_NAMES = {"gemv": "gemv", "plan_gemv": "plan", "GemvConfig": "GemvConfig"}
_MODULE_OF = {**dict.fromkeys(_ATTENTION_NAMES, "triton_attention"), **dict.fromkeys(_FUSED_NAMES, "triton_fused"),
              "argmax": "triton_argmax"}


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (TRITON_INTERPRET=1): for tests only."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available() -> bool:
    """True when Triton is installed and there is a CUDA device for it (or its CPU interpreter is switched on)."""
    if importlib.util.find_spec("triton") is None:
        return False
    if interpreting():
        return True
    import torch

    return torch.cuda.is_available()


def __getattr__(name: str) -> Any:
    if name in _GEMV_NAMES:
        try:
            module = importlib.import_module("glmv.kernels.triton_gemv")
        except ImportError as exc:
            raise AttributeError(f"glmv.kernels.{name} needs Triton, which failed to import: {exc}") from exc
        return getattr(module, _GEMV_NAMES[name])
    source = _MODULE_OF.get(name)
    if source is not None:
        try:
            module = importlib.import_module(f"glmv.kernels.{source}")
        except ImportError as exc:
            # An AttributeError keeps `getattr(kernels, name, None)` (the engine's backend probe) falling back quietly.
            raise AttributeError(f"glmv.kernels.{name} needs Triton, which failed to import: {exc}") from exc
        return getattr(module, name)
    raise AttributeError(f"module 'glmv.kernels' has no attribute {name!r}")
