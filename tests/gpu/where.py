"""Where the GPU tests run: on CUDA, or on the CPU through Triton's interpreter (`TRITON_INTERPRET=1`, small shapes,
float32 where the interpreter's 16-bit dot is unreliable); skipped elsewhere (CI)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from glmv import kernels

GPU_TEST_MARKS = [
    pytest.mark.gpu,
    pytest.mark.skipif(not kernels.available(), reason="needs Triton with a CUDA device, or TRITON_INTERPRET=1"),
]
ON_GPU = torch.cuda.is_available() and not kernels.interpreting()
DEVICE = "cuda" if ON_GPU else "cpu"


def _triton_namespace() -> SimpleNamespace:
    """glmv's Triton kernels by their function names, imported from the modules that define them (only
    `available` and `interpreting` where they cannot run: the tests are then skipped)."""
    if not kernels.available():
        return SimpleNamespace(available=kernels.available, interpreting=kernels.interpreting)
    from glmv.kernels import triton_argmax, triton_attention, triton_fused, triton_gemv

    names = {m: [n for n in dir(m) if not n.startswith("_")] for m in (triton_attention, triton_fused, triton_argmax)}
    ns = {n: getattr(m, n) for m, ns_ in names.items() for n in ns_}
    ns.update(gemv=triton_gemv.gemv, plan_gemv=triton_gemv.plan, GemvConfig=triton_gemv.GemvConfig,
              available=kernels.available, interpreting=kernels.interpreting)
    return SimpleNamespace(**ns)


TRITON = _triton_namespace()
