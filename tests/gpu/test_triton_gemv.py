"""The decode-batch GEMV kernel against a float64 reference, and its planner (never slower than F.linear by plan).

GPU tests: CUDA, or the CPU through `TRITON_INTERPRET=1` (float32 there: the interpreter's 16-bit dot is unreliable).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.gpu.where import DEVICE, GPU_TEST_MARKS, ON_GPU
from tests.gpu.where import TRITON as kernels

pytestmark = GPU_TEST_MARKS
DTYPES = [torch.bfloat16, torch.float16] if ON_GPU else [torch.float32]
SHAPES = [(64, 200), (48, 256)] + ([(4608, 4096), (4096, 13696)] if ON_GPU else [])  # (N, K); K=200 is ragged


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("rows", [1, 3, 16, 40, 128])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemv_matches_float64(n, k, rows, with_bias, dtype):
    from glmv.kernels.triton_gemv import CONFIGS, block_m, candidates

    gen = torch.Generator().manual_seed(n * 7 + k + rows)
    x = torch.randn(rows, k, generator=gen).to(dtype).to(DEVICE)
    w = (torch.randn(n, k, generator=gen) / k**0.5).to(dtype).to(DEVICE)
    b = torch.randn(n, generator=gen).to(dtype).to(DEVICE) if with_bias else None
    ref = x.double() @ w.double().t() + (b.double() if b is not None else 0)
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    configs = candidates(rows, False) if dtype != torch.float16 else CONFIGS[block_m(rows)][:1]  # compile time
    for cfg in configs:
        out = kernels.gemv(x, w, b, cfg)
        assert out.shape == (rows, n) and out.dtype == dtype and torch.isfinite(out).all()
        assert relative_error(out, ref) < tol, cfg
    if dtype != torch.float32:  # as close to the reference as cuBLAS is (within 2x its error)
        out = kernels.gemv(x, w, b, CONFIGS[block_m(rows)][0])
        assert relative_error(out, ref) <= 2 * relative_error(F.linear(x, w, b), ref)


@pytest.mark.parametrize("rows", [1, 5, 64, 128])
def test_argmax_epilogue_gives_torch_argmax_of_the_output(rows):
    """The lm_head's greedy tokens from the decode matmul's epilogue: the output is unchanged, and argmax_out holds
    torch.argmax of it (first index among ties, here planted across tiles and within one)."""
    from glmv.kernels.triton_gemv import CONFIGS, candidates

    dtype = DTYPES[0]
    n, k = (151552, 4096) if ON_GPU else (300, 64)
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, k, generator=gen).to(dtype).to(DEVICE)
    w = (torch.randn(n, k, generator=gen) / k**0.5).to(dtype)
    w[n - 1] = w[7] = w[n // 2] = 0.5 * torch.sign(x[0].float().cpu()).to(dtype)  # one big logit thrice in row 0
    w[8] = w[7]
    w = w.to(DEVICE)
    for cfg in [c for c in candidates(rows, False) if c.split_k == 1][:3] + ([c for c in candidates(rows, False)
                                                                              if c.fma and c.split_k == 1])[:1]:
        plain = kernels.gemv(x, w, None, cfg)
        tokens = torch.full((rows,), -1, dtype=torch.int64, device=DEVICE)
        out = kernels.gemv(x, w, None, cfg, argmax_out=tokens)
        assert torch.equal(out, plain), cfg
        assert torch.equal(tokens, out.argmax(dim=-1)), cfg
        assert int(tokens[0]) in (7, 8), cfg  # the planted rows' first (equal rows may still round apart)
    with pytest.raises(ValueError, match="argmax epilogue"):
        kernels.gemv(x, w, None, CONFIGS[16][2], argmax_out=tokens)


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


@pytest.mark.parametrize("split_k", [2, 3, 8])
def test_split_k_is_deterministic_and_rearms_its_counters(split_k):
    """The last program of each n-block reduces the partials in split order: the same bits on every call, graph
    replays included, and the arrival counters are back at zero after each launch."""
    from glmv.kernels.triton_gemv import _COUNTERS, GemvConfig

    dtype = DTYPES[0]
    gen = torch.Generator().manual_seed(split_k)
    n, k = (4608, 4096) if ON_GPU else (96, 512)
    cfg = GemvConfig(32, 128, 4, 3, split_k)
    x = torch.randn(2, k, generator=gen).to(dtype).to(DEVICE)
    w = (torch.randn(n, k, generator=gen) / k**0.5).to(dtype).to(DEVICE)
    b = torch.randn(n, generator=gen).to(dtype).to(DEVICE)
    ref = x.double() @ w.double().t() + b.double()
    first = kernels.gemv(x, w, b, cfg)
    assert relative_error(first, ref) < (1e-5 if dtype == torch.float32 else 8e-3)
    for _ in range(3):
        assert torch.equal(kernels.gemv(x, w, b, cfg), first)
    assert int(_COUNTERS[x.device].abs().sum()) == 0
    if ON_GPU:
        out = torch.full((2, n), float("nan"), dtype=dtype, device=DEVICE)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out.copy_(kernels.gemv(x, w, b, cfg))
        for _ in range(5):
            out.fill_(float("nan"))
            graph.replay()
            assert torch.equal(out, first)
        x2 = torch.randn(2, k, generator=gen).to(dtype).to(DEVICE)
        x.copy_(x2)  # new input into the captured buffer: the replay computes the new product
        graph.replay()
        assert torch.equal(out, kernels.gemv(x2, w, b, cfg))


def test_split_k_more_splits_than_k_tiles():
    """Splits past the last K tile contribute zeros and still count as arrived."""
    from glmv.kernels.triton_gemv import GemvConfig

    dtype = DTYPES[0]
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(3, 200, generator=gen).to(dtype).to(DEVICE)
    w = (torch.randn(40, 200, generator=gen) / 15).to(dtype).to(DEVICE)
    out = kernels.gemv(x, w, None, GemvConfig(16, 64, 4, 2, 8))  # 4 K tiles (the last ragged), 8 splits
    assert relative_error(out, x.double() @ w.double().t()) < (1e-5 if dtype == torch.float32 else 8e-3)


@pytest.mark.skipif(not ON_GPU, reason="programmatic dependent launch needs a CUDA device")
def test_pdl_chain_in_a_graph_equals_the_plain_chain(monkeypatch):
    """norm -> split-K matmul -> SiLU -> matmul -> norm, graph-captured, with PDL (kernels start early, prefetch
    weights, wait for their inputs) and without: the same bits, and the same on every replay."""
    from glmv.kernels import pdl
    from glmv.kernels.triton_gemv import GemvConfig

    if not pdl.enabled():
        pytest.skip("PDL is not available here")
    gen = torch.Generator().manual_seed(21)
    dtype = torch.bfloat16
    h = torch.randn(4, 4096, generator=gen).to(dtype).to(DEVICE)
    w_norm = torch.randn(4096, generator=gen).to(dtype).to(DEVICE)
    w_up = (torch.randn(2 * 2048, 4096, generator=gen) / 64).to(dtype).to(DEVICE)
    w_down = (torch.randn(4096, 2048, generator=gen) / 45).to(dtype).to(DEVICE)
    up_cfg, down_cfg = GemvConfig(32, 256, 4, 4), GemvConfig(64, 128, 4, 4, 4)

    def chain():
        x = kernels.rms_norm(h, w_norm, 1e-5)
        y = kernels.silu_mul(kernels.gemv(x, w_up, None, up_cfg))
        return kernels.rms_norm(kernels.gemv(y, w_down, None, down_cfg), w_norm, 1e-5)

    results = {}
    for on in (False, True):
        monkeypatch.setattr(pdl, "_ENABLED", on)
        chain()  # compile outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = chain()
        replays = []
        for _ in range(4):
            out.fill_(float("nan"))
            graph.replay()
            replays.append(out.clone())
        assert all(torch.equal(r, replays[0]) for r in replays)
        assert torch.equal(replays[0], chain())
        results[on] = replays[0]
    assert torch.equal(results[False], results[True])
