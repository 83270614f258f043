"""PlanCache: the decode-matmul and fused-gating plans (timed against cuBLAS at start-up) kept on disk.

Why: timing every (shape, batch) point took 71 of the 90 s from `glmv serve` to ready on an H200, and the answer only
changes with the device, its driver, the library versions, the kernels' own source, the dtype and the shapes. An
entry is one JSON file named by the SHA-256 of all of those (`key`); a file that is unreadable, corrupt, or whose
stored key differs from the one asked for is ignored with a log line and the plan is timed again (and rewritten).
Writes go to a temporary file renamed into place, so two servers starting at once never read half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("glmv.kernels.plan_cache")
FORMAT = 1


def environment_key(device: Any) -> dict[str, str]:
    """What a timing depends on besides the shapes: the device's name, the driver, torch / triton / CUDA versions."""
    import torch

    out = {"torch": torch.__version__, "cuda": str(torch.version.cuda)}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = "none"
    if getattr(device, "type", str(device)) == "cuda":
        out["device"] = torch.cuda.get_device_name(device)
        try:
            out["driver"] = str(torch._C._cuda_getDriverVersion())
        except (AttributeError, RuntimeError):
            out["driver"] = "unknown"
    else:
        out["device"] = str(device)
    return out


def source_digest(*modules: Any) -> str:
    """A digest of the kernels' source files: a new configuration list or kernel invalidates old plans."""
    h = hashlib.sha256()
    for m in modules:
        h.update(Path(m.__file__).read_bytes())
    return h.hexdigest()[:16]


class PlanCache:
    """JSON plans in `directory` (created on first store)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(description: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / f"{key[:40]}.json"

    def load(self, description: dict[str, Any]) -> Any | None:
        """The stored value for this description, or None (absent, unreadable, corrupt or for another key)."""
        key = self.key(description)
        path = self._path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            entry = json.loads(path.read_text())
            if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("key") != key:
                raise ValueError("its key or format does not match")
            value = entry["value"]
        except (OSError, ValueError, KeyError) as exc:
            log.warning("plan cache: ignoring %s (%s); timing again", path, exc)
            self.misses += 1
            return None
        self.hits += 1
        return value

    def store(self, description: dict[str, Any], value: Any) -> None:
        key = self.key(description)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            body = json.dumps({"format": FORMAT, "key": key, "description": description, "value": value},
                              default=str)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(body)
            os.replace(tmp, self._path(key))
        except OSError as exc:  # a read-only cache dir costs the next start its timing, nothing more
            log.warning("plan cache: could not write %s (%s)", self.directory, exc)

    def cached(self, description: dict[str, Any], compute: Callable[[], Any], encode: Callable[[Any], Any],
               decode: Callable[[Any], Any]) -> Any:
        """decode(stored) when this description was planned before (and decodes), else compute() and store it."""
        stored = self.load(description)
        if stored is not None:
            try:
                return decode(stored)
            except (TypeError, ValueError, KeyError, IndexError) as exc:
                log.warning("plan cache: an entry for %s does not decode (%s); timing again",
                            description.get("planner"), exc)
        value = compute()
        self.store(description, encode(value))
        return value


def _cfg_out(cfg: Any) -> dict[str, Any] | None:
    from dataclasses import asdict

    return None if cfg is None else asdict(cfg)


def _report_rows(report: list) -> list:
    return [[list(k), base, best, None if cfg is None else str(cfg)] for k, base, best, cfg in report]


def _report_from(stored: dict) -> list:
    return [(tuple(k), base, best, cfg) for k, base, best, cfg in stored["report"]]


def _plan_with_report(cache: PlanCache, description: dict, compute: Callable, encode: Callable, decode: Callable,
                      report: list | None) -> dict:
    """The planner's choice from the cache (or timed now); its timing rows go to `report` either way."""
    chosen, rows = cache.cached(description, compute, encode, decode)
    if report is not None:
        report.extend(rows)
    return chosen


