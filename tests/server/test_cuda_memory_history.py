"""`glmv serve --cuda-memory-history DIR` and bench/cuda_memory_diff.py: allocator snapshots named by their sites.

On CUDA the snapshots are PyTorch's own (torch.cuda.memory._snapshot); on a machine without one the flag is refused
at start-up with a sentence, and without the flag the debug route does not exist.
"""

from __future__ import annotations

import pickle

import httpx
import pytest
import torch

from bench.cuda_memory_diff import report
from tests.server.conftest import live_server

ON_CUDA = torch.cuda.is_available()


def _allocate_eight_mib() -> torch.Tensor:
    return torch.empty(8 << 20, dtype=torch.uint8, device="cuda")


def test_route_absent_without_the_flag(tiny_model_dir):
    with live_server(tiny_model_dir, "glmv") as server:
        assert httpx.post(server.base_url + "/debug/cuda-memory-snapshot", timeout=30).status_code == 404


@pytest.mark.skipif(ON_CUDA, reason="the refusal is for machines without CUDA")
def test_flag_refused_without_cuda(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="--cuda-memory-history needs a CUDA device"):
        with live_server(tiny_model_dir, "glmv", "--cuda-memory-history", str(tmp_path)):
            pass


@pytest.mark.gpu
@pytest.mark.skipif(not ON_CUDA, reason="needs a CUDA device")
def test_diff_names_the_site_that_grew():
    torch.cuda.memory._record_memory_history(enabled="state", context="state", stacks="python")
    try:
        before = torch.cuda.memory._snapshot()
        held = _allocate_eight_mib()
        after = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    text = report(before, after)
    grew = [line for line in text.splitlines() if "_allocate_eight_mib" in line]
    assert len(grew) == 1 and "+8.0 MiB" in grew[0] and "test_cuda_memory_history.py" in grew[0], text
    del held


@pytest.mark.gpu
@pytest.mark.skipif(not ON_CUDA, reason="needs a CUDA device")
def test_server_writes_snapshots(tiny_model_dir, tmp_path):
    args = ("--device", "cuda", "--cuda-memory-history", str(tmp_path / "snaps"))
    with live_server(tiny_model_dir, "glmv", *args) as server:
        first = httpx.post(server.base_url + "/debug/cuda-memory-snapshot", timeout=60).json()
        body = {"model": server.state.model_names[0], "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4}
        assert httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=120).status_code == 200
        second = httpx.post(server.base_url + "/debug/cuda-memory-snapshot", timeout=60).json()
    torch.cuda.memory._record_memory_history(enabled=None)
    assert first["path"] != second["path"] and first["allocated_bytes"] > 0 and first["blocks"] > 0
    text = report(pickle.loads(open(first["path"], "rb").read()), pickle.loads(open(second["path"], "rb").read()))
    assert text.startswith("allocated ")
    assert "glmv" in text or "no allocation site changed" in text
