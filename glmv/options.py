"""RuntimeOptions: every GLMV_* environment variable glmv honours, read once, in this one place.

Why one place: a switch read deep in a kernel module at import time (or at first use) is invisible in logs and
cannot be set by a caller that builds an engine in-process. The doors call `RuntimeOptions.from_env()` once and hand
the typed pieces down (`KernelOptions` to the layers, `gc_mode` to the engine loop, ...); nothing below the doors
looks at os.environ for a GLMV_* name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

GC_MODES = ("managed", "freeze", "python")
KERNEL_CHOICES = ("auto", "torch")


def _flag(env: Mapping[str, str], name: str, default: bool = True) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 0 or 1; got {raw!r}")


@dataclass(frozen=True)
class KernelOptions:
    """Which kernels the models may use. `attention="torch"` forces the PyTorch reference for everything."""

    attention: str = "auto"  # GLMV_ATTENTION: auto (Triton on CUDA, C kernels on the CPU in bf16) | torch
    fused: bool = True  # GLMV_FUSED: fused norm / rotary / gating kernels where the device has them
    swiglu: bool = True  # GLMV_SWIGLU: the gate/up matmul with the SiLU-gating in its epilogue (CUDA)
    gemv: bool = True  # GLMV_GEMV: glmv's decode matmul where its plan beats cuBLAS (CUDA)
    gemv_prefetch_mb: float = 24.0  # GLMV_GEMV_PREFETCH_MB: L2 prefetch window of the decode matmul
    pdl: bool = True  # GLMV_PDL: programmatic dependent launch on Hopper
    vision_graphs: bool = True  # GLMV_VISION_GRAPHS: record the vision tower as CUDA graphs per input shape
    cpu_packed: bool = True  # GLMV_CPU_PACKED: oneDNN-packed matmul weights on the CPU
    cpu_kernels: bool = True  # GLMV_CPU_KERNELS: glmv's C kernels on the CPU in bf16
    # GLMV_PLAN_CACHE (default on): where the matmul plans timed at start-up are kept (GLMV_CACHE_DIR/plans);
    # None times them at every start. A string, not a Path: the options cross the replicas' builtins-only wire.
    plan_cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.attention not in KERNEL_CHOICES:
            raise ValueError(f"GLMV_ATTENTION must be one of {', '.join(KERNEL_CHOICES)}; got {self.attention!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KernelOptions:
        env = os.environ if env is None else env
        return cls(
            attention=(env.get("GLMV_ATTENTION") or "auto").lower(),
            fused=_flag(env, "GLMV_FUSED"),
            swiglu=_flag(env, "GLMV_SWIGLU"),
            gemv=_flag(env, "GLMV_GEMV"),
            gemv_prefetch_mb=float(env.get("GLMV_GEMV_PREFETCH_MB") or 24.0),
            pdl=_flag(env, "GLMV_PDL"),
            vision_graphs=_flag(env, "GLMV_VISION_GRAPHS"),
            cpu_packed=_flag(env, "GLMV_CPU_PACKED"),
            cpu_kernels=_flag(env, "GLMV_CPU_KERNELS"),
            plan_cache_dir=str(default_cache_dir(env) / "plans") if _flag(env, "GLMV_PLAN_CACHE") else None,
        )

    def describe(self) -> str:
        off = [name for name in ("fused", "swiglu", "gemv", "pdl", "vision_graphs", "cpu_packed", "cpu_kernels")
               if not getattr(self, name)]
        return f"attention={self.attention}" + (f", off: {', '.join(off)}" if off else "")


# The handshake token a worker process (vLLM's, or an engine replica) proves itself with. Internal to the wire, not a
# user option; the vLLM side (glmv/backends/vllm_worker.py) runs without glmv on its path and reads it itself.
WORKER_TOKEN_ENV = "GLMV_VLLM_TOKEN"


def take_worker_token() -> str:
    """The token this worker process was started with, removed from the environment so nothing it starts sees it."""
    return os.environ.pop(WORKER_TOKEN_ENV, "")


def default_chat_history() -> Path:
    return Path.home() / ".cache" / "glmv" / "chat_history"


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where glmv keeps per-machine build products (the CPU kernels): GLMV_CACHE_DIR, else $XDG_CACHE_HOME/glmv."""
    env = os.environ if env is None else env
    if env.get("GLMV_CACHE_DIR"):
        return Path(env["GLMV_CACHE_DIR"])
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "glmv"


@dataclass(frozen=True)
class RuntimeOptions:
    """The GLMV_* environment as typed values. `from_env()` is called by the doors, once."""

    kernels: KernelOptions = field(default_factory=KernelOptions)
    gc_mode: str = "managed"  # GLMV_GC: when Python's collector runs while the engine loop serves
    cache_dir: Path = field(default_factory=default_cache_dir)  # GLMV_CACHE_DIR
    api_key: str | None = None  # GLMV_API_KEY (servers: the key to require; clients: the key to send)
    vllm_python: str | None = None  # GLMV_VLLM_PYTHON: the interpreter that has vLLM (--engine vllm)
    vllm_startup_timeout_s: float = 1800.0  # GLMV_VLLM_STARTUP_TIMEOUT
    chat_history: Path | None = None  # GLMV_CHAT_HISTORY: `glmv chat`'s input history file

    def __post_init__(self) -> None:
        if self.gc_mode not in GC_MODES:
            raise ValueError(f"GLMV_GC must be one of {', '.join(GC_MODES)}; got {self.gc_mode!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RuntimeOptions:
        env = os.environ if env is None else env
        history = env.get("GLMV_CHAT_HISTORY")
        return cls(
            kernels=KernelOptions.from_env(env),
            gc_mode=env.get("GLMV_GC") or "managed",
            cache_dir=default_cache_dir(env),
            api_key=env.get("GLMV_API_KEY") or None,
            vllm_python=env.get("GLMV_VLLM_PYTHON") or None,
            vllm_startup_timeout_s=float(env.get("GLMV_VLLM_STARTUP_TIMEOUT") or 1800.0),
            chat_history=Path(history) if history else None,
        )
