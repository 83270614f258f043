"""soak: does `glmv serve` keep its memory bounded under hours of mixed load? (issue 17)

Starts `glmv serve` in its own process on 127.0.0.1 (the tiny model on the CPU unless told otherwise), keeps
`--concurrency` streaming chat requests in flight through the real HTTP path (text, a 448x336 picture, a one-page
PDF; every picture and page is new content, so the media caches fill to their bounds instead of hitting), and
samples the server's resident memory (/proc/PID/status) and its /metrics cache gauges every `--sample-every-s`.
It stops by itself after `--duration-s` or `--max-requests`, prints the series and the growth between the two
halves of the steady state (after `--warmup-s`), and with `--write-readme` puts the series into bench/README.md.

`--checkpoints 100,10000` pauses the load after that many requests, lets the server go idle and records resident
and device memory there (the CUDA check: device memory after 10,000 requests equals that after 100; run with
`--device cuda --model-dir <full preset folder>`).

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/soak.py --duration-s 1800 --write-readme
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from PIL import Image, ImageDraw
from prometheus_client.parser import text_string_to_metric_families

README = Path(__file__).with_name("README.md")
README_START, README_END = "<!-- soak:start -->", "<!-- soak:end -->"
KINDS = ("text", "image", "document")


@dataclass(frozen=True)
class SoakPlan:
    concurrency: int = 100
    duration_s: float = 1800.0
    max_requests: int = 1_000_000
    max_tokens: int = 64
    sample_every_s: float = 40.0
    warmup_s: float = 120.0
    mix: tuple[tuple[str, int], ...] = (("text", 2), ("image", 2), ("document", 1))
    checkpoints: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_requests < 1 or self.duration_s <= 0 or self.sample_every_s <= 0:
            raise ValueError("--concurrency, --max-requests, --duration-s and --sample-every-s must be positive")
        for kind, weight in self.mix:
            if kind not in KINDS or weight < 0:
                raise ValueError(f"--mix takes text/image/document with weights >= 0, got {kind}={weight}")


@dataclass
class Sample:
    t_s: float
    requests: int
    errors: int
    rss_mb: float
    caches: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # name -> (bytes, entries, bound)
    malloc_in_use_mb: float | None = None  # glibc's own account (mallinfo2), where the server runs on glibc
    malloc_free_mb: float | None = None
    device_allocated_mb: float | None = None
    device_reserved_mb: float | None = None
    pinned_held_mb: float | None = None  # PyTorch's pinned host pool (CUDA), part of rss_mb
    vision_graph_in_use_mb: float | None = None  # tensors the vision tower's CUDA graphs keep (in device_allocated_mb)


# ---- requests ----

def picture_png(index: int, width: int = 448, height: int = 336) -> bytes:
    """A picture no earlier request sent: a gradient with the request's index drawn on it (content hash differs)."""
    rng = random.Random(index)
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle((8, 8, 8 + rng.randrange(40, 200), 8 + rng.randrange(20, 120)),
                   fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    draw.text((20, height - 40), f"request {index}", fill=(255, 255, 0))
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def one_page_pdf(index: int) -> bytes:
    """A one-page PDF (2.5 x 2 inches, so 450x360 px at 180 dpi) whose page is new content."""
    image = Image.open(io.BytesIO(picture_png(index, 180, 144)))
    buf = io.BytesIO()
    image.save(buf, format="PDF", resolution=72.0)
    return buf.getvalue()


def chat_body(kind: str, index: int, model: str, max_tokens: int) -> dict:
    text = {"type": "text", "text": f"Request {index}: describe what you see in a few words."}
    if kind == "image":
        url = "data:image/png;base64," + base64.b64encode(picture_png(index)).decode()
        content = [{"type": "image_url", "image_url": {"url": url}}, text]
    elif kind == "document":
        url = "data:application/pdf;base64," + base64.b64encode(one_page_pdf(index)).decode()
        content = [{"type": "file", "file": {"file_data": url, "filename": f"page-{index}.pdf"}}, text]
    else:
        content = f"Request {index}: tell me a short story about the number {index}."
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0.0, "ignore_eos": True, "stream": True}


async def stream_chat(client: httpx.AsyncClient, url: str, body: dict) -> str | None:
    """One streamed chat to its [DONE]; None when it went well, else what went wrong."""
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                return f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')[:200]}"
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return None
                    if '"error"' in data and "error" in json.loads(data):
                        return data[:200]
        return "the stream ended without [DONE]"
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"


# ---- the server ----

