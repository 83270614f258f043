"""GPU probe: the device's two ceilings (copy bandwidth, bf16 matmul) and glmv's Triton attention against PyTorch.

Run on a CUDA machine from the repository root (no install needed):

    PYTHONPATH=. python3 bench/gpu_probe.py [--quick] [--json out.json]

Shapes are GLM-4.1V-9B's attention (32 query heads, 2 KV heads, head_dim 128, block_size 16, bf16). Decode is timed
inside CUDA graphs (as the engine runs it), cycling through several disjoint KV sets so small cases do not just
re-read L2; each row also prints the byte floor (KV bytes over the measured copy bandwidth) and the kernel's error
against the PyTorch reference. The torch reference is SDPA over the KV gathered from the pages (what the engine's
fallback does); "sdpa-dense" is SDPA on KV that is already contiguous (no gather), the best torch can do.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from functools import partial

import torch
import torch.nn.functional as F

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 2, 128, 16
DTYPE = torch.bfloat16
DEVICE = "cuda"
RESULTS: dict[str, list[dict]] = {}


def record(section: str, **row) -> None:
    RESULTS.setdefault(section, []).append(row)


def event_time_ms(fn: Callable[[], object], iters: int = 20, warmup: int = 3) -> float:
    """Median of per-call event timings (for large single calls where launch overhead is noise)."""
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


def graph_time_ms(calls: list[Callable[[], object]], replays: int = 15) -> float:
    """Capture all `calls` in one CUDA graph, replay it, and return the median time per call."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:  # compile and warm up outside the capture
            call()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    del graph
    return statistics.median(times) / len(calls)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


# ---------------------------------------------------------------------------------------------------------------------
# ceilings
# ---------------------------------------------------------------------------------------------------------------------


def probe_ceilings() -> tuple[float, float]:
    n = 1 << 30  # 1 GiB each way
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device=DEVICE)
    ms = event_time_ms(partial(torch.Tensor.copy_, torch.empty_like(src), src), iters=20)
    bandwidth = 2 * n / (ms * 1e-3)  # bytes read + written
    src = None
    size = 8192
    a = torch.randn(size, size, dtype=DTYPE, device=DEVICE)
    ms_mm = event_time_ms(partial(torch.matmul, a, torch.randn_like(a)), iters=10)
    flops = 2 * size**3 / (ms_mm * 1e-3)
    a = None
    torch.cuda.empty_cache()
    record("ceilings", copy_gbps=bandwidth / 1e9, copy_ms=ms, matmul_tflops=flops / 1e12, matmul_ms=ms_mm)
    print(f"copy 1 GiB: {ms:.3f} ms = {bandwidth / 1e12:.2f} TB/s (read+write); "
          f"bf16 matmul 8192^3: {ms_mm:.3f} ms = {flops / 1e12:.0f} TFLOP/s", flush=True)  # fmt: skip
    return bandwidth, flops


# ---------------------------------------------------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------------------------------------------------


