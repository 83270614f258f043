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
import threading
import time
from dataclasses import dataclass
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
TRIM_INTERVAL_S = 10.0  # how often the heap trimmer gives malloc's free pages back (see keep_freed_memory)


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve large blocks from its heap and keep freed memory for reuse.

    By default every block over 32 MB (a 2,048-token prefill's MLP activations, say) is a fresh mmap, so each step
    pays page faults and zeroing for every large tensor again: measured on 2 cores, a 4,096-token prefill took
    1.9-2.1 s instead of 1.5-1.6 s. With mmap off (M_MMAP_MAX = 0) and trimming only past 1 GiB, large tensors reuse
    the heap's pages. Once per process; returns whether glibc took the settings.

    What that costs a server that runs for weeks: the freed pages stay resident. Under 100 concurrent chats with
    new pictures (bench/soak.py), malloc held 1.3 GB free after 150 s and the figure kept climbing, spread over
    the arenas of the threads that decode media. So a daemon thread also calls malloc_trim every TRIM_INTERVAL_S
    seconds: it returns whole free pages anywhere in every arena (not only at a heap's top, which is all the trim
    threshold governs) while the next steps still find the heap's address space mapped. ctypes releases the GIL
    for the call, so the engine thread does not wait on it (bench/notes/memory.md has the figures).
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
    if _memory_kept:
        trim_freed_memory()
    return _memory_kept


_trimmer: HeapTrimmer | None = None


def trim_freed_memory() -> bool:
    """Start the heap trimmer (once per process, on any device; see keep_freed_memory for why it exists). A CUDA
    server needs it as much: there glibc's own thresholds apply, and freed media buffers spread over the decode
    threads' arenas kept its resident memory climbing by ~70 MB a minute in a 10-minute H200 soak. Returns whether
    it runs (only under glibc)."""
    global _trimmer
    if _trimmer is None:
        try:
            _trimmer = HeapTrimmer(ctypes.CDLL("libc.so.6").malloc_trim, TRIM_INTERVAL_S)
        except (OSError, AttributeError):  # not glibc
            return False
        _trimmer.start()
    return True


class HeapTrimmer(threading.Thread):
    """A daemon thread that gives malloc's free pages back to the system every `interval_s` seconds."""

    def __init__(self, malloc_trim, interval_s: float):
        super().__init__(name="glmv-heap-trim", daemon=True)
        self.malloc_trim = malloc_trim
        self.interval_s = interval_s
        self.trims = 0
        self.seconds = 0.0  # spent in malloc_trim, all calls together

    def run(self) -> None:
        while True:
            time.sleep(self.interval_s)
            start = time.perf_counter()
            self.malloc_trim(0)
            self.seconds += time.perf_counter() - start
            self.trims += 1
            log.debug("malloc_trim %d took %.1f ms", self.trims, 1000 * (time.perf_counter() - start))


@dataclass(frozen=True)
class MallocUsage:
    """glibc malloc's own account over all its arenas (mallinfo2): bytes handed out, bytes it holds free, and bytes
    in blocks it mapped on their own. Resident memory far above in_use + mmapped is memory malloc keeps."""

    in_use_bytes: int
    free_bytes: int
    mmapped_bytes: int


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def malloc_usage() -> MallocUsage | None:
    """The process's malloc statistics now, or None where malloc is not glibc 2.33 or later."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _Mallinfo2
    info = mallinfo2()
    return MallocUsage(in_use_bytes=info.uordblks + info.hblkhd, free_bytes=info.fordblks, mmapped_bytes=info.hblkhd)
