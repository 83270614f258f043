"""Device time of a call sequence inside one CUDA graph: what the kernel planners compare configurations by."""

from __future__ import annotations

import statistics

import torch


def graph_time_us(fn, calls: int) -> float:
    """Device time per call of fn(i) for i in range(calls), captured in one CUDA graph (median of 5 replays).

    Why a graph: decode runs inside graphs, so launch gaps are not what is being compared; and timing many calls
    back to back hides each one's event overhead."""
    for i in range(calls):
        fn(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    del graph
    return statistics.median(times)
