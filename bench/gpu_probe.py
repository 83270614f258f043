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


# ---------------------------------------------------------------------------------------------------------------------
# session 2: split-K decode matmuls, one-launch decode attention, the vision tower's fused steps
# ---------------------------------------------------------------------------------------------------------------------

GEMV_SHAPES = {"qkv": (4608, 4096, True), "o": (4096, 4096, False), "gate_up": (27392, 4096, False),
               "down": (4096, 13696, False)}  # (N, K, bias) of GLM-4.1V-9B's decoder matmuls


def gemv_sweep_configs():
    from glmv.kernels.triton_gemv import GemvConfig as G

    small = [G(16, 256, 4, 4), G(32, 256, 4, 4), G(16, 512, 4, 3), G(64, 128, 4, 4)]
    small += [G(16, 256, 4, 4, s) for s in (2, 4)] + [G(32, 256, 4, 4, s) for s in (2, 4, 8)]
    small += [G(64, 128, 4, 4, s) for s in (2, 4, 8)] + [G(128, 128, 4, 3, s) for s in (4, 8)]
    small += [G(16, 128, 4, 6, s) for s in (2, 4)] + [G(32, 128, 4, 6, s) for s in (2, 4)]
    mid = [G(64, 128, 4, 4), G(32, 256, 4, 3), G(64, 128, 4, 4, 2), G(64, 128, 4, 4, 4)]
    mid += [G(128, 64, 4, 4, s) for s in (1, 2, 4)] + [G(128, 128, 8, 3, s) for s in (1, 2)]
    mid += [G(256, 64, 8, 3, s) for s in (1, 2)] + [G(128, 64, 8, 4, 2), G(64, 64, 4, 6, 4)]
    return {16: small, 64: mid}


