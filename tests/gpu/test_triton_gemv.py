"""The decode-batch GEMV kernel against a float64 reference, and its planner (never slower than F.linear by plan).

GPU tests: CUDA, or the CPU through `TRITON_INTERPRET=1` (float32 there: the interpreter's 16-bit dot is unreliable).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from glmv import kernels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not kernels.available(), reason="needs Triton with a CUDA device, or TRITON_INTERPRET=1"),
]

ON_GPU = torch.cuda.is_available() and not kernels.interpreting()
DEVICE = "cuda" if ON_GPU else "cpu"
DTYPES = [torch.bfloat16, torch.float16] if ON_GPU else [torch.float32]
SHAPES = [(64, 200), (48, 256)] + ([(4608, 4096), (4096, 13696)] if ON_GPU else [])  # (N, K); K=200 is ragged


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("rows", [1, 3, 16, 40, 128])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemv_matches_float64(n, k, rows, with_bias, dtype):
    from glmv.kernels.triton_gemv import CONFIGS, block_m

    gen = torch.Generator().manual_seed(n * 7 + k + rows)
    x = torch.randn(rows, k, generator=gen).to(dtype).to(DEVICE)
    w = (torch.randn(n, k, generator=gen) / k**0.5).to(dtype).to(DEVICE)
    b = torch.randn(n, generator=gen).to(dtype).to(DEVICE) if with_bias else None
    ref = x.double() @ w.double().t() + (b.double() if b is not None else 0)
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    for cfg in CONFIGS[block_m(rows)]:
        out = kernels.gemv(x, w, b, cfg)
        assert out.shape == (rows, n) and out.dtype == dtype and torch.isfinite(out).all()
        assert relative_error(out, ref) < tol, cfg
    if dtype != torch.float32:  # as close to the reference as cuBLAS is (within 2x its error)
        out = kernels.gemv(x, w, b, CONFIGS[block_m(rows)][0])
        assert relative_error(out, ref) <= 2 * relative_error(F.linear(x, w, b), ref)


def test_gemv_refuses_more_rows_than_it_pads_to():
    from glmv.kernels.triton_gemv import CONFIGS, MAX_ROWS

    x = torch.zeros(MAX_ROWS + 1, 32, device=DEVICE)
    with pytest.raises(ValueError, match="rows"):
        kernels.gemv(x, torch.zeros(16, 32, device=DEVICE), None, CONFIGS[16][0])


@pytest.mark.skipif(not ON_GPU, reason="times kernels in CUDA graphs")
def test_plan_keeps_only_configs_that_beat_cublas():
    gen = torch.Generator().manual_seed(0)
    weights = [(torch.randn(4096, 4096, generator=gen) * 0.02).to(torch.bfloat16).cuda() for _ in range(4)]
    report: list = []
    chosen = kernels.plan_gemv([(weights, None)], [1, 8, 64], report=report)
    print(report)
    assert sorted({r[0][3] for r in report}) == [1, 16, 64]  # the plan points that 1, 8 and 64 map to
    assert all(best_us <= cublas_us for _, cublas_us, best_us, _ in report if best_us is not None)
    point_of = {1: 1, 8: 16, 64: 64}
    for rows, point in point_of.items():
        cfg = next(r[3] for r in report if r[0][3] == point and r[1] is not None)
        assert chosen.get((4096, 4096, False, rows)) == cfg
