"""GPU benchmark of issue 7: glmv's engine vs HF generate vs the hardware roofline, in ONE run on one GPU.

    PYTHONPATH=. python3 bench/gpu_bench.py --model-dir /tmp/glmv-full            # builds the full preset if missing
    PYTHONPATH=. python3 bench/gpu_bench.py --model-dir DIR --skip-hf --quick     # shorter

Measures (bf16, real 9B dims, random weights - speed does not depend on the values):
- the device: copy bandwidth (bytes read + written) and bf16 matmul rate; the single-stream decode roofline they imply;
- HF transformers `generate` (the reference engine's road): decode tok/s at batch 1, TTFT of one image prompt,
  prefill of 4096 tokens;
- glmv, pieces on the bare GPU (no engine around them): a decode step replayed from its CUDA graph at batch
  1/8/64/128, the vision tower on one and on six 1008x1008 images, the decoder's prefill of 1,334 and 4,096 tokens,
  and a profile of the graphed decode step (which kernels take the time);
- glmv's AsyncEngine, as a server drives it: single-stream decode 512 in / 256 out; 8 and 64 concurrent 512/256;
  TTFT of one 1008x1008 image + 30-token question on an idle engine; prefill of 4,096 text tokens (TTFT);
  128 concurrent image prompts (256 out); checkpoint load time. Throughput is given two ways: end to end (all output
  tokens over the wall time from submitting to the last token, prefill included) and steady-state decode (output
  tokens per second while every request is decoding: the figure the issue's limits and goals are stated for).
  Every engine step is timed too, so host overhead shows as step wall time minus the graph's GPU time.
Prints a table with ratios and goals; writes everything as JSON (default $OUT/gpu_bench.json).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import served  # noqa: E402
from bench.ceilings import event_time_ms, probe_ceilings  # noqa: E402
from glmv.config import EngineConfig, ModelConfig, parse_bytes  # noqa: E402
from glmv.engine.decode_graphs import META_IDS, META_LENS, META_POS, META_SLOTS, META_SRC  # noqa: E402
from glmv.engine.observer import StepObserver  # noqa: E402
from glmv.inputs.prompt import Prompt  # noqa: E402
from glmv.sampling import SamplingParams  # noqa: E402

GOALS = {
    "decode_1": 140.0,
    "throughput_64_steady": 8000.0,
    "image_128_steady": 4000.0,
    "ttft_image_ms": 60.0,
    "prefill_4096_ms": 120.0,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def decoder_bytes_per_weight(args: argparse.Namespace) -> float:
    """Bytes a decode step reads per decoder matmul weight: bf16 2; FP8 1 (its per-channel scale, 4 bytes a row of
    4,096+ weights, is left out); AWQ 4-bit 0.5 plus a float16 scale and a 4-bit zero point per group of 128."""
    if args.quantization == "fp8":
        return 1.0
    if args.awq:
        return 0.5 + 2.5 / 128
    return 2.0


def weight_bytes_per_step(mc: ModelConfig, decoder_bytes: float = 2.0) -> int:
    """Weights one decode step reads: the decoder's matmuls at `decoder_bytes` each, plus the bf16 lm_head."""
    t = mc.text
    per_layer = (
        t.hidden_size * (t.num_heads + 2 * t.num_kv_heads) * t.head_dim  # qkv
        + t.num_heads * t.head_dim * t.hidden_size  # o
        + t.hidden_size * 2 * t.intermediate_size  # gate_up
        + t.intermediate_size * t.hidden_size  # down
    )
    return round(decoder_bytes * t.num_layers * per_layer + 2 * t.vocab_size * t.hidden_size)  # embedding rows excluded


def random_text_prompt(n: int, vocab: int, seed: int) -> Prompt:
    g = torch.Generator().manual_seed(seed)
    return Prompt(token_ids=torch.randint(100, min(vocab, 150000), (n,), generator=g).tolist())


def image_prompt(builder, seed: int, size: int = 1008) -> Prompt:
    import numpy as np
    from PIL import Image

    from glmv.inputs.processor import LoadedMedia

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    media = LoadedMedia(images=[img], image_hashes=[f"bench-{seed}"], videos=[], video_metadata=[], video_hashes=[])
    question = "Describe this picture in detail, then count the objects in it and explain your reasoning."
    text = builder.render([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}])
    return builder.build(text, media)


# ---------------------------------------------------------------- driving the engine
async def run_requests(engine, prompts: list[Prompt], params: SamplingParams) -> dict:
    """Submit all prompts at once; per request: TTFT, finish time and (time, tokens so far) at every output."""
    t0 = time.perf_counter()
    per: list[dict] = []

    async def one(i: int, p: Prompt):
        first = None
        trace: list[tuple[float, int]] = []
        async for out in engine.generate(p, params, f"bench-{i}-{time.time_ns()}"):
            now = time.perf_counter() - t0
            n = out.outputs[0].num_tokens
            if first is None and n > 0:
                first = now
            trace.append((now, n))
        per.append({"ttft": first if first is not None else time.perf_counter() - t0,
                    "end": time.perf_counter() - t0, "tokens": trace[-1][1] if trace else 0, "trace": trace})

    await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    wall = time.perf_counter() - t0
    total = sum(r["tokens"] for r in per)
    res = {"wall": wall, "ttft": [r["ttft"] for r in per], "total_tokens": total, "e2e_tok_s": total / wall,
           "first_token_at": min(r["ttft"] for r in per), "last_first_token_at": max(r["ttft"] for r in per),
           "first_end_at": min(r["end"] for r in per), "last": max(r["end"] for r in per)}
    # steady state: from the moment every request has its first token to the moment the first one ends
    a, b = res["last_first_token_at"], res["first_end_at"]
    if b - a > 0.05:
        made = sum(_tokens_at(r["trace"], b) - _tokens_at(r["trace"], a) for r in per)
        res["steady_tok_s"] = made / (b - a)
        res["steady_window_s"] = b - a
    return res


def _tokens_at(trace: list[tuple[float, int]], t: float) -> float:
    """Tokens a request had at time t, interpolated between its outputs."""
    prev_t, prev_n = 0.0, 0
    for when, n in trace:
        if when >= t:
            if when == prev_t:
                return n
            return prev_n + (n - prev_n) * (t - prev_t) / (when - prev_t)
        prev_t, prev_n = when, n
    return prev_n