def _cached_gemv_plan(cache: PlanCache, description: dict, planner: Callable, report: list | None) -> dict:
    """A decode-matmul plan ({key tuple: GemvConfig}) from the cache, or timed by planner(rows) and stored."""
    from glmv.kernels import triton_gemv as tg

    rows: list = []

    def compute() -> tuple[dict, list]:
        return planner(rows), rows

    def encode(value: tuple[dict, list]) -> dict:
        chosen, rep = value
        return {"chosen": [[list(k), _cfg_out(c)] for k, c in chosen.items()], "report": _report_rows(rep)}

    def decode(stored: dict) -> tuple[dict, list]:
        chosen = {tuple(k): tg.GemvConfig(**c) for k, c in stored["chosen"]}
        return chosen, _report_from(stored)

    return _plan_with_report(cache, description, compute, encode, decode, report)


def cached_gemv_planner(cache: PlanCache, prefetch_mb: float) -> Callable:
    """triton_gemv.plan with its answers kept in `cache` (same signature)."""
    from glmv.kernels import triton_gemv as tg

    def plan(weight_groups: list[tuple], batch_sizes: list[int], report: list | None = None) -> dict:
        w0 = weight_groups[0][0][0]
        description = {
            "planner": "triton_gemv", "source": source_digest(tg), "env": environment_key(w0.device),
            "dtype": str(w0.dtype), "prefetch_mb": prefetch_mb, "batch_sizes": sorted(set(batch_sizes)),
            "groups": [[list(g[0][0].shape), len(g[0]), g[1] is not None, bool(len(g) > 2 and g[2])]
                       for g in weight_groups]}
        return _cached_gemv_plan(cache, description, lambda rows: tg.plan(weight_groups, batch_sizes, rows), report)

    return plan


def cached_quantized_gemv_planner(cache: PlanCache, prefetch_mb: float) -> Callable:
    """triton_gemv.plan_quantized with its answers kept in `cache` (same signature)."""
    from glmv.kernels import triton_gemv as tg

    def plan(groups: list, batch_sizes: list[int], report: list | None = None) -> dict:
        w0 = groups[0].weight
        description = {
            "planner": "triton_gemv.quantized", "source": source_digest(tg), "env": environment_key(w0.data.device),
            "prefetch_mb": prefetch_mb, "batch_sizes": sorted(set(batch_sizes)),
            "groups": [[g.weight.tag, g.weight.n, g.weight.k, g.count, g.has_bias, str(g.dtype)] for g in groups]}
        return _cached_gemv_plan(cache, description, lambda rows: tg.plan_quantized(groups, batch_sizes, rows),
                                 report)

    return plan


def cached_swiglu_planner(cache: PlanCache) -> Callable:
    """triton_swiglu.plan with its answers kept in `cache` (same signature)."""
    from glmv.kernels import triton_swiglu as ts

    def plan(weight_groups: list[list], points: list[int] | None = None, report: list | None = None) -> dict:
        w0 = weight_groups[0][0]
        description = {
            "planner": "triton_swiglu", "source": source_digest(ts), "env": environment_key(w0.device),
            "dtype": str(w0.dtype), "points": list(points or ts.PLAN_POINTS),
            "groups": [[list(g[0].shape), len(g)] for g in weight_groups]}
        rows: list = []

        def compute() -> tuple[dict, list]:
            return ts.plan(weight_groups, points, rows), rows

        def encode(value: tuple[dict, list]) -> dict:
            chosen, rep = value
            return {"chosen": [[list(k), [[r, _cfg_out(c)] for r, c in per]] for k, per in chosen.items()],
                    "report": _report_rows(rep)}

        def decode(stored: dict) -> tuple[dict, list]:
            chosen = {tuple(k): [(int(r), None if c is None else ts.MatmulSiluConfig(**c)) for r, c in per]
                      for k, per in stored["chosen"]}
            return chosen, _report_from(stored)

        return _plan_with_report(cache, description, compute, encode, decode, report)

    return plan
