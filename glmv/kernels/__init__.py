"""GPU kernels (Triton): paged attention, fused layer steps, the decode matmul and the greedy argmax.

Leaves: nothing here imports glmv above this package. Importing `glmv.kernels` itself never needs Triton; its
modules do, and are imported by name where they are chosen (glmv.layers.kernels), so a missing Triton is an
ImportError there, at start-up, never a quiet switch to other code:

triton_attention: write_kv, paged_decode_attention, paged_prefill_attention (glmv/layers/attention.py's contract).
triton_fused: rms_norm, residual_rms_norm, silu_mul, rotary_write_kv (the decoder's steps, one launch each),
rotary_half, rotary_half_pair and add_rms_norm (the vision tower's rotary and residual-add + norm), decode_step_inputs
(the decode graph's token gather + embedding), mrope_cos_sin (the decoder's rotary angles).
triton_gemv: gemv (decode-batch matmul, M <= 128, optionally split-K in one launch, optionally with the SwiGLU gating
in its epilogue) and plan (per-shape choice against cuBLAS, timed on the device).
triton_swiglu: the gate/up matmul for many rows with the SiLU-gating in its epilogue, its interleaved weight layout,
the pairwise gating kernel, and its planner.
triton_argmax: argmax (a decode batch's greedy tokens from its logits, in two short launches).
pdl: programmatic dependent launch on Hopper (every kernel above launches with it where it works).
"""

from __future__ import annotations

import importlib.util
import os


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
