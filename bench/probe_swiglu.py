"""GPU probe: SwiGLU's gate/up matmul with the SiLU-gating fused in (glmv.kernels.triton_swiglu) against cuBLAS.

Run on a CUDA machine from the repository root:

    PYTHONPATH=. python3 bench/probe_swiglu.py [--json out.json]

At GLM-4.1V-9B's shapes (text gate_up [27,392 x 4,096] at prefill row counts, the vision tower's [8,192 x 1,536] at
one and four pictures, the merger's) it times, inside CUDA graphs: cuBLAS alone (the floor of the unfused path),
cuBLAS + the stacked-layout silu_mul (what the engine ran before), cuBLAS + silu_mul_pairs (the fallback for an
interleaved weight), and every `matmul_silu` configuration; at decode rows, gemv's best configuration + silu_mul
against gemv with the gating in its epilogue. It checks each fused result against float32 math on the same
(bf16-rounded) gate_up. It also times the rest of a 4,096-token prefill layer, so the MLP's share is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from glmv.kernels import triton_gemv as tg
from glmv.kernels import triton_swiglu as sw
from glmv.kernels.timing import graph_time_us
from glmv.kernels.triton_fused import silu_mul

RESULTS: list[dict] = []


def log(msg: str) -> None:
    print(msg, flush=True)


def tflops(rows: int, n: int, k: int, us: float) -> float:
    return 2 * rows * n * k / (us * 1e-6) / 1e12


def time_calls(fn, weights: list[torch.Tensor]) -> float:
    return graph_time_us(lambda i: fn(weights[i % len(weights)]), max(4, len(weights)))


def large_rows(name: str, n: int, k: int, rows_list: list[int], copies: int = 2) -> None:
    """cuBLAS vs matmul_silu at prefill-like row counts."""
    torch.manual_seed(0)
    stacked = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k**-0.5 for _ in range(copies)]
    inter = [sw.interleave_gate_up(w) for w in stacked]
    for rows in rows_list:
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        gu = F.linear(x, stacked[0]).float()
        g, u = gu.chunk(2, dim=-1)
        ref = u * F.silu(g)
        row = {"case": name, "rows": rows, "n": n, "k": k}
        row["cublas_us"] = time_calls(lambda w, x=x: F.linear(x, w), stacked)
        row["cublas_silu_stacked_us"] = time_calls(lambda w, x=x: silu_mul(F.linear(x, w)), stacked)
        row["cublas_silu_pairs_us"] = time_calls(lambda w, x=x: sw.cublas_silu(x, w), inter)
        best = None
        for cfg in sw.CONFIGS:
            key = f"{cfg.block_m}x{cfg.block_n}x{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages}" + (
                " pers" if cfg.persistent else "")
            try:
                out = sw.matmul_silu(x, inter[0], cfg).float()
                err = ((out - ref).norm() / ref.norm()).item()
                us = time_calls(lambda w, x=x, cfg=cfg: sw.matmul_silu(x, w, cfg), inter)
            except Exception as exc:  # noqa: BLE001
                row[key] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
                continue
            row[key] = {"us": round(us, 1), "err": f"{err:.2e}", "tflops": round(tflops(rows, n, k, us), 0)}
            if best is None or us < best[1]:
                best = (key, us)
        row["best"] = best
        RESULTS.append(row)
        base = row["cublas_silu_stacked_us"]
        log(f"{name:10s} rows {rows:6d}: cuBLAS {row['cublas_us']:8.1f} us ({tflops(rows, n, k, row['cublas_us']):.0f}"
            f" TF/s) +silu {base:8.1f} +pairs {row['cublas_silu_pairs_us']:8.1f}  fused best "
            f"{best[1] if best else float('nan'):8.1f} ({best[0] if best else '-'}) ratio "
            f"{(best[1] / base) if best else float('nan'):.3f}")
        for key, val in row.items():
            if isinstance(val, dict) or (isinstance(val, str) and val.startswith("failed")):
                log(f"    {key:28s} {val}")


def decode_rows(n: int, k: int, points: list[int]) -> None:
    """gemv (planned) + silu_mul against gemv with the SiLU epilogue, 8 weight copies (L2 does not serve them)."""
    stacked = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k**-0.5 for _ in range(8)]
    inter = [sw.interleave_gate_up(w) for w in stacked]
    for fused in (False, True):
        report: list = []
        group = (inter, None, True) if fused else (stacked, None)
        tg.plan([group], points, report)
        for key, base, best, cfg in report:
            if base is None:
                continue
            RESULTS.append({"case": "decode gate_up", "fused": fused, "rows": key[3], "cublas_us": base,
                            "best_us": best, "config": str(cfg)})
            log(f"decode gate_up rows {key[3]:4d} {'epilogue' if fused else 'separate'}: cuBLAS(+silu) {base:7.1f} "
                f"us, best {best:7.1f} us {cfg}")
    # the separate SiLU kernel after the best unfused gemv, timed as the engine runs it
    for rows in points:
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        gu = torch.randn(rows, n, device="cuda", dtype=torch.bfloat16)
        us = graph_time_us(lambda i, gu=gu: silu_mul(gu), 16)
        RESULTS.append({"case": "silu_mul alone", "rows": rows, "us": us})
        log(f"silu_mul alone rows {rows:4d}: {us:.1f} us")
        del x


def prefill_layer(tokens: int = 4096) -> None:
    """The other kernels of one 4,096-token prefill layer at GLM-4.1V-9B's dims (eager, event-timed)."""
    h, heads, kvh, d, inter = 4096, 32, 2, 128, 13696
    x = torch.randn(tokens, h, device="cuda", dtype=torch.bfloat16)
    ws = {"qkv": torch.randn((heads + 2 * kvh) * d, h, device="cuda", dtype=torch.bfloat16) * h**-0.5,
          "o": torch.randn(h, heads * d, device="cuda", dtype=torch.bfloat16) * h**-0.5,
          "down": torch.randn(h, inter, device="cuda", dtype=torch.bfloat16) * inter**-0.5}
    bias = torch.randn((heads + 2 * kvh) * d, device="cuda", dtype=torch.bfloat16)
    act = torch.randn(tokens, inter, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(1, heads, tokens, d, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(1, kvh, tokens, d, device="cuda", dtype=torch.bfloat16)
    parts = {
        "qkv (bias)": lambda i: F.linear(x, ws["qkv"], bias),
        "o": lambda i: F.linear(x, ws["o"]),
        "down": lambda i: F.linear(act, ws["down"]),
        "sdpa causal gqa": lambda i: F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True),
    }
    for name, fn in parts.items():
        us = graph_time_us(fn, 4)
        RESULTS.append({"case": "prefill layer", "part": name, "tokens": tokens, "us": us})
        log(f"prefill {tokens} layer part {name:16s}: {us:8.1f} us")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="where to write every figure (default $OUT/probe_swiglu.json)")
    ap.add_argument("--quick", action="store_true", help="fewer row counts")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        log("needs a CUDA device")
        return 2
    log(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    t0 = time.time()
    large_rows("text", 27392, 4096, [1334, 4096] if args.quick else [512, 1334, 4096, 8192])
    large_rows("vision", 8192, 1536, [5184] if args.quick else [5184, 20736], copies=4)
    large_rows("merger", 27392, 4096, [1296])
    decode_rows(27392, 4096, [1, 64, 128])
    prefill_layer()
    path = args.json or os.path.join(os.environ.get("OUT", "."), "probe_swiglu.json")
    with open(path, "w") as f:
        json.dump(RESULTS, f, indent=1, default=str)
    log(f"done in {time.time() - t0:.0f} s; figures in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