class StepRecorder(StepObserver):
    """The engine's step observer (glmv/engine/observer.py): times every engine step, its wait for the device, the
    graphed decode steps (CUDA events), pixel uploads and add_request, and notes what each step ran."""

    wants_graph_events = True

    def __init__(self, llm):
        self.records: list[tuple[float, int, int]] = []  # (wall seconds, prefill tokens, decode rows)
        self.enabled = False
        self.host_busy: list[tuple[float, int]] = []  # (seconds of a decode-only step not spent waiting, rows)
        self.graph_marks: list[tuple[torch.cuda.Event, torch.cuda.Event, int]] = []
        self.uploads: list[float] = []  # host seconds of each pixel upload (CPU conversion to bf16 + async copy)
        self.adds: list[float] = []  # host seconds of each add_request (request objects, positions, hashing)
        self._kind = (0, 0)
        self._waited = 0.0
        self._started = 0.0
        llm.observe(self)

    def step_started(self) -> None:
        self._kind, self._waited = (0, 0), 0.0
        self._trace_tick()
        self._started = time.perf_counter()

    def launched(self, prefill_tokens: int, decode_rows: int) -> None:
        self._kind = (prefill_tokens, decode_rows)

    def waited(self, seconds: float) -> None:
        self._waited += seconds

    def step_finished(self) -> None:
        if not self.enabled:
            return
        wall = time.perf_counter() - self._started
        pre, dec = self._kind
        self.records.append((wall, pre, dec))
        if pre == 0 and dec:
            self.host_busy.append((wall - self._waited, dec))

    def decode_graph_ran(self, start: torch.cuda.Event, end: torch.cuda.Event, rows: int) -> None:
        if self.enabled:
            self.graph_marks.append((start, end, rows))

    def pixels_uploaded(self, seconds: float) -> None:
        self.uploads.append(seconds)

    def request_added(self, seconds: float) -> None:
        self.adds.append(seconds)

        self._trace: list | None = None  # [steps to skip, steps to record, profiler]
        self.trace_events: list[dict] | None = None

    def arm_trace(self, skip: int, count: int) -> None:
        """Record the device timeline (CUDA activity only: the host's pace stays as it is) of `count` engine steps
        after the next `skip` ones."""
        self._trace, self.trace_events = [skip, count, None], None

    def _trace_tick(self) -> None:
        """Called before every step, on the engine's thread (the profiler is started and stopped there)."""
        plan = self._trace
        if plan is None:
            return
        from torch.profiler import ProfilerActivity, profile

        if plan[0] > 0:
            plan[0] -= 1
            if plan[0] == 0:
                plan[2] = profile(activities=[ProfilerActivity.CUDA])
                plan[2].start()
            return
        plan[1] -= 1
        if plan[1] < 0:
            torch.cuda.synchronize()
            plan[2].stop()
            self.trace_events = _device_events(plan[2])
            self._trace = None

    def take(self) -> list[tuple[float, int, int]]:
        out, self.records = self.records, []
        return out

    def take_host_busy(self) -> dict[str, float]:
        """Host time of the decode-only steps at the most common batch, less the wait for the device (ms): the
        engine's own work per step, which must stay under a step's device time."""
        busy, self.host_busy = self.host_busy, []
        if not busy:
            return {}
        rows = statistics.mode(n for _, n in busy)
        ms = sorted(1e3 * b for b, n in busy if n == rows)
        return {"rows": rows, "median_ms": round(statistics.median(ms), 3), "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 3),
                "max_ms": round(ms[-1], 3)}

    def take_device_gaps(self) -> dict[str, float]:
        """Of consecutive graphed decode steps at the most common batch: median device time of a step (input copies
        + replay), median and mean device time from one step's end to the next one's start (the sampler's kernels,
        the copy of the tokens, idle), and the mean period (us)."""
        marks, self.graph_marks = self.graph_marks, []
        if len(marks) < 3:
            return {}
        torch.cuda.synchronize()
        rows = statistics.mode(m[2] for m in marks)
        spans, gaps, periods = [], [], []
        for (a, b, n), (a2, _, n2) in zip(marks, marks[1:], strict=False):
            if n == rows and n2 == rows:
                spans.append(1e3 * a.elapsed_time(b))
                gaps.append(1e3 * b.elapsed_time(a2))
                periods.append(1e3 * a.elapsed_time(a2))
        if not spans:
            return {}
        return {"rows": rows, "pairs": len(spans), "step_us": round(statistics.median(spans), 1),
                "gap_us_median": round(statistics.median(gaps), 1), "gap_us_mean": round(statistics.fmean(gaps), 1),
                "period_us_mean": round(statistics.fmean(periods), 1),
                "gaps_over_1ms": sum(g > 1000 for g in gaps)}


class GcMonitor:
    """Times the garbage collector's passes (any thread) through gc.callbacks: a full pass over a large heap holds
    the GIL for tens of ms, long enough to delay a decode step."""

    def __init__(self):
        self.passes: list[tuple[int, float]] = []  # (generation, seconds)
        self._started: float | None = None
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.passes.append((info["generation"], time.perf_counter() - self._started))
            self._started = None

    def take(self) -> dict[str, list[float]]:
        """Per generation: [passes, total ms, longest ms] since the last take."""
        out: dict[str, list[float]] = {}
        for gen, secs in self.passes:
            row = out.setdefault(f"gen{gen}", [0, 0.0, 0.0])
            row[0] += 1
            row[1] = round(row[1] + 1e3 * secs, 2)
            row[2] = round(max(row[2], 1e3 * secs), 2)
        self.passes = []
        return out


