"""ttft_breakdown: where the time between a chat request's arrival and its first token goes (issue 18).

    OMP_NUM_THREADS=1 python bench/ttft_breakdown.py --model-dir /tmp/glmv-small --preset small   # builds it if absent
    python bench/ttft_breakdown.py --model-dir /tmp/glmv-full --device cuda                       # on a GPU

Each piece of the server's road is timed on its own, in this process, with the real components (median of
--samples, distinct inputs so no cache answers):
- the door: the JSON body parsed and validated into the chat schema (text, and a 1008x1008 JPEG as a data: URL);
- inputs: the data: URL decoded, the image's content hash, its decode (Pillow), the chat template, the tokenizer,
  the image processor (resize + normalize into patches), the prompt's assembly, and staging the pixels (dtype, pinned);
- the collector: a young, middle and full collection of this process's heap (the model and libraries loaded), with
  the start-up heap frozen (as the engine loop does) and without;
- the engine, idle, driven in-process as the server drives it: from `generate()` to the loop's `add_request` (the
  loop's wake-up), the steps until the first token is handed out, and from that hand-out to the consumer's await
  returning (the event loop's wake-up); collections seen while a request waited for its first token;
- with --http, the same requests through a `glmv serve` subprocess (TTFT to the first chunk), for the remainder.
Prints one table (ms) and writes --json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import served  # noqa: E402


def median_ms(fn: Callable[[int], Any], samples: int) -> float:
    times = []
    for i in range(samples):
        t = time.perf_counter()
        fn(i)
        times.append(1e3 * (time.perf_counter() - t))
    return round(statistics.median(times), 3)


def pieces(builder: Any, engine: Any, samples: int, text_len: int, image_size: int) -> dict[str, float]:
    from glmv.inputs.cache import content_hash
    from glmv.inputs.image import decode_image
    from glmv.inputs.loaded import LoadedMedia
    from glmv.server.protocol import ChatCompletionRequest

    texts = [served.text_chat(builder, text_len, 500 + i) for i in range(samples)]
    images = [served.image_chat(900 + i, image_size) for i in range(samples)]
    bodies_t = [json.dumps({"model": "m", "messages": c.messages(), "stream": True, "max_tokens": 1}) for c in texts]
    bodies_i = [json.dumps({"model": "m", "messages": c.messages(), "stream": True, "max_tokens": 1}) for c in images]
    urls = [c.messages()[0]["content"][0]["image_url"]["url"] for c in images]
    out: dict[str, float] = {}
    out["json+schema, text body"] = median_ms(lambda i: ChatCompletionRequest.model_validate_json(bodies_t[i]), samples)
    out["json+schema, image body"] = median_ms(lambda i: ChatCompletionRequest.model_validate_json(bodies_i[i]),
                                               samples)
    out["data: URL base64 decode"] = median_ms(lambda i: base64.b64decode(urls[i].split(",", 1)[1]), samples)
    out["content hash (sha256)"] = median_ms(lambda i: content_hash(images[i].image_jpeg), samples)
    decoded = [decode_image(c.image_jpeg, "jpeg", "image", 1 << 30) for c in images]
    out["image decode (Pillow)"] = median_ms(lambda i: decode_image(images[i].image_jpeg, "jpeg", "image", 1 << 30),
                                             samples)
    msgs = [[{"role": "user", "content": c.text}] for c in texts]
    rendered = [builder.render(m) for m in msgs]
    out["chat template"] = median_ms(lambda i: builder.render(msgs[i]), samples)
    out[f"tokenizer ({text_len} tokens)"] = median_ms(lambda i: builder.from_text(rendered[i]), samples)
    bounds = builder.defaults.image_bounds
    out["image processor"] = median_ms(
        lambda i: builder.processor.image_processor(images=[decoded[i]], size=bounds.as_size(), return_tensors="pt"),
        samples)
    image_text = builder.render([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}])
    prompts = []

    def build(i: int) -> None:  # a new hash each time: the patch cache does not answer
        media = LoadedMedia(images=[decoded[i]], image_hashes=[f"bd-{time.time_ns()}"], videos=[], video_metadata=[],
                            video_hashes=[])
        prompts.append(builder.build(image_text, media))

    out["prompt build with image (processor + tokenizer)"] = median_ms(build, samples)
    out["stage pixels (dtype, pin)"] = median_ms(lambda i: engine.stage_prompt(prompts[i]), samples)
    return out


def collector() -> dict[str, float]:
    out: dict[str, float] = {}
    gc.collect()
    for frozen in (False, True):
        if frozen:
            gc.freeze()
        for gen in (0, 1, 2):
            t = time.perf_counter()
            gc.collect(gen)
            out[f"gc gen{gen} pass{' (heap frozen)' if frozen else ''}"] = round(1e3 * (time.perf_counter() - t), 3)
    gc.unfreeze()
    out["objects tracked"] = len(gc.get_objects())
    return out


class EngineProbe:
    """Timestamps on the engine's road for one request at a time (wrapping the loop's own methods)."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.t_add: float | None = None
        self.t_deliver: float | None = None
        self.steps = 0
        self.step_ms: list[float] = []
        self.gc_passes: list[tuple[int, float]] = []
        self._gc_start = 0.0
        self.watching = False
        llm = engine.engine
        add, step, deliver = llm.add_request, llm.step, engine._deliver

        def add_request(*a, **k):
            self.t_add = time.perf_counter()
            return add(*a, **k)

        def timed_step():
            t = time.perf_counter()
            try:
                return step()
            finally:
                if self.t_deliver is None:
                    self.steps += 1
                    self.step_ms.append(1e3 * (time.perf_counter() - t))

        def timed_deliver(items):
            if self.t_deliver is None and any(getattr(o, "outputs", None) and o.outputs[0].num_tokens
                                              for _, o in items):
                self.t_deliver = time.perf_counter()
            return deliver(items)

        llm.add_request, llm.step, engine._deliver = add_request, timed_step, timed_deliver
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if not self.watching:
            return
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_passes.append((info["generation"], 1e3 * (time.perf_counter() - self._gc_start)))

    async def one(self, prompt: Any) -> dict[str, float]:
        from glmv.sampling import SamplingParams

        self.t_add = self.t_deliver = None
        self.steps, self.step_ms, self.gc_passes = 0, [], []
        self.watching = True
        params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
        t0 = time.perf_counter()
        t_first = None
        async for out in self.engine.generate(prompt, params, f"bd-{time.time_ns()}"):
            if t_first is None and out.outputs[0].num_tokens:
                t_first = time.perf_counter()
        self.watching = False
        assert self.t_add is not None and self.t_deliver is not None and t_first is not None
        return {"loop wake-up (generate -> add_request)": 1e3 * (self.t_add - t0),
                "add_request -> first token handed out": 1e3 * (self.t_deliver - self.t_add),
                "hand-out -> consumer (event loop wake-up)": 1e3 * (t_first - self.t_deliver),
                "engine TTFT": 1e3 * (t_first - t0), "steps": self.steps, "step ms": sum(self.step_ms),
                "gc passes while waiting": len(self.gc_passes),
                "gc ms while waiting": sum(ms for _, ms in self.gc_passes)}