class ServerProcess:
    """`glmv serve` in its own process group on a free loopback port; its output goes to a log file."""

    def __init__(self, model_dir: Path, device: str, serve_args: list[str], log_path: Path):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "glmv.cli.main", "serve", str(model_dir), "--port", str(self.port), "--device",
             device, "--served-model-name", "soak", *serve_args],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"glmv serve exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError(f"glmv serve did not answer within {timeout_s:.0f} s; see {self.log_path}")

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def read_metrics(url: str) -> dict[str, dict[tuple, float]]:
    """/metrics as {metric name: {label values: value}}."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def cache_gauges(metrics: dict[str, dict[tuple, float]]) -> dict[str, tuple[float, float, float]]:
    caches: dict[str, tuple[float, float, float]] = {}
    for labels, used in metrics.get("glmv_cache_bytes", {}).items():
        name = dict(labels)["cache"]
        entries = metrics.get("glmv_cache_entries", {}).get(labels, 0.0)
        bound = metrics.get("glmv_cache_capacity_bytes", {}).get(labels, 0.0)
        caches[name] = (used, entries, bound)
    return caches


def cache_text(used: float, entries: float, bound: float) -> str:
    """"512/512 MiB (1161)": used / bound (entries); a cache bounded in entries only (bound 0 bytes): its MiB."""
    size = f"{used / 2**20:.0f}/{bound / 2**20:.0f}" if bound else f"{used / 2**20:.0f}"
    return f"{size} MiB ({entries:.0f})"


def take_sample(server: ServerProcess, t0: float, done: int, errors: int) -> Sample:
    metrics = read_metrics(server.url)
    allocated = metrics.get("glmv_device_memory_allocated_bytes", {}).get((), None)
    reserved = metrics.get("glmv_device_memory_reserved_bytes", {}).get((), None)
    in_use = metrics.get("glmv_malloc_in_use_bytes", {}).get((), None)
    free = metrics.get("glmv_malloc_free_bytes", {}).get((), None)
    pinned = metrics.get("glmv_pinned_host_memory_held_bytes", {}).get((), None)
    graphs = metrics.get("glmv_vision_graph_in_use_bytes", {}).get((), None)
    return Sample(t_s=round(time.monotonic() - t0, 1), requests=done, errors=errors, rss_mb=round(server.rss_mb(), 1),
                  caches=cache_gauges(metrics),
                  malloc_in_use_mb=None if in_use is None else round(in_use / 2**20, 1),
                  malloc_free_mb=None if free is None else round(free / 2**20, 1),
                  device_allocated_mb=None if allocated is None else round(allocated / 2**20, 1),
                  device_reserved_mb=None if reserved is None else round(reserved / 2**20, 1),
                  pinned_held_mb=None if pinned is None else round(pinned / 2**20, 1),
                  vision_graph_in_use_mb=None if graphs is None else round(graphs / 2**20, 1))


# ---- the load ----

@dataclass
class SoakResult:
    plan: SoakPlan
    samples: list[Sample]
    checkpoints: list[Sample]
    requests: int
    errors: int
    first_error: str | None
    wall_s: float

    def steady(self) -> list[Sample]:
        return [s for s in self.samples if s.t_s >= self.plan.warmup_s]

    def growth(self) -> tuple[float, float, float] | None:
        """(mean RSS of the steady state's first half, of its second half, growth in %); None if too short."""
        steady = self.steady()
        if len(steady) < 4:
            return None
        half = len(steady) // 2
        first = sum(s.rss_mb for s in steady[:half]) / half
        second = sum(s.rss_mb for s in steady[half:]) / (len(steady) - half)
        return first, second, 100.0 * (second - first) / first

    def last_window_growth(self, window_s: float) -> tuple[float, float, float] | None:
        """RSS over the last `window_s` seconds as a least-squares line through its samples (so no single sample,
        such as one taken as the load drains, decides it): (the line's start MB, its end MB, growth in %)."""
        if not self.samples or self.samples[-1].t_s - self.samples[0].t_s < window_s:
            return None
        end_t = self.samples[-1].t_s
        window = [s for s in self.samples if s.t_s >= end_t - window_s]
        if len(window) < 3:
            return None
        ts, ys = [s.t_s for s in window], [s.rss_mb for s in window]
        t_mean, y_mean = sum(ts) / len(ts), sum(ys) / len(ys)
        slope = sum((t - t_mean) * (y - y_mean) for t, y in zip(ts, ys, strict=True)) / sum((t - t_mean) ** 2 for t in ts)
        start = y_mean + slope * (ts[0] - t_mean)
        end = y_mean + slope * (ts[-1] - t_mean)
        return start, end, 100.0 * (end - start) / start


async def run_soak(server: ServerProcess, plan: SoakPlan, model: str = "soak", progress=print,
                   snapshots: list[Path] | None = None) -> SoakResult:
    """Drive the load. With `snapshots` (a list, the server started with --cuda-memory-history), each checkpoint
    also has the server write a CUDA allocator snapshot, and its path is appended there."""
    kinds = [k for k, w in plan.mix for _ in range(w)]
    rng = random.Random(plan.seed)
    url = server.url + "/v1/chat/completions"
    limits = httpx.Limits(max_connections=plan.concurrency + 8, max_keepalive_connections=plan.concurrency + 8)
    client = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=30.0), limits=limits)
    t0 = time.monotonic()
    deadline = t0 + plan.duration_s
    started = done = errors = 0
    first_error: str | None = None
    samples: list[Sample] = []
    checkpoints: list[Sample] = []
    pending = sorted(plan.checkpoints)
    gate = asyncio.Event()
    gate.set()
    workers_done = False

    def limit() -> int:  # requests to start before the next pause (or in all)
        return min([plan.max_requests, *pending[:1]])

    async def worker() -> None:
        nonlocal started, done, errors, first_error
        while time.monotonic() < deadline:
            await gate.wait()
            if started >= limit():
                if started >= plan.max_requests:
                    return
                await asyncio.sleep(0.05)
                continue
            index = started
            started += 1
            err = await stream_chat(client, url, chat_body(rng.choice(kinds), index, model, plan.max_tokens))
            done += 1
            if err is not None:
                errors += 1
                first_error = first_error or err

    async def sampler() -> None:
        while True:
            sample = await asyncio.to_thread(take_sample, server, t0, done, errors)
            samples.append(sample)
            progress(format_sample(sample))
            await asyncio.sleep(plan.sample_every_s)

    async def pauser() -> None:
        while pending and not (workers_done and done < pending[0]):
            if done >= pending[0]:
                gate.clear()
                idle_by = time.monotonic() + 120
                while time.monotonic() < idle_by:
                    m = await asyncio.to_thread(read_metrics, server.url)
                    if m.get("glmv_server_requests_in_flight", {}).get((), 1.0) == 0.0:
                        break
                    await asyncio.sleep(0.5)
                await asyncio.sleep(1.0)  # let the engine loop's idle collection run
                sample = await asyncio.to_thread(take_sample, server, t0, done, errors)
                checkpoints.append(sample)
                progress(f"checkpoint after {done} requests: {format_sample(sample)}")
                if snapshots is not None:
                    taken = await client.post(server.url + "/debug/cuda-memory-snapshot")
                    taken.raise_for_status()
                    snapshots.append(Path(taken.json()["path"]))
                    progress(f"CUDA memory snapshot: {taken.json()}")
                pending.pop(0)
                gate.set()
            await asyncio.sleep(0.2)

    sampling, pausing = asyncio.ensure_future(sampler()), asyncio.ensure_future(pauser())
    try:
        await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
        workers_done = True
        await pausing  # a checkpoint at the last request is taken once the load has ended
    finally:
        sampling.cancel()
        pausing.cancel()
        await client.aclose()
    samples.append(await asyncio.to_thread(take_sample, server, t0, done, errors))
    progress(format_sample(samples[-1]))
    return SoakResult(plan, samples, checkpoints, done, errors, first_error, time.monotonic() - t0)