def _device_events(prof) -> list[dict]:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.load(open(f.name)).get("traceEvents", [])
    return sorted((e for e in events if e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy") and "dur" in e),
                  key=lambda e: e["ts"])


def steady_timeline(events: list[dict], steps: int, rows: int) -> dict:
    """The device timeline of `steps` steady decode steps (under the profiler, which slows them): time per step, the
    sum of kernel durations per step (over the step time where PDL overlaps kernels, so no idle time can be read from
    it; gpu_bench's CUDA-event gaps measure that), and the kernels that run at most twice a step (the work around
    the decoder's 40 layers), each with its time per step."""
    if not events or steps <= 0:
        return {}
    span = events[-1]["ts"] + events[-1]["dur"] - events[0]["ts"]
    busy = sum(e["dur"] for e in events)
    by: dict[str, list[float]] = {}
    for e in events:
        by.setdefault(e["name"][:60], []).append(e["dur"])
    rare = sorted(((n, len(d), sum(d)) for n, d in by.items() if len(d) <= 2 * steps), key=lambda x: -x[2])
    res = {"rows": rows, "steps": steps, "step_us": round(span / steps, 1), "kernel_sum_us": round(busy / steps, 1),
           "kernels_per_step": round(len(events) / steps, 1),
           "per_step_work": [(n, round(c / steps, 2), round(t / steps, 1)) for n, c, t in rare[:12]]}
    log(f"steady decode timeline at {rows} rows over {steps} steps (profiled): {res['step_us']} us a step, "
        f"{res['kernels_per_step']} kernels; once-a-step work (name, per step, us): {res['per_step_work']}")
    return res


def _decode_walls(records: list[tuple[float, int, int]]) -> dict[int, list[float]]:
    """Wall seconds of the decode-only steps, by how many rows they decoded."""
    by: dict[int, list[float]] = {}
    for wall, pre, dec in records:
        if pre == 0 and dec:
            by.setdefault(dec, []).append(wall)
    return by


def decode_step_summary(records: list[tuple[float, int, int]]) -> dict[str, float]:
    """Median wall time (ms) of decode-only steps by batch size, for the batch sizes seen most."""
    by = _decode_walls(records)
    top = sorted(by, key=lambda b: -len(by[b]))[:3]
    return {str(b): round(1e3 * statistics.median(by[b]), 3) for b in sorted(top)}


def decode_step_spread(records: list[tuple[float, int, int]]) -> dict[str, float]:
    """For the decode-only batch size seen most: step count, mean, median, p90 and max (ms), and how many steps took
    over 1.3x the median (host stalls: GC, the GIL, late launches). Steady throughput follows the mean, not the
    median."""
    by = _decode_walls(records)
    if not by:
        return {}
    rows = max(by, key=lambda b: len(by[b]))
    walls = sorted(by[rows])
    med = statistics.median(walls)
    return {"rows": rows, "steps": len(walls), "mean_ms": round(1e3 * statistics.fmean(walls), 3),
            "median_ms": round(1e3 * med, 3), "p90_ms": round(1e3 * walls[int(0.9 * (len(walls) - 1))], 3),
            "max_ms": round(1e3 * walls[-1], 3), "over_1.3x": sum(w > 1.3 * med for w in walls)}


# ---------------------------------------------------------------- pieces on the bare GPU
def _fill_decode_buffers(runner, batch: int, ctx: int) -> int:
    """Put `batch` rows of `ctx` tokens each (distinct KV blocks per row) into the runner's decode buffers; returns
    the graph bucket. Call only on an idle engine: it writes into free KV blocks; reset the buffers afterwards."""
    graphs = runner.decode_graphs
    bucket = next(b for b in graphs.buckets if b >= batch)
    bs = runner.block_size
    nb = -(-ctx // bs)
    host = graphs.hosts[0]
    meta, tables = host.np_meta, host.np_tables
    meta[META_SRC] = -1
    usable = runner.num_blocks - 1
    for i in range(bucket):
        blocks = [1 + (i * nb + j) % usable for j in range(nb)]
        tables[i, :nb] = blocks
        meta[META_IDS, i] = 1000 + i
        meta[META_POS:META_POS + 3, i] = ctx - 1
        meta[META_SLOTS, i] = blocks[-1] * bs + (ctx - 1) % bs
        meta[META_LENS, i] = ctx
    graphs.buf_meta.copy_(host.meta)
    graphs.buf_block_tables.copy_(host.tables)
    return bucket


def graph_step_ms(runner, batch: int, ctx: int) -> float:
    """Device time of one graphed decode step at `batch` rows of `ctx` tokens each."""
    graph, _ = runner.decode_graphs.graphs[_fill_decode_buffers(runner, batch, ctx)]
    ms = event_time_ms(graph.replay, iters=20, warmup=3)
    runner.decode_graphs.reset(runner.decode_graphs.buckets[-1])
    return ms


def prefill_ms(runner, tokens: int, graphed: bool = False) -> float:
    """Device time of the decoder over one fresh prompt of `tokens` tokens (dense attention path) + its last logits.
    `graphed`: the same work replayed from a CUDA graph (a diagnostic: how much the eager launches cost)."""
    run = prefill_fn(runner, tokens)
    with torch.inference_mode():
        if not graphed:
            return event_time_ms(run, iters=5, warmup=2)
        run()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
        ms = event_time_ms(graph.replay, iters=5, warmup=2)
        del graph
        return ms


def prefill_fn(runner, tokens: int):
    """One eager decoder pass over a fresh prompt of `tokens` tokens and its last logits, as a closure."""
    from glmv.layers.attention import AttentionMetadata

    dev, bs = runner.device, runner.block_size
    model = runner.model
    blocks = -(-tokens // bs)
    ids = torch.randint(100, 150000, (tokens,), device=dev)
    positions = torch.arange(tokens, device=dev).expand(3, -1)
    meta = AttentionMetadata(
        slot_mapping=torch.arange(tokens, device=dev) + bs, num_prefill_tokens=tokens,
        prefill_block_tables=torch.arange(1, blocks + 1, dtype=torch.int32, device=dev).unsqueeze(0),
        prefill_cu_seqlens_q=torch.tensor([0, tokens], dtype=torch.int32, device=dev),
        prefill_seq_lens=torch.tensor([tokens], dtype=torch.int32, device=dev), prefill_max_seqlen_q=tokens,
        prefill_dense=True)

    def run():
        hidden = model.forward(model.embed(ids), positions, runner.kv_caches, meta)
        model.logits(hidden[-1:])

    return run


def vision_ms(runner, prompts: list[Prompt], graphs: bool = True) -> float:
    """Device time of the vision tower on these pictures, from bf16 pixels on the device (as the runner hands them
    over); `graphs=False` keeps it eager (the tower records a CUDA graph for a shape it sees again)."""
    vision = runner.model.vision
    pixels = torch.cat([p.mm.pixel_values for p in prompts]).to("cuda").to(runner.dtype)
    grids = [tuple(int(x) for x in g) for p in prompts for g in p.mm.image_grid_thw.tolist()]
    saved = vision.use_graphs
    vision.use_graphs = saved and graphs
    try:
        with torch.inference_mode():
            return event_time_ms(lambda: vision.encode(pixels, grids), iters=5, warmup=2)
    finally:
        vision.use_graphs = saved


def profile_eager(fn, rows: int = 12) -> list[str]:
    """Kernel time shares of fn() (one call after a warm-up), by torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60).splitlines()


def trace_gaps(fn, label: str, top: int = 8) -> dict:
    """Run fn once under the profiler and measure the device timeline: span from the first kernel's start to the
    last one's end, the sum of kernel (and memset/copy) durations, and the largest idle gaps with their neighbours."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        fn()
        torch.cuda.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.load(open(f.name)).get("traceEvents", [])
    dev = sorted((e for e in events if e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy") and "dur" in e),
                 key=lambda e: e["ts"])
    if not dev:
        return {}
    span = dev[-1]["ts"] + dev[-1]["dur"] - dev[0]["ts"]
    busy = sum(e["dur"] for e in dev)
    gaps = []
    end = dev[0]["ts"] + dev[0]["dur"]
    for prev, e in zip(dev, dev[1:], strict=False):
        gaps.append((e["ts"] - end, prev["name"][:40], e["name"][:40]))
        end = max(end, e["ts"] + e["dur"])
    gaps.sort(reverse=True)
    res = {"span_ms": span / 1e3, "busy_ms": busy / 1e3, "kernels": len(dev),
           "gap_ms": sum(g for g, _, _ in gaps if g > 0) / 1e3, "top_gaps_us": [(round(g, 1), a, b) for g, a, b in gaps[:top]]}
    log(f"trace {label}: span {res['span_ms']:.2f} ms, kernels busy {res['busy_ms']:.2f} ms over {len(dev)} "
        f"kernels, idle {res['gap_ms']:.2f} ms; largest gaps (us, before, after): {res['top_gaps_us']}")
    return res


def sdpa_backends() -> dict[str, float]:
    """ms of SDPA at the model's two big attention shapes under each backend PyTorch offers here."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out: dict[str, float] = {}
    cases = {
        "vision_5184": ((1, 12, 5184, 128), (1, 12, 5184, 128), False),
        "text_1334_gqa": ((1, 32, 1334, 128), (1, 2, 1334, 128), True),
        "text_4096_gqa": ((1, 32, 4096, 128), (1, 2, 4096, 128), True),
    }
    for name, (qs, ks, causal) in cases.items():
        q = torch.randn(qs, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(ks, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(ks, device="cuda", dtype=torch.bfloat16)
        gqa = qs[1] != ks[1]
        for backend in (None, SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            label = f"{name}:{'default' if backend is None else backend.name.lower()}"
            try:
                def run(q=q, k=k, v=v, causal=causal, gqa=gqa):
                    F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)

                if backend is None:
                    out[label] = round(event_time_ms(run, iters=10), 3)
                else:
                    with sdpa_kernel([backend]):
                        out[label] = round(event_time_ms(run, iters=10), 3)
            except Exception as exc:  # noqa: BLE001 - a backend that refuses the shape
                out[label] = f"n/a ({type(exc).__name__})"
    return out


def profile_graph(runner, batch: int, ctx: int, path: Path | None) -> list[str]:
    """Kernel time shares inside one graphed decode step (torch.profiler over 5 replays)."""
    from torch.profiler import ProfilerActivity, profile

    graph, _ = runner.decode_graphs.graphs[_fill_decode_buffers(runner, batch, ctx)]
    graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            graph.replay()
        torch.cuda.synchronize()
    runner.decode_graphs.reset(runner.decode_graphs.buckets[-1])
    if path is not None:
        try:
            prof.export_chrome_trace(str(path))
        except Exception as exc:  # noqa: BLE001 - a trace is a nicety
            log(f"trace export failed: {exc}")
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60)
    return table.splitlines()


# ---------------------------------------------------------------- HF reference
def bench_hf(model_dir: Path, builder, mc: ModelConfig, args) -> dict:
    from transformers import Glm4vForConditionalGeneration

    from glmv.engine.reference import hf_inputs

    log("HF: loading the model with transformers (device_map=cuda)")
    t = time.perf_counter()
    model = Glm4vForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.bfloat16,
                                                          device_map="cuda").eval()
    torch.cuda.synchronize()
    res: dict = {"load_s": time.perf_counter() - t}
    out_tokens = args.hf_tokens
    p = random_text_prompt(512, mc.text.vocab_size, 1)
    kw = hf_inputs(p, "cuda", torch.bfloat16)
    gen = dict(do_sample=False, eos_token_id=None, temperature=None, top_p=None, top_k=None)

    def timed(**k) -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(**k)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    with torch.inference_mode():
        model.generate(**kw, max_new_tokens=4, **gen)
        prefill = statistics.median(timed(**kw, max_new_tokens=1, **gen) for _ in range(3))
        total = timed(**kw, max_new_tokens=out_tokens, **gen)
        res["decode_1"] = (out_tokens - 1) / max(total - prefill, 1e-9)
        log(f"HF: decode {res['decode_1']:.1f} tok/s")
        model.generate(**hf_inputs(image_prompt(builder, 999), "cuda", torch.bfloat16), max_new_tokens=1, **gen)
        res["ttft_image_ms"] = 1e3 * statistics.median(
            timed(**hf_inputs(image_prompt(builder, 1000 + s), "cuda", torch.bfloat16), max_new_tokens=1, **gen)
            for s in range(3))
        k4 = hf_inputs(random_text_prompt(4096, mc.text.vocab_size, 7), "cuda", torch.bfloat16)
        model.generate(**k4, max_new_tokens=1, **gen)
        res["prefill_4096_ms"] = 1e3 * statistics.median(timed(**k4, max_new_tokens=1, **gen) for _ in range(2))
    model = None  # noqa: F841 - drop the weights before glmv loads its own
    gc.collect()
    torch.cuda.empty_cache()
    return res


# ---------------------------------------------------------------- glmv
def bench_glmv(model_dir: Path, builder, mc: ModelConfig, args, out_dir: Path, res: dict, save) -> dict:
    from glmv.engine.async_engine import AsyncEngine
    from glmv.engine.engine import LLMEngine
    from glmv.engine.model_runner import ModelRunner
    from glmv.models.glm4v import Glm4vModel

    ec = EngineConfig(model=str(model_dir), device="cuda", dtype="bfloat16", max_num_seqs=args.max_num_seqs,
                      max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
                      gpu_memory_utilization=0.9, enforce_eager=args.enforce_eager,
                      quantization=args.quantization, max_gpu_memory=args.max_gpu_memory)
    if args.drop_caches:
        try:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            res["load_cold"] = True
        except OSError as exc:
            log(f"could not drop the page cache ({exc}): the load below reads a warm cache")
    torch.cuda.synchronize()
    t = time.perf_counter()
    from glmv.layers.quant import choose_linear_loader

    model = Glm4vModel.load(mc, "cuda", torch.bfloat16, max_positions=ec.max_model_len + 1,
                            linear_loader=choose_linear_loader(mc.raw, args.quantization, torch.device("cuda")))
    torch.cuda.synchronize()
    res["load_s"] = time.perf_counter() - t
    res["load_gb"] = model.bytes_loaded / 1e9
    log(f"glmv: loaded {res['load_gb']:.1f} GB in {res['load_s']:.1f} s; backend {model.kernels.describe()}")
    t = time.perf_counter()
    runner = ModelRunner(mc, ec, ec.max_model_len, model=model)
    res["kv_plan_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if not args.enforce_eager:
        runner.decode_graphs.capture()
    res["graph_capture_s"] = time.perf_counter() - t
    res["kv_blocks"] = runner.num_blocks
    res["buckets"] = runner.decode_graphs.buckets
    res["gemv_plan"] = [[list(k), cub, best, str(cfg)] for k, cub, best, cfg in runner.decode_graphs.gemv_report]
    for row in res["gemv_plan"]:
        log(f"gemv plan {row}")
    llm = LLMEngine(mc, ec, builder.tokenizer, runner=runner)
    log(f"glmv: KV {runner.num_blocks} blocks planned in {res['kv_plan_s']:.1f} s; "
        f"graphs {runner.decode_graphs.buckets} in {res['graph_capture_s']:.1f} s")

    # ---- pieces on the bare GPU (engine idle, nothing cached yet) ----
    gpu: dict = {}
    if runner.decode_graphs.graphs:
        for batch in (1, 8, 64, 128):
            if batch <= runner.decode_graphs.buckets[-1]:
                gpu[f"graph_step_ms_b{batch}_ctx640"] = graph_step_ms(runner, batch, 640)
        gpu["graph_step_ms_b128_ctx1500"] = graph_step_ms(runner, min(128, runner.decode_graphs.buckets[-1]), 1500)
        log(f"glmv GPU: graphed decode steps {gpu}")
        prof = profile_graph(runner, 1, 640, out_dir / "decode_b1_trace.json" if args.trace else None)
        res["profile_b1"] = prof
        print("\n".join(["profile of the graphed decode step, batch 1, ctx 640 (5 replays):"] + prof), flush=True)
        prof = profile_graph(runner, 64, 640, None)
        res["profile_b64"] = prof
        print("\n".join(["profile of the graphed decode step, batch 64, ctx 640 (5 replays):"] + prof), flush=True)
    img = [image_prompt(builder, 300 + i) for i in range(6)]
    gpu["vision_ms_1_image"] = vision_ms(runner, img[:1])
    gpu["vision_ms_1_image_eager"] = vision_ms(runner, img[:1], graphs=False)
    gpu["vision_ms_6_images"] = vision_ms(runner, img)
    gpu["prefill_ms_1334"] = prefill_ms(runner, 1334)
    try:
        gpu["prefill_ms_1334_graphed"] = prefill_ms(runner, 1334, graphed=True)
    except Exception as exc:  # noqa: BLE001 - a diagnostic
        log(f"graphed prefill failed: {type(exc).__name__}: {exc}")
    gpu["prefill_ms_4096"] = prefill_ms(runner, 4096)
    gpu["prefill_ms_8192"] = prefill_ms(runner, 8192)
    res["gpu"] = gpu
    try:
        res["sdpa_backends"] = sdpa_backends()
        log(f"SDPA backends (ms): {res['sdpa_backends']}")
        pixels = img[0].mm.pixel_values.to("cuda")
        grid = [tuple(int(x) for x in img[0].mm.image_grid_thw[0].tolist())]
        saved, runner.model.vision.use_graphs = runner.model.vision.use_graphs, False
        with torch.inference_mode():
            prof = profile_eager(lambda: runner.model.vision.encode(pixels, grid))
        runner.model.vision.use_graphs = saved
        print("\n".join(["profile of the vision tower, one 1008x1008 image:"] + prof), flush=True)
        res["profile_vision"] = prof
        vis = runner.model.vision
        px = pixels.to(runner.dtype)
        with torch.inference_mode():
            res["trace_vision_graphed"] = trace_gaps(lambda: vis.encode(px, grid), "vision (graph)")
            saved, vis.use_graphs = vis.use_graphs, False
            res["trace_vision_eager"] = trace_gaps(lambda: vis.encode(px, grid), "vision (eager)")
            vis.use_graphs = saved
        with torch.inference_mode():
            res["trace_prefill_1334"] = trace_gaps(prefill_fn(runner, 1334), "prefill 1334 (eager)")
        prof = profile_eager(lambda: prefill_ms(runner, 1334) and None)
        print("\n".join(["profile of prefill 1334 tokens (x7 calls: timing loop):"] + prof), flush=True)
        res["profile_prefill_1334"] = prof
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        log(f"diagnostics failed: {type(exc).__name__}: {exc}")
    log(f"glmv GPU: {gpu}")
    save()

    engine = AsyncEngine(mc, ec, builder.tokenizer, engine=llm)
    rec = StepRecorder(llm)
    gcmon = GcMonitor()
    out_n = 64 if args.quick else 256
    vocab = mc.text.vocab_size

    async def main():
        await engine.start()
        greedy = SamplingParams(temperature=0.0, max_tokens=out_n, ignore_eos=True)
        one_token = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
        # warm-up: Triton compiles, cuBLAS heuristics, packed prefill of several prompts
        await run_requests(engine, [random_text_prompt(512, vocab, s) for s in range(3)],
                           SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
        await run_requests(engine, [image_prompt(builder, 500)], one_token)
        rec.enabled = True

        log(f"glmv: single stream 512/{out_n}")
        runs = []
        for rep in range(3):
            r = await run_requests(engine, [random_text_prompt(512, vocab, 11 + rep)], greedy)
            runs.append((r["total_tokens"] - 1) / (r["last"] - r["first_token_at"]))
        res["decode_1"] = statistics.median(runs)
        res["decode_1_runs"] = runs
        res["steps_1"] = decode_step_summary(rec.take())
        res["device_gaps_1"] = rec.take_device_gaps()
        log(f"glmv: single stream {res['decode_1']:.1f} tok/s; steps {res['steps_1']}, device gaps "
            f"{res['device_gaps_1']}")
        save()
        for conc in (8, 64):
            log(f"glmv: {conc} concurrent 512/{out_n}, {args.repeat} runs")
            runs = []
            for rep in range(args.repeat):
                prompts = [random_text_prompt(512, vocab, 100 + conc * 1000 + rep * 500 + i) for i in range(conc)]
                runs.append(await run_requests(engine, prompts, greedy))
            res[f"throughput_{conc}"] = statistics.median(r["e2e_tok_s"] for r in runs)
            steady = [r["steady_tok_s"] for r in runs if r.get("steady_tok_s")]
            res[f"throughput_{conc}_steady"] = statistics.median(steady) if steady else None
            res[f"throughput_{conc}_runs"] = [(round(r["e2e_tok_s"]), round(r.get("steady_tok_s") or 0)) for r in runs]
            res[f"throughput_{conc}_detail"] = {k: v for k, v in runs[-1].items() if k != "ttft"}
            records = rec.take()
            res[f"steps_{conc}"] = decode_step_summary(records)
            res[f"steps_{conc}_spread"] = decode_step_spread(records)
            res[f"gc_{conc}"] = gcmon.take()
            res[f"device_gaps_{conc}"] = rec.take_device_gaps()
            res[f"host_busy_{conc}"] = rec.take_host_busy()
            log(f"glmv: {conc}: (e2e, steady) tok/s per run {res[f'throughput_{conc}_runs']}, "
                f"steps {res[f'steps_{conc}']}, spread {res[f'steps_{conc}_spread']}, "
                f"GC passes (count, ms, longest) {res[f'gc_{conc}']}, device gaps {res[f'device_gaps_{conc}']}, "
                f"host work per step {res[f'host_busy_{conc}']}")
            save()
        log("glmv: TTFT of one image prompt (idle)")
        rec.take()
        rec.graph_marks.clear()
        times, staging = [], []
        for seed in range(5):
            # As `glmv serve` does: the door converts the pixels to the model dtype in pinned memory where it builds
            # the prompt (AsyncEngine.stage_prompt, off the engine loop); timed apart, like the processor itself.
            p = image_prompt(builder, 600 + seed)
            t0 = time.perf_counter()
            p = engine.stage_prompt(p)
            staging.append(time.perf_counter() - t0)
            r = await run_requests(engine, [p], one_token)
            times.append(r["ttft"][0])
        res["ttft_image_staging_ms"] = [round(1e3 * x, 2) for x in staging]
        log(f"glmv: staging the pixels in the door (ms, not in TTFT): {res['ttft_image_staging_ms']}")
        res["ttft_image_ms"] = 1e3 * statistics.median(times)
        res["ttft_image_runs_ms"] = [1e3 * x for x in times]
        res["ttft_image_last_steps"] = [(round(1e3 * w, 2), pre, dec) for w, pre, dec in rec.take()[-4:]]
        res["ttft_image_upload_ms"] = [round(1e3 * u, 2) for u in rec.uploads[-5:]]
        res["ttft_image_add_ms"] = [round(1e3 * u, 2) for u in rec.adds[-5:]]
        log(f"glmv: pixel upload host time per TTFT run (ms): {res['ttft_image_upload_ms']}; add_request (ms): "
            f"{res['ttft_image_add_ms']}")
        log(f"glmv: last TTFT run's engine calls (ms, prefill tokens, decode rows): {res['ttft_image_last_steps']}")
        res["image_prompt_tokens"] = len(p)
        log(f"glmv: TTFT image {res['ttft_image_ms']:.1f} ms ({len(p)} prompt tokens)")

        log("glmv: prefill 4096")
        times = []
        for seed in range(4):
            r = await run_requests(engine, [random_text_prompt(4096, vocab, 700 + seed)], one_token)
            times.append(r["ttft"][0])
        res["prefill_4096_ms"] = 1e3 * statistics.median(times[1:])
        res["prefill_4096_runs_ms"] = [1e3 * x for x in times]
        log(f"glmv: prefill 4096 TTFT {res['prefill_4096_ms']:.1f} ms")
        rec.take()
        save()

        n_img = 32 if args.quick else 128
        log(f"glmv: building {n_img} image prompts")
        prompts = [engine.stage_prompt(image_prompt(builder, 2000 + i)) for i in range(n_img)]
        log(f"glmv: {n_img} concurrent image prompts, {out_n} out")
        r = await run_requests(engine, prompts, greedy)
        res["image_128"] = r["e2e_tok_s"]
        res["image_128_steady"] = r.get("steady_tok_s")
        res["image_128_n"] = n_img
        res["image_128_detail"] = {k: v for k, v in r.items() if k != "ttft"}
        res["steps_image"] = decode_step_summary(rec.take())
        res["device_gaps_image"] = rec.take_device_gaps()
        log(f"glmv: images: e2e {r['e2e_tok_s']:.0f} tok/s, steady {r.get('steady_tok_s', 0):.0f}, "
            f"wall {r['wall']:.1f} s, last first token at {r['last_first_token_at']:.1f} s")
        res["gc_policy"] = {"mode": engine.gc_policy.mode, "passes_after_launch": list(engine.gc_policy.collections)}
        save()
        if not args.skip_http:  # the served workloads on the engine, for the HTTP phase's ratios
            res["served"] = {"figures": await served.run_all(served.EngineRunner(engine, builder),
                                                               served.build_workloads(builder, served_plan(args), 1),
                                                               "engine", log)}
            rec.take()
        if args.diagnose:
            await diagnose(greedy)
        await engine.shutdown()

    async def diagnose(greedy: SamplingParams):
        """Extra runs, after the measured figures (their load warms the GPU: compute-bound figures measured after
        them read a few % slower): the 64-request case under the engine's other GC modes (glmv/engine/gc_policy.py),
        two runs each, and a profiled device timeline of 30 steady steps."""
        default_mode = engine.gc_policy.mode
        for mode in [m for m in ("freeze", "python") if m != default_mode]:
            engine.gc_policy.switch(mode)
            runs = [await run_requests(engine, [random_text_prompt(512, vocab, 9000 + 100 * rep + i) for i in range(64)],
                                       greedy) for rep in range(2)]
            records = rec.take()
            res[f"gc_mode_{mode}"] = {"steady": [round(r.get("steady_tok_s") or 0) for r in runs],
                                      "spread": decode_step_spread(records), "gc": gcmon.take(),
                                      "device_gaps": rec.take_device_gaps(), "host": rec.take_host_busy()}
            log(f"glmv: 64 concurrent with GC mode {mode!r}: {res[f'gc_mode_{mode}']}")
        engine.gc_policy.switch(default_mode)
        # one more 64-request run, not counted: the device timeline of 30 steady steps (after prefill is done)
        rec.arm_trace(skip=min(40, out_n // 2), count=30)
        await run_requests(engine, [random_text_prompt(512, vocab, 7000 + i) for i in range(64)], greedy)
        rec.take()
        rec.graph_marks.clear()
        res["timeline_64"] = steady_timeline(rec.trace_events or [], 30, 64)
        save()

    asyncio.run(main())
    res["engine_stats"] = {k: v for k, v in llm.stats().items() if k != "time"}
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="/tmp/glmv-full", help="model folder (built with the full preset if absent)")
    ap.add_argument("--skip-hf", action="store_true", help="do not measure HF transformers generate")
    ap.add_argument("--skip-glmv", action="store_true", help="do not measure glmv's engine")
    ap.add_argument("--quick", action="store_true", help="fewer output tokens and image requests")
    ap.add_argument("--hf-tokens", type=int, default=48, help="output tokens for the HF decode measurement")
    ap.add_argument("--max-num-seqs", type=int, default=128)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the 8- and 64-concurrent cases (median)")
    ap.add_argument("--drop-caches", action="store_true", help="drop the OS page cache before glmv loads (cold load)")
    ap.add_argument("--trace", action="store_true", help="write a Chrome trace of the batch-1 decode step")
    ap.add_argument("--diagnose", action="store_true",
                    help="after glmv's figures, also run 64 concurrent under the other GC modes (GLMV_GC) and record a "
                         "profiled device timeline of 30 steady decode steps (~20 s; warms the GPU before HF runs)")
    ap.add_argument("--json", default=None, help="where to write results (default $OUT/gpu_bench.json)")
    ap.add_argument("--quantization", choices=["fp8"], default=None, help="glmv quantizes the decoder to FP8 at load")
    ap.add_argument("--awq", action="store_true",
                    help="benchmark an AutoAWQ GEMM copy of the model (MODEL_DIR-awq, written by "
                         "bench/awq_checkpoint.py if absent); HF is skipped (it needs autoawq)")
    ap.add_argument("--max-gpu-memory", type=parse_bytes, default=None, help="glmv's GPU memory cap, e.g. 16GiB")
    g = ap.add_argument_group("served phase (bench/served.py): `glmv serve` driven over HTTP beside the engine")
    g.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: only the served phase (engine in-process, then HTTP) - a harness check, with --preset")
    g.add_argument("--preset", default="full", help="glmv.models.tiny preset built into --model-dir if it is absent")
    g.add_argument("--http-only", action="store_true", help="only the HTTP phase (no engine column, no ceilings)")
    g.add_argument("--skip-http", action="store_true", help="no served phase (neither its engine nor HTTP column)")
    g.add_argument("--serve-args", default="--max-num-seqs 128 --max-model-len 8192 --max-num-batched-tokens 8192",
                   help="flags for `glmv serve` (default: %(default)s)")
    g.add_argument("--serve-starts", type=int, default=2,
                   help="start the server this many times; the last start is measured (default 2: the second "
                        "start finds the plan cache the first one wrote)")
    g.add_argument("--served-plan", choices=["full", "smoke"], default=None,
                   help="workload sizes (default: full on cuda, smoke on cpu)")
    args = ap.parse_args()
    if args.device == "cpu":
        return main_cpu(args)

    from glmv.inputs.processor import PromptBuilder
    from glmv.models.tiny import make_tiny_model

    out_dir = Path(os.environ.get("OUT", "/tmp"))
    model_dir = Path(args.model_dir)
    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                     "date": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args)}
    try:
        import triton

        results["triton"] = triton.__version__
    except ImportError:
        pass
    if not (model_dir / "config.json").is_file():
        log(f"building the {args.preset} preset (random weights) on the GPU")
        t = time.perf_counter()
        make_tiny_model(model_dir, args.preset, device="cuda")
        results["build_s"] = time.perf_counter() - t
        log(f"built in {results['build_s']:.1f} s")
    if args.awq:
        awq_dir = model_dir.with_name(model_dir.name + "-awq")
        if not (awq_dir / "config.json").is_file():
            from bench.awq_checkpoint import convert

            log(f"writing the AWQ checkpoint {awq_dir}")
            convert(model_dir, awq_dir, "cuda")
        model_dir, args.skip_hf = awq_dir, True
    mc = ModelConfig.from_dir(model_dir)
    builder = PromptBuilder(model_dir)
    json_path = Path(args.json) if args.json else out_dir / "gpu_bench.json"
    if args.http_only:
        results["http"] = served.bench_http(model_dir, builder, served_plan(args), "cuda", args.serve_args.split(),
                                            args.serve_starts, out_dir, log)
        json_path.write_text(json.dumps(results, indent=2, default=str))
        print("\n".join(served.table({}, results["http"], served_plan(args))))
        return 0
    bandwidth, flops = probe_ceilings()  # the same measurement as the kernel probe's
    bw, tf = bandwidth / 1e9, flops / 1e12
    wbytes = weight_bytes_per_step(mc, decoder_bytes_per_weight(args))
    results.update(copy_gbps=bw, matmul_tflops=tf, weight_gb=wbytes / 1e9, roofline_decode_1=bw * 1e9 / wbytes)
    log(f"copy bandwidth {bw:.0f} GB/s; bf16 matmul {tf:.0f} TFLOP/s; weights read per step {wbytes / 1e9:.2f} GB; "
        f"single-stream roofline {results['roofline_decode_1']:.0f} tok/s")
    results["checkpoint_gb"] = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 1e9
    json_path = Path(args.json) if args.json else out_dir / "gpu_bench.json"

    def save() -> None:
        json_path.write_text(json.dumps(results, indent=2, default=str))

    # glmv first, then the reference: if time runs out, the part this benchmark exists for is in the file
    if not args.skip_glmv:
        results["glmv"] = {}
        try:
            bench_glmv(model_dir, builder, mc, args, out_dir, results["glmv"], save)
        finally:
            save()
        gc.collect()
        torch.cuda.empty_cache()
        log(f"GPU memory after glmv: {torch.cuda.memory_allocated() / 2**30:.1f} GiB allocated")
    if not args.skip_http:  # before HF: the server gets the GPU to itself (this process holds only its context)
        try:
            results["http"] = served.bench_http(model_dir, builder, served_plan(args), "cuda",
                                                args.serve_args.split(), args.serve_starts, out_dir, log)
        except RuntimeError as exc:
            log(f"HTTP phase failed: {exc}")
            results["http"] = {"error": str(exc)}
        save()
    if not args.skip_hf:
        results["hf"] = bench_hf(model_dir, builder, mc, args)
        log(f"HF: {results['hf']}")
        save()
    if not args.skip_glmv:  # glmv's load again, now that the files are in the page cache (HF just read them)
        from glmv.layers.quant import choose_linear_loader
        from glmv.models.glm4v import Glm4vModel

        torch.cuda.synchronize()
        t = time.perf_counter()
        model = Glm4vModel.load(mc, "cuda", torch.bfloat16, max_positions=args.max_model_len + 1,
                                linear_loader=choose_linear_loader(mc.raw, args.quantization, torch.device("cuda")))
        torch.cuda.synchronize()
        results["glmv"]["load_warm_s"] = time.perf_counter() - t
        model = None  # noqa: F841
        log(f"glmv: warm load {results['glmv']['load_warm_s']:.1f} s")
        save()
    print_table(results)
    if "http" in results:
        print()
        print("\n".join(served.table(results.get("glmv", {}).get("served", {}), results["http"], served_plan(args))))
    return 0


def served_plan(args) -> served.ServedPlan:
    name = args.served_plan or ("smoke" if args.device == "cpu" else "full")
    return served.ServedPlan.smoke() if name == "smoke" else served.ServedPlan()


def main_cpu(args) -> int:
    """The served phase on the CPU (a harness check with a small preset): the workloads on an in-process
    AsyncEngine, then through `glmv serve --device cpu`, and the table."""
    from glmv.backends.factory import build_engine
    from glmv.inputs.processor import PromptBuilder
    from glmv.models.tiny import make_tiny_model

    out_dir = Path(os.environ.get("OUT", "/tmp"))
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        log(f"building the {args.preset} preset in {model_dir}")
        make_tiny_model(model_dir, args.preset, device="cpu")
    plan = served_plan(args)
    serve_args = args.serve_args.split()
    results: dict = {"device": "cpu", "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "args": vars(args), "plan": vars(plan)}
    json_path = Path(args.json) if args.json else out_dir / "gpu_bench.json"
    builder = PromptBuilder(model_dir)
    engine_side: dict = {}
    if not args.http_only:
        from glmv.cli.main import build_parser
        from glmv.cli.serve import engine_config_from_args

        # the engine the server would build from the same flags
        ec = engine_config_from_args(build_parser().parse_args(["serve", str(model_dir), "--device", "cpu", *serve_args]))
        mc = ModelConfig.from_dir(model_dir, ec.generation_config)
        engine = build_engine(mc, ec, builder.tokenizer)

        async def go() -> None:
            engine_side["figures"] = await served.run_all(served.EngineRunner(engine, builder),
                                                          served.build_workloads(builder, plan, 1), "engine", log)

        served.drive_engine(engine, go)
        results["engine"] = engine_side
        engine = None
        gc.collect()
    if not args.skip_http:
        results["http"] = served.bench_http(model_dir, builder, plan, "cpu", serve_args, args.serve_starts, out_dir, log)
    json_path.write_text(json.dumps(results, indent=2, default=str))
    print("\n".join(served.table(engine_side, results.get("http", {}), plan)))
    log(f"results in {json_path}")
    return 0


def print_table(r: dict) -> None:
    g, h = r.get("glmv", {}), r.get("hf", {})
    gpu = g.get("gpu", {})
    rows = [
        ("single-stream decode 512/256 (tok/s)", "decode_1", True),
        ("8 concurrent 512/256, end to end (out tok/s)", "throughput_8", True),
        ("64 concurrent 512/256, end to end (out tok/s)", "throughput_64", True),
        ("64 concurrent 512/256, steady decode (out tok/s)", "throughput_64_steady", True),
        ("128 x (1008px image + 30 tok), 256 out, e2e (tok/s)", "image_128", True),
        ("128 x (1008px image + 30 tok), steady decode (tok/s)", "image_128_steady", True),
        ("TTFT one 1008px image, idle (ms)", "ttft_image_ms", False),
        ("prefill 4096 text tokens, TTFT (ms)", "prefill_4096_ms", False),
        ("checkpoint load (s)", "load_s", False),
    ]
    print()
    print(f"device: {r['device']}  torch {r['torch']}  triton {r.get('triton')}  date {r['date']}")
    print(f"copy {r['copy_gbps']:.0f} GB/s  matmul {r['matmul_tflops']:.0f} TFLOP/s  weights/step {r['weight_gb']:.2f} GB"
          f"  roofline single-stream {r['roofline_decode_1']:.0f} tok/s")
    print(f"{'figure':54s} {'glmv':>10s} {'HF':>10s} {'glmv/HF':>8s} {'goal':>8s} {'met':>4s}")
    for name, key, higher in rows:
        gv, hv = g.get(key), h.get(key)
        goal = GOALS.get(key)
        ratio = (gv / hv if higher else hv / gv) if gv and hv else None
        met = "" if gv is None or goal is None else ("yes" if (gv >= goal if higher else gv <= goal) else "no")

        def f(x):
            return f"{x:10.1f}" if isinstance(x, (int, float)) else f"{'-':>10s}"

        print(f"{name:54s} {f(gv)} {f(hv)} {(f'{ratio:8.2f}' if ratio else '       -')} "
              f"{(f'{goal:8.0f}' if goal else '       -')} {met:>4s}")
    if g.get("decode_1"):
        print(f"single-stream decode at {100 * g['decode_1'] / r['roofline_decode_1']:.0f}% of the roofline")
    if gpu:
        print("GPU-only pieces (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in gpu.items()))
        b1 = gpu.get("graph_step_ms_b1_ctx640")
        if b1:
            print(f"graphed decode step batch 1: {b1:.2f} ms = {1e3 / b1:.0f} tok/s on the GPU alone, "
                  f"{r['weight_gb'] / b1:.2f} TB/s of weights")
    for key in ("steps_1", "steps_8", "steps_64", "steps_image"):
        if g.get(key):
            print(f"engine decode-step wall time (ms, by batch size) {key}: {g[key]}")
    if g.get("load_s"):
        cold = "cold page cache" if g.get("load_cold") else "page cache warm"
        print(f"load: {g['load_gb']:.1f} GB in {g['load_s']:.1f} s = {g['load_gb'] / g['load_s']:.1f} GB/s ({cold})")
    if g.get("load_warm_s"):
        print(f"load, page cache warm: {g['load_gb']:.1f} GB in {g['load_warm_s']:.1f} s = "
              f"{g['load_gb'] / g['load_warm_s']:.1f} GB/s")
    if g.get("gemv_plan"):
        used = sum(1 for row in g["gemv_plan"] if row[1] and row[2] is not None and row[2] < row[1])
        print(f"Triton decode matmul chosen over cuBLAS at {used} of {len(g['gemv_plan'])} (shape, batch) points")


if __name__ == "__main__":
    sys.exit(main())
