"""`--cuda-memory-history DIR`: find what holds device memory, by the code that allocated it.

PyTorch's caching allocator can remember the Python stack of every live allocation (its "state" history, which
keeps no event log, so it costs a stack walk per allocation and nothing that grows). With the flag the server turns
that on before the engine loads and adds `POST /debug/cuda-memory-snapshot`, which writes the allocator's snapshot
to DIR and answers with its path and a summary. Two snapshots taken at idle moments are compared by
bench/cuda_memory_diff.py (bench/soak.py takes one at each of its checkpoints). Off by default: the stack walk slows
every eager allocation, and the route exists only when the flag is given.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import time
from pathlib import Path

from fastapi import APIRouter, Request
from pydantic import BaseModel

log = logging.getLogger("glmv.server")

router = APIRouter()
_numbers = itertools.count(1)


class CudaMemorySnapshot(BaseModel):
    path: str
    allocated_bytes: int  # live allocations in the snapshot (what memory_allocated reports)
    reserved_bytes: int  # segments the allocator holds from the driver
    blocks: int  # live allocations


def start_cuda_memory_history() -> None:
    """Record the allocating stack of each live CUDA allocation from now on (call before the model loads)."""
    import torch

    if not torch.cuda.is_available():
        raise ValueError("--cuda-memory-history needs a CUDA device; this machine has none.")
    torch.cuda.memory._record_memory_history(enabled="state", context="state", stacks="python")
    log.info("recording the stacks of CUDA allocations (--cuda-memory-history)")


@router.post("/debug/cuda-memory-snapshot", response_model=CudaMemorySnapshot, include_in_schema=False)
def cuda_memory_snapshot(request: Request) -> CudaMemorySnapshot:
    """Write the allocator's snapshot (segments, live blocks, their stacks) to the history folder."""
    import torch

    folder: Path = request.app.state.serving.server_config.cuda_memory_history
    folder.mkdir(parents=True, exist_ok=True)
    snapshot = torch.cuda.memory._snapshot()
    path = folder / f"snapshot-{next(_numbers):03d}-{time.strftime('%H%M%S')}.pickle"
    path.write_bytes(pickle.dumps(snapshot))
    blocks = [b for seg in snapshot["segments"] for b in seg["blocks"] if b["state"] == "active_allocated"]
    return CudaMemorySnapshot(path=str(path), allocated_bytes=sum(b["size"] for b in blocks),
                              reserved_bytes=sum(seg["total_size"] for seg in snapshot["segments"]),
                              blocks=len(blocks))
