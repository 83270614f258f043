"""small_card: does glmv serve a 32k-token context on a 16 GiB card? (issue 13)

Starts `glmv serve` on the model folder with a GPU memory cap (`--max-gpu-memory`, default 16GiB: a 16 GB card
simulated on a bigger one), reads from its start-up log how many tokens of context its KV cache holds, sends one
streaming completion of `--prompt-tokens` random token ids over HTTP and then `--concurrent` of them together,
and reads what the server process holds of the device from `nvidia-smi` (the CUDA context included) and what
PyTorch's allocator holds from its /metrics. Passes when the long prompts were answered and the process stayed
inside the card.

    PYTHONPATH=.:/tmp/site python3 bench/small_card.py --model-dir /tmp/glmv-full                      # online FP8
    PYTHONPATH=.:/tmp/site python3 bench/small_card.py --model-dir /tmp/glmv-full-awq --serve-args "--max-model-len 32768"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.soak import ServerProcess, read_metrics  # noqa: E402
from glmv.cli.serve import byte_size  # noqa: E402

GiB = 2**30
DEFAULT_SERVE_ARGS = "--quantization fp8 --max-model-len 32768"


@dataclass
class LongPrompt:
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    total_s: float


@dataclass
class SmallCardResult:
    cap_bytes: int
    context_tokens: int | None  # what the KV cache holds, from the start-up log
    ready_s: float
    single: LongPrompt
    together: list[LongPrompt]
    process_device_mib: float | None  # nvidia-smi: the server process, CUDA context included
    allocator_reserved_mib: float | None  # torch's caching allocator (what the cap counts)

    @property
    def fits(self) -> bool:
        inside = self.process_device_mib is not None and self.process_device_mib * 2**20 <= self.cap_bytes
        answered = all(r.completion_tokens > 0 for r in [self.single, *self.together])
        return inside and answered


def process_device_mib(pid: int) -> float | None:
    """What nvidia-smi says this process holds on the GPU (None where nvidia-smi is missing or does not list it)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid):
            return float(fields[1])
    return None


def context_from_log(log_text: str) -> int | None:
    match = re.search(r"(\d+) tokens of context fit", log_text)
    return None if match is None else int(match.group(1))


def ordinary_ids(model_dir: Path) -> range:
    """Token ids well inside the vocabulary, away from the special tokens at its end."""
    config = json.loads((model_dir / "config.json").read_text())
    vocab = (config.get("text_config") or config)["vocab_size"]
    return range(min(1000, vocab // 4), min(50_000, vocab // 2))


async def long_prompt(client: httpx.AsyncClient, url: str, ids: range, tokens: int, max_tokens: int,
                      seed: int) -> LongPrompt:
    rng = random.Random(seed)
    prompt = [rng.choice(ids) for _ in range(tokens)]
    body = {"model": "soak", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, usage = None, None
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread()).decode()[:400]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and ttft is None:
                ttft = time.perf_counter() - t0
            usage = chunk.get("usage") or usage
    if usage is None:
        raise RuntimeError("the stream ended without usage")
    return LongPrompt(usage["prompt_tokens"], usage["completion_tokens"], ttft or float("nan"), time.perf_counter() - t0)


async def drive(url: str, ids: range, tokens: int, max_tokens: int,
                concurrent: int) -> tuple[LongPrompt, list[LongPrompt]]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
        single = await long_prompt(client, url, ids, tokens, max_tokens, seed=0)
        together = await asyncio.gather(*(long_prompt(client, url, ids, tokens, max_tokens, seed=1 + i)
                                          for i in range(concurrent)))
    return single, list(together)


def run(args: argparse.Namespace) -> SmallCardResult:
    out_dir = Path(os.environ.get("OUT", "."))
    serve_args = [*shlex.split(args.serve_args), "--max-gpu-memory", str(args.cap), "--disable-log-requests"]
    log_path = out_dir / "small_card_serve.log"
    t0 = time.monotonic()
    server = ServerProcess(args.model_dir, args.device, serve_args, log_path)
    try:
        server.wait_ready(args.ready_timeout_s)
        ready_s = time.monotonic() - t0
        context = context_from_log(log_path.read_text())
        print(f"ready in {ready_s:.1f} s; the KV cache holds {context} tokens of context", flush=True)
        ids = ordinary_ids(args.model_dir)
        single, together = asyncio.run(drive(server.url, ids, args.prompt_tokens, args.max_tokens, args.concurrent))
        device = process_device_mib(server.proc.pid)
        reserved = read_metrics(server.url).get("glmv_device_memory_reserved_bytes", {}).get((), None)
    finally:
        server.stop()
    return SmallCardResult(args.cap, context, ready_s, single, together, device,
                           None if reserved is None else reserved / 2**20)


def report(result: SmallCardResult, args: argparse.Namespace) -> str:
    lines = [f"cap {result.cap_bytes / GiB:.1f} GiB (`--max-gpu-memory`), `{args.serve_args}`",
             f"- KV cache: {result.context_tokens} tokens of context; ready in {result.ready_s:.1f} s",
             f"- one prompt of {result.single.prompt_tokens} tokens: TTFT {result.single.ttft_s * 1e3:.0f} ms, "
             f"{result.single.completion_tokens} tokens out in {result.single.total_s:.2f} s"]
    if result.together:
        ttfts = sorted(r.ttft_s for r in result.together)
        lines.append(f"- {len(result.together)} of them together: TTFT {ttfts[0] * 1e3:.0f}-{ttfts[-1] * 1e3:.0f} ms, "
                     f"all answered: {all(r.completion_tokens > 0 for r in result.together)}")
    device = "not listed" if result.process_device_mib is None else f"{result.process_device_mib:,.0f} MiB"
    reserved = "-" if result.allocator_reserved_mib is None else f"{result.allocator_reserved_mib:,.0f} MiB"
    lines.append(f"- device memory of the server process (nvidia-smi, CUDA context included): {device}; "
                 f"PyTorch's allocator holds {reserved}")
    lines.append(f"- fits a {result.cap_bytes / GiB:.0f} GiB card: {'yes' if result.fits else 'NO'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True, help="the model folder (full preset, or its AWQ copy)")
    p.add_argument("--cap", type=byte_size, default=16 * GiB, help="the card's memory (default 16GiB)")
    p.add_argument("--serve-args", default=DEFAULT_SERVE_ARGS,
                   help=f"more `glmv serve` flags (default: {DEFAULT_SERVE_ARGS!r}; the cap is added)")
    p.add_argument("--prompt-tokens", type=int, default=32_000, help="tokens in each long prompt")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens generated for each")
    p.add_argument("--concurrent", type=int, default=2, help="long prompts sent together after the first")
    p.add_argument("--device", default="cuda", help="cpu: a harness check on a small model (no card to fit)")
    p.add_argument("--ready-timeout-s", type=float, default=600.0)
    p.add_argument("--json", type=Path, default=None, help="default $OUT/small_card.json")
    args = p.parse_args(argv)
    result = run(args)
    text = report(result, args)
    print(text)
    path = args.json or Path(os.environ.get("OUT", ".")) / "small_card.json"
    path.write_text(json.dumps(asdict(result) | {"fits": result.fits, "serve_args": args.serve_args}, indent=1))
    return 0 if result.fits else 1


if __name__ == "__main__":
    raise SystemExit(main())
