"""GPU benchmark of issue 7: glmv's engine vs HF generate vs the hardware roofline, in ONE run on one GPU.

    PYTHONPATH=. python3 bench/gpu_bench.py --model-dir /tmp/glmv-full            # builds the full preset if missing
    PYTHONPATH=. python3 bench/gpu_bench.py --model-dir DIR --skip-hf --quick     # shorter

Measures (bf16, real 9B dims, random weights - decode speed does not depend on the values):
  copy bandwidth (device-to-device) and the single-stream decode roofline it implies; checkpoint load time;
  single-stream decode 512 in / 256 out; output throughput at 64 concurrent (512/256); 128 concurrent requests with one
  1008x1008 image + 30 text tokens and 256 out; TTFT of one such image prompt on an idle engine; prefill of 4096 text
  tokens; and HF transformers generate for the same single-stream and image cases. Prints a table with ratios.
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

from glmv.config import EngineConfig, ModelConfig  # noqa: E402
from glmv.inputs.prompt import Prompt  # noqa: E402
from glmv.sampling import SamplingParams  # noqa: E402

GOALS = {
    "decode_1": 140.0,
    "throughput_64": 8000.0,
    "image_128": 4000.0,
    "ttft_image_ms": 60.0,
    "prefill_4096_ms": 120.0,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def copy_bandwidth() -> float:
    """Device-to-device copy, counting bytes read plus written (GB/s), median of 20."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    return 2 * n / statistics.median(times) / 1e9


def weight_bytes_per_step(mc: ModelConfig) -> int:
    t = mc.text
    per_layer = (
        t.hidden_size * (t.num_heads + 2 * t.num_kv_heads) * t.head_dim  # qkv
        + t.num_heads * t.head_dim * t.hidden_size  # o
        + t.hidden_size * 2 * t.intermediate_size  # gate_up
        + t.intermediate_size * t.hidden_size  # down
    )
    return 2 * (t.num_layers * per_layer + t.vocab_size * t.hidden_size)  # + lm_head; embedding rows excluded


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


async def run_requests(engine, prompts: list[Prompt], params: SamplingParams) -> dict:
    """Submit all prompts at once; return wall time, TTFTs and output token counts."""
    t0 = time.perf_counter()
    ttft: list[float] = []
    last: list[float] = []
    tokens: list[int] = []

    async def one(i: int, p: Prompt):
        first = None
        n = 0
        async for out in engine.generate(p, params, f"bench-{i}-{time.time_ns()}"):
            now = time.perf_counter()
            if first is None and out.outputs[0].num_tokens > 0:
                first = now
            n = out.outputs[0].num_tokens
        ttft.append((first or time.perf_counter()) - t0)
        last.append(time.perf_counter())
        tokens.append(n)

    await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    wall = time.perf_counter() - t0
    return {"wall": wall, "ttft": ttft, "tokens": tokens, "total_tokens": sum(tokens),
            "first_token_at": min(ttft), "last": max(last) - t0}


def bench_hf(model_dir: Path, builder, mc: ModelConfig, args) -> dict:
    from glmv.engine.reference import hf_inputs, load_hf_model

    log("HF: loading the model with transformers")
    t = time.perf_counter()
    model = load_hf_model(model_dir, torch.bfloat16, "cuda")
    res: dict = {"load_s": time.perf_counter() - t}
    out_tokens = args.hf_tokens
    p = random_text_prompt(512, mc.text.vocab_size, 1)
    kw = hf_inputs(p, "cuda", torch.bfloat16)
    gen = dict(do_sample=False, eos_token_id=None, temperature=None, top_p=None, top_k=None)
    with torch.inference_mode():
        model.generate(**kw, max_new_tokens=4, **gen)
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(**kw, max_new_tokens=1, **gen)
        torch.cuda.synchronize()
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(**kw, max_new_tokens=out_tokens, **gen)
        torch.cuda.synchronize()
        total = time.perf_counter() - t
        res["decode_1"] = (out_tokens - 1) / max(total - prefill, 1e-9)
        ip = image_prompt(builder, 999)
        ikw = hf_inputs(ip, "cuda", torch.bfloat16)
        model.generate(**ikw, max_new_tokens=1, **gen)
        torch.cuda.synchronize()
        times = []
        for seed in range(3):
            ikw = hf_inputs(image_prompt(builder, 1000 + seed), "cuda", torch.bfloat16)
            torch.cuda.synchronize()
            t = time.perf_counter()
            model.generate(**ikw, max_new_tokens=1, **gen)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        res["ttft_image_ms"] = 1e3 * statistics.median(times)
        p4k = random_text_prompt(4096, mc.text.vocab_size, 7)
        k4 = hf_inputs(p4k, "cuda", torch.bfloat16)
        model.generate(**k4, max_new_tokens=1, **gen)
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(**k4, max_new_tokens=1, **gen)
        torch.cuda.synchronize()
        res["prefill_4096_ms"] = 1e3 * (time.perf_counter() - t)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return res


