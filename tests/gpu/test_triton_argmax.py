"""The greedy-token argmax kernel (glmv/kernels/triton_argmax.py) gives exactly torch.argmax's answer.

GPU tests: CUDA, or the CPU through `TRITON_INTERPRET=1`; skipped elsewhere. torch.argmax's rules: the first index of
the largest value; a NaN is larger than anything (the first NaN wins); a row of -inf gives index 0.
"""

from __future__ import annotations

import pytest
import torch

from tests.gpu.where import DEVICE, GPU_TEST_MARKS, ON_GPU
from tests.gpu.where import TRITON as kernels

pytestmark = GPU_TEST_MARKS
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
SHAPES = [(1, 151552), (64, 151552), (3, 5000), (5, 4096), (2, 17)] if ON_GPU else [(3, 9000), (2, 4096), (2, 17)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,vocab", SHAPES)
def test_argmax_is_torch_argmax(rows, vocab, dtype):
    gen = torch.Generator().manual_seed(rows * 7919 + vocab)
    logits = (torch.randn(rows, vocab, generator=gen) * 4).to(dtype).to(DEVICE)
    got = kernels.argmax(logits)
    assert got.dtype == torch.int64 and got.shape == (rows,)
    assert torch.equal(got.cpu(), logits.argmax(dim=-1).cpu())


def test_ties_go_to_the_first_index_across_and_within_chunks():
    from glmv.kernels.triton_argmax import CHUNK

    vocab = 3 * CHUNK + 100
    logits = torch.zeros(4, vocab, dtype=torch.bfloat16)
    logits[0, [CHUNK + 5, 7, 2 * CHUNK]] = 3.0  # the same top value in three chunks: index 7 wins
    logits[1, [CHUNK + 9, CHUNK + 3]] = 2.0  # within one chunk
    logits[2, vocab - 1] = 1.0  # the last entry of a ragged last chunk
    logits[3] = float("-inf")  # nothing finite: index 0, as torch says
    logits = logits.to(DEVICE)
    assert kernels.argmax(logits).cpu().tolist() == [7, CHUNK + 3, vocab - 1, 0]
    assert torch.equal(kernels.argmax(logits).cpu(), logits.argmax(dim=-1).cpu())


def test_nan_wins_like_torch():
    from glmv.kernels.triton_argmax import CHUNK

    logits = torch.randn(3, 2 * CHUNK + 10)
    logits[0, CHUNK + 4] = float("nan")
    logits[0, 2 * CHUNK + 1] = float("nan")
    logits[1, 5] = float("inf")
    logits[1, CHUNK] = float("nan")
    logits = logits.to(DEVICE)
    got = kernels.argmax(logits, out=torch.full((3,), -1, dtype=torch.int64, device=DEVICE))
    assert got.cpu().tolist()[:2] == [CHUNK + 4, CHUNK]
    assert torch.equal(got.cpu(), logits.argmax(dim=-1).cpu())


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a CUDA device")
def test_argmax_replays_in_a_cuda_graph():
    logits = torch.randn(64, 151552, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(64, dtype=torch.int64, device="cuda")
    kernels.argmax(logits, out=out)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kernels.argmax(logits, out=out)
    for _ in range(3):
        logits.copy_(torch.randn(64, 151552, device="cuda", dtype=torch.bfloat16))
        graph.replay()
        assert torch.equal(out, logits.argmax(dim=-1))
