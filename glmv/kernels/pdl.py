"""Programmatic dependent launch (PDL, Hopper and later): let a kernel start while the one before it still runs.

Why: a decode step is ~400 kernels in a chain; each one pays a ramp (its programs start, compute addresses, issue
the first loads) and a tail after the previous one has finished. With PDL a kernel launched with `launch_pdl=True`
may begin as soon as every program of the kernel before it has called `gdc_launch_dependents()`; it must then call
`gdc_wait()` before it reads anything the earlier kernel wrote, or writes anything the earlier kernel reads (the wait
returns once that kernel has finished and its memory is visible). Work that touches neither, such as prefetching
weights into L2 (glmv.kernels.triton_gemv), overlaps the earlier kernel. A kernel launched without the flag (every
PyTorch and cuBLAS kernel) still waits for the whole of the one before it, so mixing is safe.

Every glmv kernel that takes `USE_PDL` therefore calls `pdl_start(USE_PDL)` before its first memory access.
`enabled()` says whether to launch with it: CUDA with compute capability 9.0+, a Triton that has the instructions
and launches one PDL kernel correctly here, and not turned off by `allow(False)` (glmv.layers hands in the
user's choice when it selects the kernels).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_ENABLED: bool | None = None
_ALLOWED = True


def allow(enabled: bool) -> None:
    """Whether PDL may be used in this process at all (the caller's option; decided before the first launch)."""
    global _ALLOWED, _ENABLED
    _ALLOWED = enabled
    if not enabled:
        _ENABLED = False


@triton.jit
def pdl_start(USE_PDL: tl.constexpr):
    """Let the next kernel launch, then wait for the previous one (call before any load or store)."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()


@triton.jit
def _probe_kernel(x_ptr, out_ptr, USE_PDL: tl.constexpr):
    pdl_start(USE_PDL)
    offs = tl.arange(0, 128)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs) + 1.0)


def enabled() -> bool:
    """Whether glmv's kernels launch with PDL here (decided once, on the first call outside a graph capture)."""
    global _ENABLED
    if _ENABLED is not None:
        return _ENABLED
    if not _ALLOWED or os.environ.get("TRITON_INTERPRET", "0") == "1":
        _ENABLED = False
        return False
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        _ENABLED = False
        return False
    if torch.cuda.is_current_stream_capturing():
        return False  # cannot check a launch's result now; decide on a later call
    try:
        cuda_ext = tl.extra.cuda
        if not (hasattr(cuda_ext, "gdc_wait") and hasattr(cuda_ext, "gdc_launch_dependents")):
            _ENABLED = False
            return False
        x = torch.arange(128, dtype=torch.float32, device="cuda")
        out = torch.empty_like(x)
        _probe_kernel[(1,)](x, out, USE_PDL=True, launch_pdl=True)
        _ENABLED = bool(torch.equal(out, x + 1.0))
    except Exception:  # noqa: BLE001 - any failure: launch the plain way
        _ENABLED = False
    return _ENABLED


def launch_options() -> dict:
    """Keyword arguments for a kernel launch: the USE_PDL constexpr and Triton's launch_pdl flag, together."""
    return {"USE_PDL": True, "launch_pdl": True} if enabled() else {"USE_PDL": False}
