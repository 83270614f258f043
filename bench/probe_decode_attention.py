"""GPU probe (issue 18): the paged decode attention kernel's launch shapes on this chip, at GLM-4.1V-9B's heads.

    PYTHONPATH=. python3 bench/probe_decode_attention.py [--json out.json]

`DecodeTuning`'s defaults came from a sweep on an H100. This times `paged_decode_attention` inside CUDA graphs (as
decode runs it) with the decode graphs' table width (--max-model-len / block size), pages scattered over the pool
as a busy cache leaves them, at batch x context points; first the kernel's shape (KV tile, warps, stages) with the
default splitting, then the splitting (programs per SM, tokens per split) with the best shape, per point. Each
figure is a layer's device time and the KV bytes it reads per second; every variant's output is checked against
the default's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from glmv.kernels import triton_attention as ta  # noqa: E402
from glmv.kernels.timing import graph_time_us  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 32, 2, 128, 16
SHAPES = [dict(block_n=b, large_batch_block_n=b, num_warps=w, num_stages=s)  # one KV tile at every batch size
          for b in (32, 64, 128) for w in (2, 4, 8) for s in (2, 3)]
SPLITS = [dict(programs_per_sm=p, min_tokens_per_split=t) for p in (1, 2, 4, 8) for t in (64, 128, 256)]


def case(batch: int, ctx: int, width: int, copies: int = 3):
    """`copies` independent layers' caches (so timing many calls does not read one layer from L2)."""
    g = torch.Generator(device="cuda").manual_seed(batch * 10007 + ctx)
    blocks_per_seq = -(-ctx // BLOCK)
    pool = batch * blocks_per_seq + 1
    layers = []
    for _ in range(copies):
        k = torch.randn(pool, BLOCK, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(pool, BLOCK, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=g)
        layers.append((k, v))
    order = torch.randperm(pool - 1, device="cuda", generator=g).to(torch.int32) + 1
    tables = torch.zeros(batch, width, dtype=torch.int32, device="cuda")
    tables[:, :blocks_per_seq] = order[: batch * blocks_per_seq].view(batch, blocks_per_seq)
    lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    q = torch.randn(batch, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=g)
    return q, layers, tables, lens


def time_tuning(q, layers, tables, lens, tuning: ta.DecodeTuning) -> tuple[float, torch.Tensor]:
    def call(i: int) -> torch.Tensor:
        k, v = layers[i % len(layers)]
        return ta.paged_decode_attention(q, k, v, tables, lens, HEAD_DIM**-0.5, tuning=tuning)

    return graph_time_us(call, 3 * len(layers)), call(0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-model-len", type=int, default=8192, help="sets the graphs' block-table width")
    p.add_argument("--batches", default="1,8,32,64,128")
    p.add_argument("--contexts", default="640,1500,4096")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    width = args.max_model_len // BLOCK
    default = ta.DEFAULT_DECODE_TUNING
    print(f"{torch.cuda.get_device_name()}; default {default}; table width {width} blocks", flush=True)
    print(f"{'batch':>5} {'ctx':>5} {'splits':>6} {'default us':>10} {'TB/s':>5} {'best us':>8} {'TB/s':>5} "
          f"{'gain':>5}  best tuning", flush=True)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        for ctx in (int(c) for c in args.contexts.split(",")):
            q, layers, tables, lens = case(batch, ctx, width)
            kv_bytes = batch * ctx * KV_HEADS * HEAD_DIM * 2 * 2
            base_us, ref = time_tuning(q, layers, tables, lens, default)
            tried: dict[ta.DecodeTuning, float] = {}
            for variants in (SHAPES, SPLITS):  # the splitting is swept with the fastest shape
                start = min(tried, key=tried.get) if tried else default
                for variant in variants:
                    t = dataclasses.replace(start, **variant)
                    us, out = time_tuning(q, layers, tables, lens, t)
                    if not torch.allclose(out.float(), ref.float(), atol=2e-2, rtol=2e-2):
                        raise SystemExit(f"{t} disagrees with the default at batch {batch}, ctx {ctx}")
                    tried[t] = us
            best = min(tried, key=tried.get)
            best_us = tried[best]
            splits = ta.decode_num_splits(batch, KV_HEADS, width * BLOCK, q.device, best)
            row = {"batch": batch, "ctx": ctx, "default_us": round(base_us, 2), "best_us": round(best_us, 2),
                   "best": dataclasses.asdict(best), "splits": splits,
                   "default_splits": ta.decode_num_splits(batch, KV_HEADS, width * BLOCK, q.device, default),
                   "default_tbps": round(kv_bytes / base_us / 1e6, 2), "best_tbps": round(kv_bytes / best_us / 1e6, 2)}
            rows.append(row)
            short = {k: v for k, v in row["best"].items() if v != getattr(default, k)}
            print(f"{batch:>5} {ctx:>5} {row['default_splits']:>3}>{splits:<2} {base_us:>10.2f} "
                  f"{row['default_tbps']:>5} {best_us:>8.2f} {row['best_tbps']:>5} {base_us / best_us:>5.2f}  {short}",
                  flush=True)
            del q, layers, tables, lens
            torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "width": width,
                                               "default": dataclasses.asdict(default), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
