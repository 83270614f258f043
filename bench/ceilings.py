"""The device's two ceilings, measured in the run that reports against them: copy bandwidth and the bf16 matmul rate."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from functools import partial

import torch


def event_time_ms(fn: Callable[[], object], iters: int = 20, warmup: int = 3) -> float:
    """Median of per-call CUDA-event timings (for large single calls where launch overhead is noise)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def probe_ceilings() -> tuple[float, float]:
    """(copy bytes/s counting read + written, bf16 matmul FLOP/s at 8192^3) on the current CUDA device."""
    n = 1 << 30  # 1 GiB each way
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda")
    ms = event_time_ms(partial(torch.Tensor.copy_, torch.empty_like(src), src), iters=20)
    bandwidth = 2 * n / (ms * 1e-3)
    del src
    size = 8192
    a = torch.randn(size, size, dtype=torch.bfloat16, device="cuda")
    ms_mm = event_time_ms(partial(torch.matmul, a, torch.randn_like(a)), iters=10)
    flops = 2 * size**3 / (ms_mm * 1e-3)
    del a
    torch.cuda.empty_cache()
    print(f"copy 1 GiB: {ms:.3f} ms = {bandwidth / 1e12:.2f} TB/s (read+write); "
          f"bf16 matmul 8192^3: {ms_mm:.3f} ms = {flops / 1e12:.0f} TFLOP/s", flush=True)  # fmt: skip
    return bandwidth, flops