def engine_road(engine: Any, builder: Any, samples: int, text_len: int, image_size: int) -> dict[str, dict]:
    probe = EngineProbe(engine)
    runner = served.EngineRunner(engine, builder)
    res: dict[str, dict] = {}

    async def go() -> None:
        for label, chats in (("text", [served.text_chat(builder, text_len, 7000 + i) for i in range(samples + 2)]),
                             ("image", [served.image_chat(8000 + i, image_size) for i in range(samples + 2)])):
            await runner.prepare(chats)
            rows = [await probe.one(runner._prompts[id(c)]) for c in chats]
            rows = rows[2:]  # the first ones warm up (kernels, shapes)
            res[label] = {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}
            res[label]["gc passes while waiting (total)"] = sum(r["gc passes while waiting"] for r in rows)

    served.drive_engine(engine, go)
    return res


def http_road(model_dir: Path, builder: Any, device: str, serve_args: list[str], samples: int, text_len: int,
              image_size: int, out_dir: Path) -> dict[str, float]:
    from loadgen import ChatTarget

    server = served.start_server(model_dir, device, serve_args, out_dir / "ttft_breakdown_serve.log")
    res: dict[str, float] = {"serve to ready (s)": round(server.ready_s, 2)}

    async def go() -> None:
        target = ChatTarget(server.base_url, served.SERVED_NAME)
        for label, chats in (("text", [served.text_chat(builder, text_len, 17000 + i) for i in range(samples + 2)]),
                             ("image", [served.image_chat(18000 + i, image_size) for i in range(samples + 2)])):
            times = []
            for c in chats:
                r = await target.run_chat(c, 1)
                if r.error:
                    raise RuntimeError(r.error)
                times.append(1e3 * r.ttft_s)
            res[f"{label}: first request"] = round(times[0], 3)
            res[f"{label}: HTTP TTFT p50"] = round(statistics.median(times[2:]), 3)
            res[f"{label}: HTTP TTFT max"] = round(max(times[2:]), 3)
        await target.close()

    try:
        asyncio.run(go())
    finally:
        served.stop_server(server)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--preset", default="small", help="built into --model-dir if it is absent")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--samples", type=int, default=15)
    ap.add_argument("--text-len", type=int, default=510)
    ap.add_argument("--image-size", type=int, default=1008)
    ap.add_argument("--http", action="store_true", help="also through a `glmv serve` subprocess")
    ap.add_argument("--serve-args", default="--max-num-seqs 16 --max-model-len 4096")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    from glmv.backends.factory import build_engine
    from glmv.cli.main import build_parser
    from glmv.cli.serve import engine_config_from_args
    from glmv.config import ModelConfig
    from glmv.inputs.processor import PromptBuilder
    from glmv.models.tiny import make_tiny_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        make_tiny_model(model_dir, args.preset, device=args.device)
    serve_args = args.serve_args.split()
    ec = engine_config_from_args(build_parser().parse_args(["serve", str(model_dir), "--device", args.device,
                                                            *serve_args]))
    builder = PromptBuilder(model_dir)
    engine = build_engine(ModelConfig.from_dir(model_dir, ec.generation_config), ec, builder.tokenizer)
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args)}
    res["pieces_ms"] = pieces(builder, engine, args.samples, args.text_len, args.image_size)
    res["collector_ms"] = collector()
    res["engine_ms"] = engine_road(engine, builder, args.samples, args.text_len, args.image_size)
    if args.http:
        del engine
        gc.collect()
        out_dir = Path(args.json).parent if args.json else Path("/tmp")
        res["http_ms"] = http_road(model_dir, builder, args.device, serve_args, args.samples, args.text_len,
                                   args.image_size, out_dir)
    for section in ("pieces_ms", "collector_ms", "http_ms"):
        if section in res:
            print(f"-- {section}")
            for k, v in res[section].items():
                print(f"  {k:52s} {v:>10}")
    for label, row in res["engine_ms"].items():
        print(f"-- engine_ms ({label}, idle, median)")
        for k, v in row.items():
            print(f"  {k:52s} {v:>10}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
