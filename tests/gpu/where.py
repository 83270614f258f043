"""Where the GPU tests run: on CUDA, or on the CPU through Triton's interpreter (`TRITON_INTERPRET=1`, small shapes,
float32 where the interpreter's 16-bit dot is unreliable); skipped elsewhere (CI)."""

from __future__ import annotations

import pytest
import torch

from glmv import kernels

GPU_TEST_MARKS = [
    pytest.mark.gpu,
    pytest.mark.skipif(not kernels.available(), reason="needs Triton with a CUDA device, or TRITON_INTERPRET=1"),
]
ON_GPU = torch.cuda.is_available() and not kernels.interpreting()
DEVICE = "cuda" if ON_GPU else "cpu"
