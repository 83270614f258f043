"""What device memory grew between two CUDA allocator snapshots, by the glmv code that allocated it.

    python3 bench/cuda_memory_diff.py BEFORE.pickle AFTER.pickle [--min-mb 1]

The snapshots come from `glmv serve --cuda-memory-history DIR` (POST /debug/cuda-memory-snapshot; bench/soak.py
takes one at each checkpoint). Live allocations are grouped by their innermost glmv frames (file:line function),
inside a CUDA graph's private pool or not, and the groups whose bytes changed by more than --min-mb are printed,
largest growth first, with the allocator's reserved memory per pool beside them.
"""

from __future__ import annotations

import argparse
import pickle
from collections import Counter
from pathlib import Path

GLMV_FRAMES = 3  # innermost glmv frames that name an allocation site


def _site(frames: list[dict]) -> str:
    ours = [f for f in frames if "/glmv/" in f["filename"]][:GLMV_FRAMES]
    if not ours:
        top = frames[0] if frames else {"filename": "?", "line": 0, "name": "(no stack recorded)"}
        return f"(outside glmv) {Path(top['filename']).name}:{top['line']} {top['name']}"
    return " < ".join(f"{f['filename'].split('/glmv/')[-1]}:{f['line']} {f['name']}" for f in ours)


def _pool(segment: dict) -> str:
    pool = tuple(segment.get("segment_pool_id", (0, 0)))
    return "default pool" if pool == (0, 0) else f"graph pool {pool[0]}.{pool[1]}"


def live_by_site(snapshot: dict) -> tuple[Counter, Counter, Counter]:
    """(bytes by (pool, site), blocks by (pool, site), reserved bytes by pool)."""
    size, count, reserved = Counter(), Counter(), Counter()
    for segment in snapshot["segments"]:
        pool = _pool(segment)
        reserved[pool] += segment["total_size"]
        for block in segment["blocks"]:
            if block["state"] != "active_allocated":
                continue
            key = (pool, _site(block.get("frames", [])))
            size[key] += block["size"]
            count[key] += 1
    return size, count, reserved


def report(before: dict, after: dict, min_mb: float = 1.0) -> str:
    a_size, a_count, a_reserved = live_by_site(before)
    b_size, b_count, b_reserved = live_by_site(after)
    mib = 1 << 20
    lines = [f"allocated {sum(a_size.values()) / mib:,.1f} -> {sum(b_size.values()) / mib:,.1f} MiB, reserved "
             f"{sum(a_reserved.values()) / mib:,.1f} -> {sum(b_reserved.values()) / mib:,.1f} MiB"]
    for pool in sorted(set(a_reserved) | set(b_reserved)):
        if abs(b_reserved[pool] - a_reserved[pool]) >= min_mb * mib:
            lines.append(f"  reserved in {pool}: {a_reserved[pool] / mib:,.1f} -> {b_reserved[pool] / mib:,.1f} MiB")
    changed = [(b_size[k] - a_size[k], k) for k in set(a_size) | set(b_size)]
    changed = sorted((c for c in changed if abs(c[0]) >= min_mb * mib), reverse=True)
    if not changed:
        lines.append(f"no allocation site changed by {min_mb} MiB or more")
    for delta, (pool, site) in changed:
        lines.append(f"  {delta / mib:+10,.1f} MiB  ({a_count[(pool, site)]} -> {b_count[(pool, site)]} blocks, "
                     f"{pool})  {site}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument("--min-mb", type=float, default=1.0, help="smallest change printed (MiB, default 1)")
    args = p.parse_args()
    print(report(pickle.loads(args.before.read_bytes()), pickle.loads(args.after.read_bytes()), args.min_mb))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