# ---- reporting ----

def format_sample(s: Sample) -> str:
    caches = " ".join(f"{name}={cache_text(*usage)}".replace(" ", "") for name, usage in sorted(s.caches.items()))
    device = "" if s.device_allocated_mb is None else \
        f" device={s.device_allocated_mb:.0f}/{s.device_reserved_mb:.0f}MiB pinned={s.pinned_held_mb}MiB"
    heap = "" if s.malloc_in_use_mb is None else f" malloc={s.malloc_in_use_mb:.0f}+{s.malloc_free_mb:.0f}free"
    return (f"t={s.t_s:7.1f}s requests={s.requests:6d} errors={s.errors} rss={s.rss_mb:8.1f}MB{heap}{device} "
            f"{caches}")


def markdown(result: SoakResult, command: str, date: str | None = None) -> str:
    plan = result.plan
    lines = [f"Date {date or time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Command: `{command}`.",
             f"{result.requests:,} requests in {result.wall_s:.0f} s ({result.errors} errors), {plan.concurrency} "
             f"concurrent, {plan.max_tokens} tokens each, mix "
             f"{', '.join(f'{k} {w}' for k, w in plan.mix)}; RSS sampled every {plan.sample_every_s:.0f} s.", ""]
    growth = result.growth()
    if growth is not None:
        lines.append(f"Steady state (after {plan.warmup_s:.0f} s): mean RSS {growth[0]:.0f} MB in its first half, "
                     f"{growth[1]:.0f} MB in its second ({growth[2]:+.2f}%).")
    window = result.last_window_growth(600.0)
    if window is not None:
        lines.append(f"Last 10 minutes, least-squares line through the samples: {window[0]:.0f} -> {window[1]:.0f} MB "
                     f"({window[2]:+.2f}%).")
    lines += ["", "| t (s) | requests | RSS (MB) | malloc in use / free (MiB) | caches used / bound (entries) |",
              "|---:|---:|---:|---:|---|"]
    for s in result.samples:
        caches = ", ".join(f"{name} {cache_text(*usage)}" for name, usage in sorted(s.caches.items()))
        heap = "-" if s.malloc_in_use_mb is None else f"{s.malloc_in_use_mb:.0f} / {s.malloc_free_mb:.0f}"
        lines.append(f"| {s.t_s:.0f} | {s.requests:,} | {s.rss_mb:.0f} | {heap} | {caches} |")
    for s in result.checkpoints:
        lines.append(f"\nIdle after {s.requests:,} requests: RSS {s.rss_mb:.0f} MB"
                     + ("" if s.device_allocated_mb is None else
                        f", device allocated {s.device_allocated_mb:.1f} MiB, reserved {s.device_reserved_mb:.1f} MiB"))
    return "\n".join(lines)


