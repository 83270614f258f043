"""A short soak of `glmv serve` in its own process, with bench/soak.py's load (tens of seconds): every cache stays
within the bound its flag sets, /metrics reports resident memory and each cache, and resident memory stops
growing once the caches are full."""

from __future__ import annotations

import asyncio

from bench.soak import ServerProcess, SoakPlan, read_metrics, run_soak

# GiB: small enough that new pictures fill every cache within the warm-up.
BOUNDS = {"mm_processor": 0.02, "media": 0.005, "vision_embedding": 0.001}
FIXED = {"vision_grid_tables": 0.25}  # bounded by the tower itself (Glm4vVisionTower.GRID_TABLE_BYTES), no flag
PLAN = SoakPlan(concurrency=16, duration_s=36.0, max_tokens=16, sample_every_s=2.0, warmup_s=12.0)


def test_short_soak_keeps_caches_within_bounds_and_memory_flat(tiny_model_dir, tmp_path):
    flags = ["--mm-processor-cache-gb", str(BOUNDS["mm_processor"]), "--media-cache-gb", str(BOUNDS["media"]),
             "--vision-cache-gb", str(BOUNDS["vision_embedding"]), "--max-num-seqs", "16", "--disable-log-requests",
             "--disable-uvicorn-access-log"]
    server = ServerProcess(tiny_model_dir, "cpu", flags, tmp_path / "server.log")
    try:
        server.wait_ready(120)
        result = asyncio.run(run_soak(server, PLAN, progress=lambda _line: None))
        metrics = read_metrics(server.url)
        rss_mb = server.rss_mb()
    finally:
        server.stop()
    assert result.errors == 0, result.first_error
    assert result.requests > 100  # the load did run
    reported = metrics["process_resident_memory_bytes"][()] / 2**20
    assert abs(reported - rss_mb) < 0.2 * rss_mb
    for sample in result.samples:
        assert set(sample.caches) == set(BOUNDS) | set(FIXED)
        for name, (used, _entries, bound) in sample.caches.items():
            assert bound == int((BOUNDS | FIXED)[name] * 2**30), name
            assert used <= bound, (name, sample)
    for name, (used, entries, bound) in result.samples[-1].caches.items():
        if name in BOUNDS:
            assert used > bound / 2 and entries > 1, (name, "the load should have filled this cache")
        else:
            assert used > 0 and entries >= 1, (name, "pictures came, so grid tables were made")
    first, second, growth = result.growth()
    # Generous, so that the heap trimmer's 10 s saw-tooth never fails it; the leaks of issue 17 grew RSS by
    # hundreds of MB in this much load.
    assert second < first * 1.15 + 64, [s.rss_mb for s in result.samples]