def bench_glmv(model_dir: Path, builder, mc: ModelConfig, args) -> dict:
    from glmv.engine.async_engine import AsyncEngine

    ec = EngineConfig(model=str(model_dir), device="cuda", dtype="bfloat16", max_num_seqs=args.max_num_seqs,
                      max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
                      gpu_memory_utilization=0.9, enforce_eager=args.enforce_eager)
    torch.cuda.synchronize()
    t = time.perf_counter()
    engine = AsyncEngine(mc, ec, builder.tokenizer)
    torch.cuda.synchronize()
    res: dict = {"load_s": time.perf_counter() - t}
    out_n = 64 if args.quick else 256

    async def main():
        await engine.start()
        greedy = SamplingParams(temperature=0.0, max_tokens=out_n, ignore_eos=True)
        # warm-up (graph capture, autotune)
        await run_requests(engine, [random_text_prompt(512, mc.text.vocab_size, s) for s in range(2)],
                           SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
        log(f"glmv: single stream 512/{out_n}")
        r = await run_requests(engine, [random_text_prompt(512, mc.text.vocab_size, 11)], greedy)
        res["decode_1"] = (r["total_tokens"] - 1) / (r["last"] - r["first_token_at"])
        for conc in (8, 64):
            log(f"glmv: {conc} concurrent 512/{out_n}")
            prompts = [random_text_prompt(512, mc.text.vocab_size, 100 + conc + i) for i in range(conc)]
            r = await run_requests(engine, prompts, greedy)
            res[f"throughput_{conc}"] = r["total_tokens"] / r["wall"]
        log("glmv: TTFT of one image prompt (idle)")
        await run_requests(engine, [image_prompt(builder, 500)], SamplingParams(temperature=0.0, max_tokens=1))
        times = []
        for seed in range(5):
            p = image_prompt(builder, 600 + seed)
            r = await run_requests(engine, [p], SamplingParams(temperature=0.0, max_tokens=1))
            times.append(r["ttft"][0])
        res["ttft_image_ms"] = 1e3 * statistics.median(times)
        res["image_prompt_tokens"] = len(p)
        log("glmv: prefill 4096")
        times = []
        for seed in range(4):
            r = await run_requests(engine, [random_text_prompt(4096, mc.text.vocab_size, 700 + seed)],
                                   SamplingParams(temperature=0.0, max_tokens=1))
            times.append(r["ttft"][0])
        res["prefill_4096_ms"] = 1e3 * statistics.median(times[1:])
        n_img = 32 if args.quick else 128
        log(f"glmv: {n_img} concurrent image prompts, {out_n} out")
        prompts = [image_prompt(builder, 2000 + i) for i in range(n_img)]
        r = await run_requests(engine, prompts, greedy)
        res["image_128"] = r["total_tokens"] / r["wall"]
        res["image_128_n"] = n_img
        await engine.shutdown()

    asyncio.run(main())
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
    ap.add_argument("--json", default=os.environ.get("OUT", "/tmp") + "/gpu_bench.json", help="where to write results")
    args = ap.parse_args()

    from glmv.inputs.processor import PromptBuilder
    from glmv.models.tiny import make_tiny_model

    model_dir = Path(args.model_dir)
    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if not (model_dir / "config.json").is_file():
        log("building the full preset (random weights at the real 9B dims) on the GPU")
        t = time.perf_counter()
        make_tiny_model(model_dir, "full", device="cuda")
        results["build_s"] = time.perf_counter() - t
    mc = ModelConfig.from_dir(model_dir)
    builder = PromptBuilder(model_dir)
    bw = copy_bandwidth()
    wbytes = weight_bytes_per_step(mc)
    results.update(copy_gbps=bw, weight_gb=wbytes / 1e9, roofline_decode_1=bw * 1e9 / wbytes)
    log(f"copy bandwidth {bw:.0f} GB/s; weights read per step {wbytes / 1e9:.1f} GB; "
        f"single-stream roofline {results['roofline_decode_1']:.0f} tok/s")
    ckpt_bytes = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    results["checkpoint_gb"] = ckpt_bytes / 1e9
    if not args.skip_hf:
        results["hf"] = bench_hf(model_dir, builder, mc, args)
        log(f"HF: {results['hf']}")
    if not args.skip_glmv:
        results["glmv"] = bench_glmv(model_dir, builder, mc, args)
        log(f"glmv: {results['glmv']}")
    Path(args.json).write_text(json.dumps(results, indent=2))
    print_table(results)
    return 0


def print_table(r: dict) -> None:
    g, h = r.get("glmv", {}), r.get("hf", {})
    rows = [
        ("single-stream decode 512/256 (tok/s)", "decode_1", True),
        ("64 concurrent 512/256 (out tok/s)", "throughput_64", True),
        ("8 concurrent 512/256 (out tok/s)", "throughput_8", True),
        ("128 x (1008px image + 30 tok), 256 out (out tok/s)", "image_128", True),
        ("TTFT one 1008px image, idle (ms)", "ttft_image_ms", False),
        ("prefill 4096 text tokens (ms)", "prefill_4096_ms", False),
        ("checkpoint load (s)", "load_s", False),
    ]
    print()
    print(f"device: {r['device']}  copy {r['copy_gbps']:.0f} GB/s  roofline single-stream {r['roofline_decode_1']:.0f} tok/s")
    print(f"{'figure':52s} {'glmv':>10s} {'HF':>10s} {'glmv/HF':>8s} {'goal':>8s} {'met':>4s}")
    for name, key, higher in rows:
        gv, hv = g.get(key), h.get(key)
        goal = GOALS.get(key)
        ratio = (gv / hv if higher else hv / gv) if gv and hv else None
        met = "" if gv is None or goal is None else ("yes" if (gv >= goal if higher else gv <= goal) else "no")
        print(f"{name:52s} {gv if gv is not None else float('nan'):10.1f} {hv if hv is not None else float('nan'):10.1f} "
              f"{ratio if ratio else float('nan'):8.2f} {goal if goal else float('nan'):8.0f} {met:>4s}")
    if g.get("decode_1"):
        print(f"single-stream decode at {100 * g['decode_1'] / r['roofline_decode_1']:.0f}% of the roofline")
    if g.get("load_s"):
        print(f"load: {r['checkpoint_gb']:.1f} GB in {g['load_s']:.1f} s = {r['checkpoint_gb'] / g['load_s']:.1f} GB/s "
              "(page cache warm: the file was just written)")


if __name__ == "__main__":
    sys.exit(main())