def write_readme(section: str) -> None:
    text = README.read_text()
    block = f"{README_START}\n{section}\n{README_END}"
    if README_START in text:
        text = re.sub(re.escape(README_START) + ".*?" + re.escape(README_END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## Soak: resident memory under hours of load (issue 17)\n\n" + block + "\n"
    README.write_text(text)


# device memory, bounded, filling as new pictures and picture shapes come
DEVICE_CACHES = ("vision_embedding", "vision_grid_tables")
GRAPH_CACHE = "vision_graphs"  # its bytes are what the graphs reserved; what they keep in use is its own gauge


def device_check(result: SoakResult, tolerance_mb: float) -> str | None:
    """None when device memory in tensors at the last idle checkpoint equals that at the first, within tolerance,
    once the device caches (the vision embeddings, bounded by --vision-cache-gb, the tower's per-grid tables and
    its CUDA graphs, bounded in slots, all filling as new pictures come) are set aside; else what grew.

    Reserved memory is printed beside it and does not fail the check: outside the caches it is the allocator's
    cache of freed blocks, which the allocator itself gives back when a new segment does not fit (so it wanders
    under load and is bounded by the card, not by the request count)."""
    marks = [s for s in result.checkpoints if s.device_allocated_mb is not None]
    if len(marks) < 2:
        return None

    def outside_caches(s: Sample) -> tuple[float, float]:
        cached = sum(s.caches.get(name, (0.0, 0.0, 0.0))[0] for name in DEVICE_CACHES) / 2**20
        graphs_reserved = s.caches.get(GRAPH_CACHE, (0.0, 0.0, 0.0))[0] / 2**20
        graphs_in_use = s.vision_graph_in_use_mb or 0.0
        return s.device_allocated_mb - cached - graphs_in_use, s.device_reserved_mb - cached - graphs_reserved

    (a0, r0), (a1, r1) = outside_caches(marks[0]), outside_caches(marks[-1])
    span = f"from {marks[0].requests} to {marks[-1].requests} requests"
    if a1 - a0 > tolerance_mb:
        return (f"device memory in tensors outside the device caches grew {span}: allocated {a0:.1f} -> {a1:.1f} "
                f"MiB (reserved {r0:.1f} -> {r1:.1f} MiB)")
    print(f"device memory outside the device caches {span}: allocated {a0:.1f} -> {a1:.1f} MiB (within "
          f"{tolerance_mb} MiB); reserved {r0:.1f} -> {r1:.1f} MiB ({r1 - r0:+.1f}, the allocator's cache of freed "
          "blocks)")
    return None


def load_result(path: Path) -> tuple[SoakResult, str, str | None]:
    """A run saved by --json, its command and its date. A file without a "result" part (an older writer) gets its totals
    from the last sample."""
    saved = json.loads(path.read_text())
    plan_fields = dict(saved["plan"])
    plan_fields["mix"] = tuple(tuple(m) for m in plan_fields["mix"])
    plan_fields["checkpoints"] = tuple(plan_fields["checkpoints"])
    plan = SoakPlan(**plan_fields)

    def sample(d: dict) -> Sample:
        return Sample(**(d | {"caches": {k: tuple(v) for k, v in d["caches"].items()}}))

    samples = [sample(d) for d in saved["samples"]]
    last = samples[-1]
    totals = saved.get("result") or {"requests": last.requests, "errors": last.errors, "first_error": None,
                                     "wall_s": last.t_s, "command": f"(recorded in {path.name})"}
    result = SoakResult(plan, samples, [sample(d) for d in saved["checkpoints"]], totals["requests"],
                        totals["errors"], totals["first_error"], totals["wall_s"])
    return result, totals["command"], totals.get("date")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=None, help="a model folder (default: a tiny model built here)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the server's --device)")
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--duration-s", type=float, default=1800.0)
    p.add_argument("--max-requests", type=int, default=1_000_000)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--sample-every-s", type=float, default=40.0)
    p.add_argument("--warmup-s", type=float, default=120.0, help="samples before this are not steady state")
    p.add_argument("--mix", default="text=2,image=2,document=1", help="request kinds and their weights")
    p.add_argument("--checkpoints", default="", help="request counts to pause at, idle, and record memory")
    p.add_argument("--device-tolerance-mb", type=float, default=16.0,
                   help="largest growth of device memory between the first and last checkpoint")
    p.add_argument("--json", type=Path, default=None, help="write the samples here")
    p.add_argument("--write-readme", action="store_true", help="put the series into bench/README.md")
    p.add_argument("--from-json", type=Path, default=None,
                   help="print (and with --write-readme record) a run saved by --json instead of running one")
    p.add_argument("--cuda-memory-history", type=Path, default=None, metavar="DIR",
                   help="start the server with --cuda-memory-history DIR, snapshot its allocator at each "
                        "checkpoint and print which allocation sites grew from the first to the last")
    p.add_argument("serve_args", nargs=argparse.REMAINDER, help="after --: more `glmv serve` flags")
    args = p.parse_args(argv)
    if args.from_json is not None:
        result, command, date = load_result(args.from_json)
        section = markdown(result, command, date)
        print(section)
        if args.write_readme:
            write_readme(section)
        return 0
    mix = tuple((k, int(w)) for k, w in (part.split("=") for part in args.mix.split(",") if part))
    plan = SoakPlan(concurrency=args.concurrency, duration_s=args.duration_s, max_requests=args.max_requests,
                    max_tokens=args.max_tokens, sample_every_s=args.sample_every_s, warmup_s=args.warmup_s,
                    mix=mix, checkpoints=tuple(int(c) for c in args.checkpoints.split(",") if c))
    serve_args = [a for a in args.serve_args if a != "--"]
    snapshots: list[Path] | None = None
    if args.cuda_memory_history is not None:
        serve_args += ["--cuda-memory-history", str(args.cuda_memory_history)]
        snapshots = []
    work = Path(tempfile.mkdtemp(prefix="glmv-soak-"))
    model_dir = args.model_dir
    if model_dir is None:
        from glmv.models.tiny import make_tiny_model

        model_dir = make_tiny_model(work / "tiny", "tiny")
    server = ServerProcess(model_dir, args.device, serve_args, work / "server.log")
    try:
        server.wait_ready()
        result = asyncio.run(run_soak(server, plan, snapshots=snapshots))
    finally:
        code = server.stop()
    print(f"server exited with {code}; log in {server.log_path}")
    command = "PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/soak.py " + " ".join(argv or sys.argv[1:])
    section = markdown(result, command.strip())
    print(section)
    if result.first_error:
        print(f"first error: {result.first_error}")
    if args.json is not None:
        args.json.write_text(json.dumps({"plan": asdict(plan), "samples": [asdict(s) for s in result.samples],
                                         "checkpoints": [asdict(s) for s in result.checkpoints],
                                         "result": {"requests": result.requests, "errors": result.errors,
                                                    "first_error": result.first_error, "wall_s": result.wall_s,
                                                    "command": command.strip(),
                                                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}},
                                        indent=1))
    if args.write_readme:
        write_readme(section)
    if snapshots is not None and len(snapshots) >= 2:
        import pickle

        from bench.cuda_memory_diff import report

        print(f"allocation sites, {snapshots[0].name} -> {snapshots[-1].name}:")
        print(report(pickle.loads(snapshots[0].read_bytes()), pickle.loads(snapshots[-1].read_bytes())))
    problem = device_check(result, args.device_tolerance_mb)
    if problem is not None:
        print(problem)
        return 1
    return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
