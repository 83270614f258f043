"""Compile glmv/cpu/kernels.c for this machine once and load it (ctypes), or say why it cannot be.

The library is built with the machine's own instruction set (-march=native; fast-math at compile time only) into a cache folder keyed by the source,
the compiler flags and this CPU's feature flags, so a copied cache never runs code its CPU lacks. Builds are atomic
(write, then rename), so parallel processes may race harmlessly. Nothing here is needed for correctness: without a C
compiler the engine uses its PyTorch steps (slower), and `load()` returns None with the reason in `load_error()`.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from glmv.options import default_cache_dir

log = logging.getLogger("glmv.cpu")

SOURCE = Path(__file__).with_name("kernels.c")
# Compiled with fast-math (reassociation lets the reductions vectorize) but linked without it: linking with
# -ffast-math adds crtfastmath.o, whose constructor turns on flush-to-zero for the process that loads the library,
# which would change every float computation in it (Python's, PyTorch's) once the kernels load.
COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-fopenmp", "-fPIC", "-std=c11"]
LINK_FLAGS = ["-shared", "-fopenmp"]
FLAGS = COMPILE_FLAGS + LINK_FLAGS  # what the cache key covers

_lib: ctypes.CDLL | None = None
_error: str | None = None
_tried = False


def cache_dir() -> Path:
    return default_cache_dir() / "cpu-kernels"


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return os.uname().machine


def _library_path(compiler: str) -> Path:
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(" ".join([compiler, *FLAGS]).encode())
    key.update(_cpu_signature().encode())
    return cache_dir() / f"glmv_cpu_{key.hexdigest()[:16]}.so"


def _compile(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        obj = tmp + ".o"
        for step in ([compiler, *COMPILE_FLAGS, "-c", str(SOURCE), "-o", obj],
                     [compiler, *LINK_FLAGS, obj, "-o", tmp, "-lm"]):
            result = subprocess.run(step, capture_output=True, text=True, timeout=120)
            if result.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, tmp + ".o"):
            if os.path.exists(leftover):
                os.unlink(leftover)


def load() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; None when they cannot be built here (see load_error())."""
    global _lib, _error, _tried
    if _tried:
        return _lib
    _tried = True
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        _error = "no C compiler (gcc or cc) on PATH"
        return None
    import torch  # noqa: F401 - load PyTorch's libgomp first, so the kernels share its OpenMP thread pool

    try:
        path = _library_path(compiler)
        if not path.exists():
            log.info("building glmv's CPU kernels (%s, once per machine) into %s", compiler, path)
            _compile(compiler, path)
        _lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        _error = f"could not build or load {SOURCE.name}: {exc}"
        log.warning("glmv's CPU kernels are unavailable (%s); using PyTorch ops", _error)
        _lib = None
    return _lib


def load_error() -> str | None:
    return _error