class DecodeSets:
    """n disjoint random KV sets for a (batch, context) decode step, sharing one paged pool."""

    def __init__(self, batch: int, context: int, table_width: int | None = None, target_bytes: float = 256e6):
        self.batch, self.context = batch, context
        blocks_per_seq = math.ceil(context / BLOCK_SIZE)
        set_bytes = batch * context * KV_HEADS * HEAD_DIM * 2 * 2
        self.n_sets = max(2, min(16, math.ceil(target_bytes / set_bytes)))
        num_blocks = self.n_sets * batch * blocks_per_seq + 1
        shape = (num_blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
        self.k_cache = torch.randn(shape, dtype=DTYPE, device=DEVICE)
        self.v_cache = torch.randn(shape, dtype=DTYPE, device=DEVICE)
        perm = torch.randperm(num_blocks - 1, device=DEVICE).to(torch.int32) + 1  # block 0: the engine's null block
        width = table_width or blocks_per_seq
        self.tables, self.queries = [], []
        for i in range(self.n_sets):
            own = perm[i * batch * blocks_per_seq : (i + 1) * batch * blocks_per_seq].view(batch, blocks_per_seq)
            table = torch.zeros(batch, width, dtype=torch.int32, device=DEVICE)
            table[:, :blocks_per_seq] = own
            self.tables.append(table)
            self.queries.append(torch.randn(batch, HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE))
        self.seq_lens = torch.full((batch,), context, dtype=torch.int32, device=DEVICE)
        self.kv_bytes = set_bytes + 2 * batch * HEADS * HEAD_DIM * 2

    def call(self, i: int, attention: Callable[..., torch.Tensor], scale: float) -> torch.Tensor:
        return attention(self.queries[i], self.k_cache, self.v_cache, self.tables[i], self.seq_lens, scale)

    def calls(self, attention: Callable[..., torch.Tensor], scale: float) -> list[Callable[[], torch.Tensor]]:
        """One call per set, for a graph that cycles through them all."""
        return [partial(self.call, i, attention, scale) for i in range(self.n_sets)]

    def dense_kv(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Set i's KV gathered once into [batch, kv_heads, context, head_dim] (for the no-gather torch baseline)."""
        blocks = self.tables[i][:, : math.ceil(self.context / BLOCK_SIZE)].long()
        k = self.k_cache[blocks].flatten(1, 2)[:, : self.context].transpose(1, 2).contiguous()
        v = self.v_cache[blocks].flatten(1, 2)[:, : self.context].transpose(1, 2).contiguous()
        return k, v


def torch_gather_sdpa_decode(q, k_cache, v_cache, block_tables, seq_lens, scale):
    """SDPA over the gathered pages with a length mask (the engine's PyTorch fallback, restated here)."""
    batch, width = block_tables.shape
    keys = k_cache[block_tables.long()].view(batch, width * BLOCK_SIZE, KV_HEADS, HEAD_DIM).transpose(1, 2)
    values = v_cache[block_tables.long()].view(batch, width * BLOCK_SIZE, KV_HEADS, HEAD_DIM).transpose(1, 2)
    mask = (torch.arange(width * BLOCK_SIZE, device=q.device)[None] < seq_lens[:, None]).view(batch, 1, 1, -1)
    out = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values, attn_mask=mask, scale=scale, enable_gqa=True)
    return out.squeeze(2)


def torch_write_kv(k, v, k_cache, v_cache, slots) -> None:
    k_cache.view(-1, KV_HEADS, HEAD_DIM).index_copy_(0, slots, k)
    v_cache.view(-1, KV_HEADS, HEAD_DIM).index_copy_(0, slots, v)


def probe_decode(batches, contexts, bandwidth, kernels) -> None:
    scale = HEAD_DIM**-0.5
    print("\n== decode: ms per call (CUDA graph), byte floor at the measured copy bandwidth ==", flush=True)
    print(f"{'batch':>5} {'ctx':>5} {'MB':>7} {'floor us':>9} {'triton us':>10} {'GB/s':>6} {'%floor':>7} "
          f"{'torch us':>9} {'dense us':>9} {'speedup':>8} {'splits':>6} {'err':>8}", flush=True)  # fmt: skip
    for context in contexts:
        for batch in batches:
            try:
                sets = DecodeSets(batch, context)
                splits = kernels.decode_num_splits(batch, KV_HEADS, context, sets.queries[0].device)
                t_triton = graph_time_ms(sets.calls(kernels.paged_decode_attention, scale))
                out = sets.call(0, kernels.paged_decode_attention, scale)
                err = rel_err(out, sets.call(0, torch_gather_sdpa_decode, scale))
                n_ref = min(sets.n_sets, 4)  # the gather allocates; keep the graph's pool modest
                t_torch = graph_time_ms(sets.calls(torch_gather_sdpa_decode, scale)[:n_ref])
                dense = [sets.dense_kv(i) for i in range(n_ref)]
                t_dense = graph_time_ms([
                    partial(F.scaled_dot_product_attention, sets.queries[i].unsqueeze(2), k, v, scale=scale,
                            enable_gqa=True)
                    for i, (k, v) in enumerate(dense)
                ])  # fmt: skip
                dense = None
                floor_us = sets.kv_bytes / bandwidth * 1e6
                us = t_triton * 1e3
                row = dict(batch=batch, context=context, kv_mb=sets.kv_bytes / 1e6, floor_us=floor_us, triton_us=us,
                           triton_gbps=sets.kv_bytes / (us * 1e-6) / 1e9, torch_us=t_torch * 1e3,
                           sdpa_dense_us=t_dense * 1e3, splits=splits, rel_err=err)  # fmt: skip
                record("decode", **row)
                print(f"{batch:>5} {context:>5} {row['kv_mb']:>7.1f} {floor_us:>9.1f} {us:>10.1f} "
                      f"{row['triton_gbps']:>6.0f} {100 * floor_us / us:>6.0f}% {row['torch_us']:>9.1f} "
                      f"{row['sdpa_dense_us']:>9.1f} {row['torch_us'] / us:>7.1f}x {splits:>6} {err:>8.1e}",
                      flush=True)  # fmt: skip
                sets = None
                torch.cuda.empty_cache()
            except Exception:  # noqa: BLE001 - one failing shape must not hide the others
                print(f"decode batch={batch} ctx={context} FAILED:\n{traceback.format_exc()}", flush=True)


def probe_decode_wide_tables(kernels, bandwidth) -> None:
    """The engine's graphs size block tables for max_model_len; the kernel splits by the real length instead."""
    scale = HEAD_DIM**-0.5
    print("\n== decode with 64k-wide block tables (graph-sized) vs tight tables ==", flush=True)
    for batch, context in ((1, 1024), (32, 1024), (128, 512)):
        try:
            for width in (None, 65536 // BLOCK_SIZE):
                sets = DecodeSets(batch, context, table_width=width)
                t = graph_time_ms(sets.calls(kernels.paged_decode_attention, scale))
                w = sets.tables[0].shape[1]
                record("decode_wide", batch=batch, context=context, table_width=w, triton_us=t * 1e3)
                print(f"  batch {batch:>3} ctx {context:>5} table width {w:>5}: {t * 1e3:8.1f} us "
                      f"(floor {sets.kv_bytes / bandwidth * 1e6:.1f} us)", flush=True)  # fmt: skip
                sets = None
        except Exception:  # noqa: BLE001
            print(f"wide-table batch={batch} FAILED:\n{traceback.format_exc()}", flush=True)


def probe_decode_tuning(kernels, bandwidth, full: bool) -> None:
    """Launch-shape sweep on a few decode shapes: picks DecodeTuning's defaults."""
    scale = HEAD_DIM**-0.5
    T = kernels.DecodeTuning
    variants = [
        T(),
        T(min_tokens_per_split=256),
        T(block_n=128, num_warps=8, num_stages=3),
        T(programs_per_sm=4, min_tokens_per_split=64),
    ]
    if full:
        variants += [
        T(block_n=32, num_warps=4, num_stages=2),
        T(block_n=64, num_warps=4, num_stages=2),
        T(block_n=64, num_warps=4, num_stages=4),
        T(block_n=128, num_warps=4, num_stages=3),
        T(block_n=128, num_warps=8, num_stages=3),
        T(block_n=64, num_warps=8, num_stages=3),
        T(block_n=32, num_warps=2, num_stages=3),
        T(programs_per_sm=1),
        T(programs_per_sm=4),
        T(programs_per_sm=8, min_tokens_per_split=128),
    ]  # fmt: skip
    print("\n== decode launch-shape sweep (us per call; CUDA graph) ==", flush=True)
    shapes = [(1, 4096), (8, 4096), (64, 1024), (128, 4096)]
    print(f"{'variant':<62}" + "".join(f"{f'b{b}/c{c}':>11}" for b, c in shapes), flush=True)
    all_sets = [DecodeSets(b, c) for b, c in shapes]
    for tuning in variants:
        cells = []
        for sets in all_sets:
            try:
                t = graph_time_ms(sets.calls(partial(kernels.paged_decode_attention, tuning=tuning), scale))
                cells.append(t * 1e3)
            except Exception as exc:  # noqa: BLE001
                cells.append(float("nan"))
                print(f"  {tuning}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        record("decode_tuning", tuning=asdict(tuning), us=cells, shapes=shapes)
        name = (
            f"n{tuning.block_n} w{tuning.num_warps} s{tuning.num_stages} "
            f"pps{tuning.programs_per_sm} mt{tuning.min_tokens_per_split}"
        )
        print(f"{name:<62}" + "".join(f"{c:>11.1f}" for c in cells), flush=True)
    floors = [s.kv_bytes / bandwidth * 1e6 for s in all_sets]
    print(f"{'byte floor':<62}" + "".join(f"{f:>11.1f}" for f in floors), flush=True)
    all_sets = None
    torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------------------
# prefill
# ---------------------------------------------------------------------------------------------------------------------


def make_prefill(chunks: list[tuple[int, int]]):
    """Random paged inputs for sequences given as (cached context, new tokens)."""
    seq_lens = [c + n for c, n in chunks]
    needed = [math.ceil(s / BLOCK_SIZE) for s in seq_lens]
    num_blocks = sum(needed) + 1
    shape = (num_blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    k_cache = torch.randn(shape, dtype=DTYPE, device=DEVICE)
    v_cache = torch.randn(shape, dtype=DTYPE, device=DEVICE)
    perm = (torch.randperm(num_blocks - 1, device=DEVICE) + 1).to(torch.int32)
    tables = torch.zeros(len(chunks), max(needed), dtype=torch.int32, device=DEVICE)
    cursor = 0
    for s, n in enumerate(needed):
        tables[s, :n] = perm[cursor : cursor + n]
        cursor += n
    q_lens = [n for _, n in chunks]
    cu = torch.tensor([0] + q_lens, device=DEVICE).cumsum(0).to(torch.int32)
    q = torch.randn(sum(q_lens), HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    return q, k_cache, v_cache, tables, cu, lens, max(q_lens)


def sdpa_expanded(q, k, v):
    """SDPA's flash path needs as many KV heads as query heads: expand, then attend (both timed)."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def causal_flops(chunks) -> float:
    total = 0
    for context, new in chunks:
        visible = new * context + new * (new + 1) / 2  # query-key pairs under the causal mask
        total += 4 * HEADS * HEAD_DIM * visible
    return total


def torch_prefill_reference(q, k_cache, v_cache, tables, cu, lens, scale, chunks):
    """Per-sequence SDPA over the gathered pages (the engine's PyTorch fallback, restated; host-side lengths)."""
    out = torch.empty_like(q)
    start = 0
    for s, (context, new) in enumerate(chunks):
        length = context + new
        blocks = tables[s, : math.ceil(length / BLOCK_SIZE)].long()
        keys = k_cache[blocks].flatten(0, 1)[:length].transpose(0, 1).unsqueeze(0)
        values = v_cache[blocks].flatten(0, 1)[:length].transpose(0, 1).unsqueeze(0)
        query = q[start : start + new].transpose(0, 1).unsqueeze(0)
        if context == 0:
            o = F.scaled_dot_product_attention(query, keys, values, is_causal=True, scale=scale, enable_gqa=True)
        else:
            q_pos = torch.arange(new, device=q.device)[:, None] + context
            mask = torch.arange(length, device=q.device)[None] <= q_pos
            o = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)
        out[start : start + new] = o.squeeze(0).transpose(0, 1)
        start += new
    return out


def probe_prefill(kernels, matmul_flops) -> None:
    scale = HEAD_DIM**-0.5
    print("\n== prefill: ms per call; TFLOP/s counts the causal half only ==", flush=True)
    print(f"{'case':<26} {'GFLOP':>7} {'floor ms':>9} {'triton ms':>10} {'graphed':>8} {'TFLOP/s':>8} {'torch ms':>9} "
          f"{'flash ms':>9} {'gqa ms':>8} {'speedup':>8} {'err':>8}", flush=True)  # fmt: skip
    cases = {
        "1 x 1024": [(0, 1024)],
        "1 x 4096": [(0, 4096)],
        "1024 after 3072 cached": [(3072, 1024)],
        "8 x 512": [(0, 512)] * 8,
        "4 x 2048 (mixed ctx)": [(0, 2048), (1024, 2048), (0, 2048), (2048, 2048)],
    }
    for name, chunks in cases.items():
        try:
            inputs = make_prefill(chunks)
            run = partial(kernels.paged_prefill_attention, *inputs[:6], scale, inputs[6])
            t = event_time_ms(run, iters=20)
            ref_run = partial(torch_prefill_reference, *inputs[:6], scale, chunks)
            err = rel_err(run(), ref_run())
            t_torch = event_time_ms(ref_run, iters=10)
            t_graph = graph_time_ms([run])  # kernel time without the host's launch cost
            t_dense = t_gqa = float("nan")
            if len(chunks) == 1 and chunks[0][0] == 0:  # SDPA on contiguous KV (no pages), the fresh-prompt case
                n = chunks[0][1]
                qd = inputs[0].transpose(0, 1).unsqueeze(0)
                kd = torch.randn(1, KV_HEADS, n, HEAD_DIM, dtype=DTYPE, device=DEVICE)
                vd = torch.randn_like(kd)
                # expand KV heads to all query heads (timed) so SDPA takes its flash kernel
                t_dense = graph_time_ms([partial(sdpa_expanded, qd, kd, vd)])
                t_gqa = graph_time_ms([partial(F.scaled_dot_product_attention, qd, kd, vd, is_causal=True,
                                               enable_gqa=True)])  # fmt: skip
            flops = causal_flops(chunks)
            floor_ms = flops / matmul_flops * 1e3
            row = dict(case=name, gflop=flops / 1e9, floor_ms=floor_ms, triton_ms=t, triton_graphed_ms=t_graph,
                       tflops=flops / (t_graph * 1e-3) / 1e12, torch_ms=t_torch, sdpa_expand_flash_ms=t_dense,
                       sdpa_gqa_ms=t_gqa, rel_err=err)  # fmt: skip
            record("prefill", **row)
            print(f"{name:<26} {flops / 1e9:>7.1f} {floor_ms:>9.3f} {t:>10.3f} {t_graph:>8.3f} {row['tflops']:>8.0f} "
                  f"{t_torch:>9.3f} {t_dense:>9.3f} {t_gqa:>8.3f} {t_torch / t:>7.1f}x {err:>8.1e}",
                  flush=True)  # fmt: skip
            inputs = run = ref_run = None
            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            print(f"prefill {name} FAILED:\n{traceback.format_exc()}", flush=True)


def probe_prefill_tuning(kernels, full: bool) -> None:
    scale = HEAD_DIM**-0.5
    T = kernels.PrefillTuning
    variants = [T(), T(block_m=128, block_n=128, num_warps=8, num_stages=2), T(block_m=64, block_n=32, num_warps=4)]
    if full:
        variants += [
        T(block_m=128, block_n=128, num_warps=8, num_stages=3),
        T(block_m=128, block_n=64, num_warps=4, num_stages=3),
        T(block_m=128, block_n=64, num_warps=8, num_stages=2),
        T(block_m=128, block_n=64, num_warps=8, num_stages=4),
        T(block_m=64, block_n=64, num_warps=4, num_stages=3),
        T(block_m=64, block_n=128, num_warps=4, num_stages=3),
        T(block_m=128, block_n=32, num_warps=4, num_stages=4),
    ]  # fmt: skip
    print("\n== prefill launch-shape sweep (ms per call) ==", flush=True)
    cases = [[(0, 4096)], [(3072, 1024)], [(0, 512)] * 8]
    inputs = [make_prefill(c) for c in cases]
    print(f"{'variant':<32}" + "".join(f"{'x'.join(str(n) for n in (len(c), c[0][1])):>12}" for c in cases), flush=True)
    for tuning in variants:
        cells = []
        for case in inputs:
            try:
                run = partial(kernels.paged_prefill_attention, *case[:6], scale, case[6], tuning=tuning)
                cells.append(event_time_ms(run, iters=15))
            except Exception as exc:  # noqa: BLE001
                cells.append(float("nan"))
                print(f"  {tuning}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        record("prefill_tuning", tuning=asdict(tuning), ms=cells)
        name = f"m{tuning.block_m} n{tuning.block_n} w{tuning.num_warps} s{tuning.num_stages}"
        print(f"{name:<32}" + "".join(f"{c:>12.3f}" for c in cells), flush=True)


def probe_write_kv(kernels, bandwidth) -> None:
    print("\n== write_kv (tokens x 2 KV heads x 128, bf16) ==", flush=True)
    for tokens in (128, 4096):
        num_blocks = 8192
        k_cache = torch.randn(num_blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
        v_cache = torch.randn_like(k_cache)
        k = torch.randn(tokens, KV_HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
        v = torch.randn_like(k)
        slots = torch.randperm(num_blocks * BLOCK_SIZE, device=DEVICE)[:tokens]
        t = graph_time_ms([partial(kernels.write_kv, k, v, k_cache, v_cache, slots)] * 4)
        t_ref = graph_time_ms([partial(torch_write_kv, k, v, k_cache, v_cache, slots)] * 4)
        moved = 2 * 2 * k.numel() * 2
        record("write_kv", tokens=tokens, triton_us=t * 1e3, torch_us=t_ref * 1e3, bytes=moved)
        print(f"  {tokens:>5} tokens: triton {t * 1e3:7.2f} us, torch index_copy_ {t_ref * 1e3:7.2f} us "
              f"(floor {moved / bandwidth * 1e6:.2f} us)", flush=True)  # fmt: skip


def torch_rms_norm(x, weight, eps=1e-5):
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def torch_rotary(x, cos, sin):
    rot = cos.shape[-1] * 2
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    return torch.cat((torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2), x_pass), dim=-1)


def torch_layer_exit(x, residual, w_post, w_next):
    hidden = residual + torch_rms_norm(x, w_post)
    return hidden, torch_rms_norm(hidden, w_next)


def torch_silu_mul(gate_up):
    gate, up = gate_up.chunk(2, dim=-1)
    return up * F.silu(gate)


def torch_rotary_write_kv(q, k, v, cos, sin, k_cache, v_cache, slots):
    q = torch_rotary(q, cos, sin)
    torch_write_kv(torch_rotary(k, cos, sin), v, k_cache, v_cache, slots)
    return q


def probe_fused(fused) -> None:
    """The decoder layer's small steps: one fused launch against eager PyTorch's chain, both inside CUDA graphs."""
    hidden, inter, pairs = 4096, 13696, 32
    print("\n== fused layer steps vs eager torch (us per call, CUDA graph; per-step = 40 layers) ==", flush=True)
    print(f"{'tokens':>6} {'step':<22} {'triton us':>10} {'torch us':>9} {'saved/layer':>12}", flush=True)
    for tokens in (1, 64, 256, 4096):
        x = torch.randn(tokens, hidden, dtype=DTYPE, device=DEVICE)
        residual = torch.randn_like(x)
        w1 = torch.randn(hidden, dtype=DTYPE, device=DEVICE)
        w2 = torch.randn_like(w1)
        gate_up = torch.randn(tokens, 2 * inter, dtype=DTYPE, device=DEVICE)
        qkv = torch.randn(tokens, (HEADS + 2 * KV_HEADS) * HEAD_DIM, dtype=DTYPE, device=DEVICE)
        q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
        q, k, v = (t.view(tokens, -1, HEAD_DIM) for t in (q, k, v))
        angles = torch.rand(tokens, pairs, device=DEVICE) * 100
        cos, sin = angles.cos().to(DTYPE), angles.sin().to(DTYPE)
        k_cache = torch.randn(max(64, tokens // 16 + 1), BLOCK_SIZE, KV_HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
        v_cache = torch.randn_like(k_cache)
        slots = torch.randperm(k_cache.shape[0] * BLOCK_SIZE, device=DEVICE)[:tokens]
        steps = {
            "rms_norm": (partial(fused.rms_norm, x, w1, 1e-5), partial(torch_rms_norm, x, w1)),
            "residual_rms_norm": (partial(fused.residual_rms_norm, x, residual, w1, w2, 1e-5),
                                  partial(torch_layer_exit, x, residual, w1, w2)),
            "silu_mul": (partial(fused.silu_mul, gate_up), partial(torch_silu_mul, gate_up)),
            "rotary_write_kv": (partial(fused.rotary_write_kv, q, k, v, cos, sin, k_cache, v_cache, slots),
                                partial(torch_rotary_write_kv, q, k, v, cos, sin, k_cache, v_cache, slots)),
        }  # fmt: skip
        saved = 0.0
        for name, (ours, theirs) in steps.items():
            try:
                t_ours = graph_time_ms([ours] * 4) * 1e3
                t_theirs = graph_time_ms([theirs] * 4) * 1e3
                per_layer = {"rms_norm": 0, "residual_rms_norm": 2, "silu_mul": 1, "rotary_write_kv": 1}[name]
                saved += per_layer * (t_theirs - t_ours)
                record("fused", tokens=tokens, step=name, triton_us=t_ours, torch_us=t_theirs)
                print(f"{tokens:>6} {name:<22} {t_ours:>10.2f} {t_theirs:>9.2f} {t_theirs - t_ours:>11.2f}", flush=True)
            except Exception:  # noqa: BLE001
                print(f"fused {name} tokens={tokens} FAILED:\n{traceback.format_exc()}", flush=True)
        record("fused_step_saving", tokens=tokens, saved_us_per_step=40 * saved)
        print(f"{tokens:>6} {'=> saved per step':<22} {40 * saved:>10.0f} us (2 exits + silu_mul + rotary, x40)",
              flush=True)  # fmt: skip
    torch.cuda.empty_cache()


def host_us_per_call(fn: Callable[[], object], calls: int = 200) -> float:
    """Host time per call with nothing synchronizing: what eager (not graph-captured) use pays per launch."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def probe_host_cost(attention, fused) -> None:
    """Eager launch cost on the host (Python wrapper + Triton launcher) against one plain torch op."""
    print("\n== host cost per eager call (us; no sync; GPU work tiny) ==", flush=True)
    scale = HEAD_DIM**-0.5
    sets = DecodeSets(8, 512, target_bytes=0)
    pre = make_prefill([(0, 64), (100, 32)])
    x = torch.randn(1, 4096, dtype=DTYPE, device=DEVICE)
    w = torch.randn(4096, dtype=DTYPE, device=DEVICE)
    qkv = torch.randn(1, (HEADS + 2 * KV_HEADS) * HEAD_DIM, dtype=DTYPE, device=DEVICE)
    q, k, v = (
        t.view(1, -1, HEAD_DIM) for t in qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], -1)
    )
    cos = torch.randn(1, 32, dtype=DTYPE, device=DEVICE)
    slots = torch.arange(1, device=DEVICE)
    cases = {
        "torch.add (one op)": partial(torch.add, x, x),
        "paged_decode_attention": partial(sets.call, 0, attention.paged_decode_attention, scale),
        "paged_prefill_attention": partial(attention.paged_prefill_attention, *pre[:6], scale, pre[6]),
        "write_kv": partial(attention.write_kv, k, v, sets.k_cache, sets.v_cache, slots),
        "rms_norm": partial(fused.rms_norm, x, w, 1e-5),
        "residual_rms_norm": partial(fused.residual_rms_norm, x, x, w, w, 1e-5),
        "rotary_write_kv": partial(fused.rotary_write_kv, q, k, v, cos, cos, sets.k_cache, sets.v_cache, slots),
        "torch rms_norm (chain)": partial(torch_rms_norm, x, w),
    }
    for name, fn in cases.items():
        try:
            us = host_us_per_call(fn)
            record("host_cost", call=name, us=us)
            print(f"  {name:<26} {us:7.1f}", flush=True)
        except Exception:  # noqa: BLE001
            print(f"host cost {name} FAILED:\n{traceback.format_exc()}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer shapes, no sweeps")
    parser.add_argument("--no-sweep", action="store_true", help="skip the launch-shape sweeps")
    parser.add_argument("--full-sweep", action="store_true", help="every launch-shape variant, not just the finalists")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_probe: no CUDA device here", file=sys.stderr)
        return 2
    import triton

    from glmv import kernels
    from glmv.kernels import triton_attention, triton_fused

    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB; "
          f"torch {torch.__version__}, triton {triton.__version__}; kernels.available()={kernels.available()}",
          flush=True)  # fmt: skip
    started = time.time()
    torch.manual_seed(0)
    bandwidth, matmul_flops = probe_ceilings()
    batches = [1, 8, 32, 64, 128] if not args.quick else [1, 32, 128]
    contexts = [512, 1024, 4096] if not args.quick else [1024, 4096]
    probe_decode(batches, contexts, bandwidth, triton_attention)
    if not args.quick:
        print("\n(long contexts)", flush=True)
        probe_decode([1, 16], [16384, 65536], bandwidth, triton_attention)
    probe_prefill(triton_attention, matmul_flops)
    probe_write_kv(triton_attention, bandwidth)
    probe_fused(triton_fused)
    probe_host_cost(triton_attention, triton_fused)
    if not (args.quick or args.no_sweep):
        probe_decode_wide_tables(triton_attention, bandwidth)
        probe_decode_tuning(triton_attention, bandwidth, args.full_sweep)
        probe_prefill_tuning(triton_attention, args.full_sweep)
    print(f"\nprobe took {time.time() - started:.0f} s", flush=True)
    RESULTS["device"] = [dict(name=props.name, sms=props.multi_processor_count, torch=torch.__version__,
                              triton=triton.__version__)]  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(RESULTS, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
