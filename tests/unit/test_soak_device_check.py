"""bench/soak.py's device check: growth inside the device caches (vision embeddings, grid tables, the tower's CUDA
graphs) is set aside; growth of tensors outside them fails it; reserved memory is reported."""

from __future__ import annotations

from bench.soak import Sample, SoakPlan, SoakResult, device_check

MiB = 2**20


def mark(requests: int, allocated: float, reserved: float, embeddings: float, graphs_reserved: float,
         graphs_in_use: float) -> Sample:
    caches = {"vision_embedding": (embeddings * MiB, 10.0, 512 * MiB), "vision_grid_tables": (8 * MiB, 2.0, 256 * MiB),
              "vision_graphs": (graphs_reserved * MiB, 3.0, 0.0)}
    return Sample(t_s=0.0, requests=requests, errors=0, rss_mb=1.0, caches=caches, device_allocated_mb=allocated,
                  device_reserved_mb=reserved, vision_graph_in_use_mb=graphs_in_use)


def result(*marks: Sample) -> SoakResult:
    return SoakResult(SoakPlan(), [], list(marks), marks[-1].requests, 0, None, 1.0)


def test_growth_inside_the_caches_is_set_aside():
    first = mark(100, allocated=1000, reserved=2000, embeddings=10, graphs_reserved=100, graphs_in_use=20)
    # embeddings +400 MiB, graphs +570 reserved / +130 in use: allocated +530, reserved +970
    last = mark(10_000, allocated=1530, reserved=2970, embeddings=410, graphs_reserved=670, graphs_in_use=150)
    assert device_check(result(first, last), tolerance_mb=16) is None


def test_growth_outside_the_caches_fails():
    first = mark(100, allocated=1000, reserved=2000, embeddings=10, graphs_reserved=100, graphs_in_use=20)
    last = mark(10_000, allocated=1100, reserved=2000, embeddings=10, graphs_reserved=100, graphs_in_use=20)
    problem = device_check(result(first, last), tolerance_mb=16)
    assert problem is not None and "allocated 962.0 -> 1062.0" in problem


def test_reserved_growth_alone_is_reported_not_failed(capsys):
    first = mark(100, allocated=1000, reserved=2000, embeddings=10, graphs_reserved=100, graphs_in_use=20)
    last = mark(10_000, allocated=1000, reserved=2300, embeddings=10, graphs_reserved=100, graphs_in_use=20)
    assert device_check(result(first, last), tolerance_mb=16) is None
    assert "reserved 1882.0 -> 2182.0 MiB (+300.0" in capsys.readouterr().out