def probe_gemv_sweep(bandwidth: float, rows_list=(1, 64)) -> None:
    """Every candidate decode-matmul configuration against cuBLAS at GLM's four layer shapes (CUDA graphs, cycling
    over enough distinct weights that L2 never serves them)."""
    from glmv.kernels.triton_gemv import _time_us, block_m, gemv

    print("\n== decode matmul sweep: us per call (CUDA graph, cycling weights), GB/s of weights ==", flush=True)
    configs = gemv_sweep_configs()
    for name, (n, k, has_bias) in GEMV_SHAPES.items():
        count = max(3, min(8, int(1.5e9 // (n * k * 2))))
        weights = [(torch.randn(n, k, device=DEVICE) * 0.02).to(DTYPE) for _ in range(count)]
        biases = [torch.randn(n, device=DEVICE).to(DTYPE) for _ in range(count)] if has_bias else None
        w_bytes = n * k * 2
        for rows in rows_list:
            x = torch.randn(rows, k, device=DEVICE).to(DTYPE)
            base = _time_us(x, weights, biases, None)
            ref = F.linear(x, weights[0], biases[0] if biases else None).float()
            print(f"  {name} N={n} K={k} rows={rows}: cuBLAS {base:7.2f} us ({w_bytes / base / 1e3:6.0f} GB/s; "
                  f"floor {w_bytes / bandwidth * 1e6:.2f} us at the copy rate)", flush=True)
            record("gemv_sweep", shape=name, rows=rows, config="cublas", us=base, gbps=w_bytes / base / 1e3)
            best = (base, "cublas")
            for cfg in configs[block_m(rows)]:
                try:
                    out = gemv(x, weights[0], biases[0] if biases else None, cfg).float()
                    again = gemv(x, weights[0], biases[0] if biases else None, cfg).float()
                    err = rel_err(out, ref)
                    repeat_ok = bool(torch.equal(out, again))
                    us = _time_us(x, weights, biases, cfg)
                except Exception as exc:  # noqa: BLE001
                    print(f"    {cfg}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                    continue
                record("gemv_sweep", shape=name, rows=rows, config=str(cfg), us=us, gbps=w_bytes / us / 1e3,
                       err=err, deterministic=repeat_ok)  # fmt: skip
                flag = " <" if us < best[0] else ""
                if us < best[0]:
                    best = (us, str(cfg))
                print(f"    n{cfg.block_n:<4} k{cfg.block_k:<4} w{cfg.num_warps} s{cfg.num_stages} split{cfg.split_k:<2}"
                      f" {us:8.2f} us {w_bytes / us / 1e3:6.0f} GB/s x{base / us:5.2f} err {err:.1e}"
                      f"{'' if repeat_ok else ' NONDETERMINISTIC'}{flag}", flush=True)  # fmt: skip
            print(f"  -> best {name} rows={rows}: {best[1]} {best[0]:.2f} us (cuBLAS {base:.2f})", flush=True)
        weights = biases = None
        torch.cuda.empty_cache()


def probe_decode_engine_shapes(kernels, bandwidth) -> None:
    """Decode attention launch shapes at the engine's graph-sized tables (8,192 tokens) and context 640, the
    shapes of the bench's decode steps (PDL as the engine runs it)."""
    scale = HEAD_DIM**-0.5
    T = kernels.DecodeTuning
    variants = [T(), T(block_n=32), T(block_n=32, num_stages=4), T(block_n=64, num_stages=4),
                T(block_n=128, num_warps=8), T(programs_per_sm=1), T(programs_per_sm=3), T(programs_per_sm=4),
                T(block_n=32, programs_per_sm=4), T(num_warps=8), T(block_n=32, num_warps=2),
                # session 3: no split at all (one program per sequence and KV head), and at most two
                T(max_splits=1), T(max_splits=1, num_warps=8), T(max_splits=1, block_n=32, num_stages=4),
                T(max_splits=1, block_n=128, num_warps=8), T(max_splits=1, num_stages=4), T(max_splits=2)]
    print("\n== decode attention at graph-sized tables (us, CUDA graph) ==", flush=True)
    cases = [(1, 640), (64, 640), (64, 1024), (128, 640)]
    print(f"{'variant':<44}" + "".join(f"{f'b{b}/c{c}':>11}" for b, c in cases), flush=True)
    all_sets = [DecodeSets(b, c, table_width=8192 // BLOCK_SIZE) for b, c in cases]
    refs = [sets.call(0, torch_gather_sdpa_decode, scale) for sets in all_sets]
    for tuning in variants:
        cells = []
        for sets, ref in zip(all_sets, refs, strict=True):
            try:
                fn = partial(kernels.paged_decode_attention, tuning=tuning)
                err = rel_err(sets.call(0, fn, scale), ref)
                t = graph_time_ms(sets.calls(fn, scale)) * 1e3
                cells.append(f"{t:6.1f}{'' if err < 1e-2 else '!'}")
                record("decode_engine_shapes", tuning=asdict(tuning), batch=sets.batch, context=sets.context, us=t,
                       err=err)  # fmt: skip
            except Exception as exc:  # noqa: BLE001
                cells.append("   n/a")
                print(f"  {tuning}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        name = f"n{tuning.block_n} w{tuning.num_warps} s{tuning.num_stages} pps{tuning.programs_per_sm}" + (
            f" max{tuning.max_splits}" if tuning.max_splits != T().max_splits else "")
        print(f"{name:<44}" + "".join(f"{c:>11}" for c in cells), flush=True)
    floors = [sets.kv_bytes / bandwidth * 1e6 for sets in all_sets]
    print(f"{'byte floor':<44}" + "".join(f"{f:>11.1f}" for f in floors), flush=True)
    all_sets = None
    torch.cuda.empty_cache()


def probe_vision_steps(fused) -> None:
    """The vision tower's elementwise steps at one 1008x1008 picture (5,184 patches, hidden 1536, 12 heads)."""
    print("\n== vision steps at 5184 tokens (us, CUDA graph) ==", flush=True)
    t, hidden, heads, hd = 5184, 1536, 12, 128
    xs = [torch.randn(t, hidden, device=DEVICE).to(DTYPE) for _ in range(3)]
    ds = [torch.randn(t, hidden, device=DEVICE).to(DTYPE) for _ in range(3)]
    w = torch.randn(hidden, device=DEVICE).to(DTYPE)
    torch_add_norm = [partial(lambda x, d: torch_rms_norm(x + d, w), x, d) for x, d in zip(xs, ds, strict=True)]
    fused_add_norm = [partial(fused.add_rms_norm, x, d, w, 1e-5) for x, d in zip(xs, ds, strict=True)]
    h, n = fused.add_rms_norm(xs[0], ds[0], w, 1e-5)
    same = torch.equal(h, xs[0] + ds[0]) and torch.equal(n, fused.rms_norm(xs[0] + ds[0], w, 1e-5))
    print(f"  add + rms_norm: torch {graph_time_ms(torch_add_norm) * 1e3:6.1f}  fused "
          f"{graph_time_ms(fused_add_norm) * 1e3:6.1f}  (bitwise equal to add then fused rms_norm: {same})",
          flush=True)  # fmt: skip
    qkvs = [torch.randn(t, 3, heads, hd, device=DEVICE).to(DTYPE) for _ in range(3)]
    tables = torch.rand(t, 2 * hd, device=DEVICE) * 50
    cos, sin = tables[:, :hd].cos(), tables[:, hd:].sin()
    two = [partial(lambda qkv: (fused.rotary_half(qkv[:, 0], cos, sin), fused.rotary_half(qkv[:, 1], cos, sin)), q)
           for q in qkvs]
    pair = [partial(lambda qkv: fused.rotary_half_pair(qkv[:, 0], qkv[:, 1], cos, sin), q) for q in qkvs]
    a, b = fused.rotary_half_pair(qkvs[0][:, 0], qkvs[0][:, 1], cos, sin)
    same = torch.equal(a, fused.rotary_half(qkvs[0][:, 0], cos, sin)) and torch.equal(
        b, fused.rotary_half(qkvs[0][:, 1], cos, sin))
    print(f"  rotary q and k: two launches {graph_time_ms(two) * 1e3:6.1f}  pair {graph_time_ms(pair) * 1e3:6.1f}"
          f"  (bitwise equal: {same})", flush=True)  # fmt: skip


def _decode_layers(ws, cfgs, h0, norm_w, bias, cos, sin, k_cache, v_cache, slots, table, lens):
    """The decode chain of len(ws) GLM layers (the engine's fused path, restated with explicit matmul choices)."""
    from glmv.kernels import triton_attention, triton_fused
    from glmv.kernels.triton_gemv import gemv

    def linear(x, w, b, cfg):
        return F.linear(x, w, b) if cfg is None else gemv(x, w, b, cfg)

    batch = h0.shape[0]
    hidden_s, x = h0, triton_fused.rms_norm(h0, norm_w, 1e-5)
    for w in ws:
        q, k, v = linear(x, w["qkv"], bias, cfgs["qkv"]).split([4096, 256, 256], dim=-1)
        q = triton_fused.rotary_write_kv(q.view(batch, 32, 128), k.view(batch, 2, 128), v.view(batch, 2, 128), cos,
                                         sin, k_cache, v_cache, slots)  # fmt: skip
        a = triton_attention.paged_decode_attention(q, k_cache, v_cache, table, lens, 0.088)
        o = linear(a.view(batch, -1), w["o"], None, cfgs["o"])
        hidden_s, x = triton_fused.residual_rms_norm(o, hidden_s, norm_w, norm_w, 1e-5)
        g = triton_fused.silu_mul(linear(x, w["gate_up"], None, cfgs["gate_up"]))
        d = linear(g, w["down"], None, cfgs["down"])
        hidden_s, x = triton_fused.residual_rms_norm(d, hidden_s, norm_w, norm_w, 1e-5)
    return x


def probe_pdl_layer(bandwidth: float) -> None:
    """A GLM decoder layer's decode chain (norm, qkv, rotary + KV write, attention, o, norm, gate_up, SiLU, down,
    norm) over 8 layers of distinct weights in one CUDA graph: PDL (with the matmuls' L2 weight prefetch) on and
    off, Triton matmuls everywhere or cuBLAS for some; us per layer and TB/s of weights."""
    from glmv.kernels import pdl
    from glmv.kernels.triton_gemv import GemvConfig as G

    print("\n== decode layer chain, 8 layers in one graph: us per layer (PDL on/off) ==", flush=True)
    layers, hidden, ctx = 8, 4096, 640
    ws = [{name: (torch.randn(n, k, device=DEVICE) * 0.02).to(DTYPE) for name, (n, k, _) in GEMV_SHAPES.items()}
          for _ in range(layers)]
    bias = torch.randn(4608, device=DEVICE).to(DTYPE)
    norm_w = torch.randn(hidden, device=DEVICE).to(DTYPE)
    layer_bytes = sum(n * k * 2 for n, k, _ in GEMV_SHAPES.values())
    plans = {
        1: {"triton": {"qkv": G(64, 128, 4, 4, 2), "o": G(32, 256, 4, 4), "gate_up": G(32, 256, 4, 4),
                       "down": G(64, 128, 4, 4, 4)},
            "mixed": {"qkv": None, "o": G(32, 256, 4, 4), "gate_up": G(32, 256, 4, 4), "down": None}},
        64: {"triton": {"qkv": G(64, 128, 4, 4), "o": G(64, 128, 4, 4), "gate_up": G(128, 128, 8, 3),
                        "down": G(64, 128, 4, 4, 2)},
             "mixed": {"qkv": None, "o": None, "gate_up": G(128, 128, 8, 3), "down": None}},
    }
    for batch, by_name in plans.items():
        sets = DecodeSets(batch, ctx, table_width=8192 // BLOCK_SIZE, target_bytes=1)
        table = sets.tables[0]
        slots = table[:, (ctx - 1) // BLOCK_SIZE].long() * BLOCK_SIZE + (ctx - 1) % BLOCK_SIZE
        angles = torch.rand(batch, 32, device=DEVICE) * 10
        h0 = torch.randn(batch, hidden, device=DEVICE).to(DTYPE)
        common = dict(h0=h0, norm_w=norm_w, bias=bias, cos=angles.cos().to(DTYPE), sin=angles.sin().to(DTYPE),
                      k_cache=sets.k_cache, v_cache=sets.v_cache, slots=slots, table=table, lens=sets.seq_lens)
        for label, cfgs in by_name.items():
            outs = {}
            for on in (False, True):
                pdl._ENABLED = on
                try:
                    step = partial(_decode_layers, ws, cfgs, **common)
                    outs[on] = step()
                    us = graph_time_ms([step]) * 1e3 / layers
                    record("pdl_layer", batch=batch, plan=label, pdl=on, us_per_layer=us)
                    print(f"  b{batch:<3} {label:<7} pdl={'on ' if on else 'off'} {us:7.1f} us/layer "
                          f"({layer_bytes / us / 1e6:.2f} TB/s of weights; x40 = {us * 40 / 1e3:.2f} ms + lm_head)",
                          flush=True)  # fmt: skip
                except Exception:  # noqa: BLE001
                    print(f"pdl layer b{batch} {label} pdl={on} FAILED:\n{traceback.format_exc()}", flush=True)
            if len(outs) == 2:
                print(f"  b{batch:<3} {label:<7} PDL on/off outputs equal: {torch.equal(outs[False], outs[True])}",
                      flush=True)  # fmt: skip
        pdl._ENABLED = None
        sets = None
    ws = None
    torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer shapes, no sweeps")
    parser.add_argument("--no-sweep", action="store_true", help="skip the launch-shape sweeps")
    parser.add_argument("--full-sweep", action="store_true", help="every launch-shape variant, not just the finalists")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--session2", action="store_true",
                        help="only decode attention at the engine's shapes (and the matmul sweep: --sweep-gemv)")
    parser.add_argument("--sweep-gemv", action="store_true", help="with --session2: every decode-matmul config")
    parser.add_argument("--pdl-chain", action="store_true",
                        help="with --session2: the decode layer chain with PDL on and off, and the vision steps")
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
    if args.session2:
        sections = [partial(probe_decode_engine_shapes, triton_attention, bandwidth)]
        if args.pdl_chain:
            sections += [partial(probe_pdl_layer, bandwidth), partial(probe_vision_steps, triton_fused)]
        if args.sweep_gemv:
            sections.append(partial(probe_gemv_sweep, bandwidth))
        for section in sections:
            try:
                section()
            except Exception:  # noqa: BLE001
                print(f"section FAILED:\n{traceback.format_exc()}", flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(RESULTS, f, indent=1)
        print(f"\nprobe took {time.time() - started:.0f} s", flush=True)
        return 0
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
