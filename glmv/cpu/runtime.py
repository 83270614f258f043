"""Process settings for running the engine on the CPU: OpenMP thread counts per thread, and malloc's reuse of memory.

Threads. PyTorch's `torch.set_num_threads` also changes a process-wide count that every thread's ops read, so it
cannot make one thread narrow without narrowing the engine. OpenMP's own count is per thread:
`use_one_openmp_thread()` sets it in the calling thread only, so PyTorch ops there (decoding an image in an I/O
worker, say) run as teams of one, which start no OpenMP worker threads. Why that matters: GNU OpenMP shortens every
team's spin-wait once it manages more threads than there are CPUs, and the engine's ops then pay a wake-up each (see
glmv/engine/async_engine.py).

Memory: see `keep_freed_memory()`.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

log = logging.getLogger("glmv.cpu")

_set_num_threads = None
_looked = False


def _openmp_setter():
    global _set_num_threads, _looked
    if not _looked:
        _looked = True
        import torch

        bundled = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
        for name in (str(bundled), "libgomp.so.1"):  # the copy PyTorch loaded (same soname: dlopen returns it)
            try:
                _set_num_threads = ctypes.CDLL(name).omp_set_num_threads
                break
            except (OSError, AttributeError):
                continue
        if _set_num_threads is None:
            log.debug("no GNU OpenMP runtime found; thread counts left as they are")
    return _set_num_threads


def use_one_openmp_thread() -> None:
    """Make PyTorch's CPU ops in the calling thread run single-threaded (other threads are unaffected)."""
    setter = _openmp_setter()
    if setter is not None:
        setter(1)


_memory_kept = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve large blocks from its heap and keep freed memory for reuse.

    By default every block over 32 MB (a 2,048-token prefill's MLP activations, say) is a fresh mmap, so each step
    pays page faults and zeroing for every large tensor again: measured on 2 cores, a 4,096-token prefill took
    1.9-2.1 s instead of 1.5-1.6 s. With mmap off (M_MMAP_MAX = 0) and trimming only past 1 GiB, large tensors reuse
    the heap's pages. Once per process; returns whether glibc took the settings.
    """
    global _memory_kept
    if _memory_kept:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        _memory_kept = bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):  # not glibc
        _memory_kept = False
    return _memory_kept
