"""served: the figures a client of `glmv serve` sees, measured the same way through HTTP and on the engine in-process.

One set of workloads (bench/gpu_bench.py's HTTP phase, issue 18), run twice in one benchmark run:
- on the engine: an `AsyncEngine` driven in-process, prompts built before the clock starts (what the engine can do);
- through HTTP: a real `glmv serve` subprocess on 127.0.0.1, driven by bench/loadgen.py's `ChatTarget` over
  streaming `/v1/chat/completions` (what a client sees: template, tokenizer, image decode and processor, staging,
  JSON and SSE included). The server is started by this module; serve-to-ready is the time from spawning it to
  `/health` answering 200, and the first requests after that are timed apart (warm-up left to them shows there).

Workloads (counts of the `full` plan; `smoke` is the CPU harness check): idle TTFT of a 510-token text chat (50, one
at a time) and of one 1008x1008 picture (20 distinct, one at a time); 16 text chats of 510 tokens arriving together;
32 distinct picture chats arriving together; 64 and 128 chats of 512 in / 256 out arriving together (end-to-end output
tok/s); saturation, 768 chats of 128 in / 128 out with 256 in flight. Greedy, `ignore_eos`, prompts distinct (no prefix
cache hits). TTFT is the first chunk after the role chunk, empty text included (see loadgen.ChatTarget).
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import ChatRequest, ChatTarget, RequestResult  # noqa: E402

SERVED_NAME = "glmv-bench"
IMAGE_QUESTION = "Describe this picture in detail, then count the objects in it and explain your reasoning."


@dataclass(frozen=True)
class ServedPlan:
    """Sizes of the served workloads."""

    text_len: int = 510
    text_idle: int = 50
    image_size: int = 1008
    image_idle: int = 20
    text_burst: int = 16
    image_burst: int = 32
    burst_out: int = 32
    levels: tuple[int, ...] = (64, 128)
    level_in: int = 512
    level_out: int = 256
    saturation_requests: int = 768
    saturation_in_flight: int = 256
    saturation_in: int = 128
    saturation_out: int = 128

    @classmethod
    def smoke(cls) -> ServedPlan:
        """Small enough for the tiny preset on two CPU cores in about a minute; checks the harness, not speed."""
        return cls(text_len=200, text_idle=6, image_size=448, image_idle=4, text_burst=4, image_burst=4, burst_out=8,
                   levels=(4, 8), level_in=128, level_out=16, saturation_requests=24, saturation_in_flight=12,
                   saturation_in=64, saturation_out=16)

    def total_requests(self) -> int:
        return (self.text_idle + self.image_idle + self.text_burst + self.image_burst + sum(self.levels)
                + self.saturation_requests)


# ---------------------------------------------------------------- prompts
def text_chat(builder: Any, n_tokens: int, seed: int) -> ChatRequest:
    """A user turn of random words whose rendered prompt is `n_tokens` long (words that are one token each, so
    the count is exact unless neighbours merge; then a few words are added or dropped until it is)."""
    rng = np.random.default_rng(seed)
    words = _one_token_words(builder)
    picked = [words[i] for i in rng.integers(0, len(words), max(1, n_tokens - _overhead(builder)))]
    for _ in range(20):
        got = _rendered_len(builder, "".join(picked))
        if got == n_tokens:
            break
        if got > n_tokens:
            del picked[max(1, len(picked) - (got - n_tokens)):]
        else:
            picked += [words[i] for i in rng.integers(0, len(words), n_tokens - got)]
    return ChatRequest(text="".join(picked))


_WORDS: dict[int, list[str]] = {}


def _one_token_words(builder: Any) -> list[str]:
    """Vocabulary entries that decode to a space and letters and encode back to themselves alone."""
    tok = builder.tokenizer
    if id(tok) not in _WORDS:
        out = []
        for i in range(min(len(tok), 150_000)):
            text = tok.decode([i])
            if len(text) > 2 and text[0] == " " and text[1:].isalpha() and \
                    tok(text, add_special_tokens=False)["input_ids"] == [i]:
                out.append(text)
        if len(out) < 50:
            raise RuntimeError(f"the tokenizer has only {len(out)} one-token words")
        _WORDS[id(tok)] = out
    return _WORDS[id(tok)]


def _overhead(builder: Any) -> int:
    return _rendered_len(builder, "")


def _rendered_len(builder: Any, text: str) -> int:
    rendered = builder.render([{"role": "user", "content": text}])
    return len(builder.tokenizer(rendered, add_special_tokens=False)["input_ids"])


def image_chat(seed: int, size: int) -> ChatRequest:
    """A distinct photo-like picture (smooth colour fields plus grain, as JPEG quality 90) and a question."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 12, (size, size, 3), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return ChatRequest(text=IMAGE_QUESTION, image_jpeg=buf.getvalue())


@dataclass(frozen=True)
class Workload:
    """One figure's requests: run one at a time (`in_flight` 1) or with `in_flight` kept going."""

    key: str
    chats: list[ChatRequest]
    max_tokens: int
    in_flight: int


def build_workloads(builder: Any, plan: ServedPlan, seed: int) -> list[Workload]:
    """Every figure's requests, distinct across figures (`seed` separates the engine's run from the server's)."""
    s = seed * 100_000
    out = [
        Workload("ttft_text_idle", [text_chat(builder, plan.text_len, s + i) for i in range(plan.text_idle)], 1, 1),
        Workload("ttft_image_idle", [image_chat(s + 1000 + i, plan.image_size) for i in range(plan.image_idle)], 1, 1),
        Workload("ttft_text_burst", [text_chat(builder, plan.text_len, s + 2000 + i) for i in range(plan.text_burst)],
                 plan.burst_out, plan.text_burst),
        Workload("ttft_image_burst", [image_chat(s + 3000 + i, plan.image_size) for i in range(plan.image_burst)],
                 plan.burst_out, plan.image_burst),
    ]
    for n in plan.levels:
        out.append(Workload(f"e2e_{n}", [text_chat(builder, plan.level_in, s + 4000 + 1000 * n + i) for i in range(n)],
                            plan.level_out, n))
    out.append(Workload("saturation", [text_chat(builder, plan.saturation_in, s + 9_000_000 + i)
                                       for i in range(plan.saturation_requests)],
                        plan.saturation_out, plan.saturation_in_flight))
    return out


# ---------------------------------------------------------------- running
class ChatRunner(Protocol):
    async def prepare(self, chats: Sequence[ChatRequest]) -> None: ...

    async def run_chat(self, chat: ChatRequest, max_tokens: int) -> RequestResult: ...


class HttpRunner:
    """The server's side: nothing to prepare (the server builds the prompt inside the timed request)."""

    def __init__(self, target: ChatTarget):
        self.target = target

    async def prepare(self, chats: Sequence[ChatRequest]) -> None:
        return None

    async def run_chat(self, chat: ChatRequest, max_tokens: int) -> RequestResult:
        return await self.target.run_chat(chat, max_tokens)


class EngineRunner:
    """The engine's side: prompts built and staged (as the server's door does) before the clock starts, then fed to
    an in-process EngineClient; the first output with a token is the first chunk."""

    def __init__(self, engine: Any, builder: Any):
        self.engine = engine
        self.builder = builder
        self._prompts: dict[int, Any] = {}
        self._n = 0

    async def prepare(self, chats: Sequence[ChatRequest]) -> None:
        self._prompts = {id(c): self._build(c) for c in chats}

    def _build(self, chat: ChatRequest) -> Any:
        from glmv.inputs.loaded import LoadedMedia

        if chat.image_jpeg is None:
            return self.builder.build(self.builder.render(chat.messages()))
        from PIL import Image

        from glmv.inputs.cache import content_hash

        img = Image.open(io.BytesIO(chat.image_jpeg)).convert("RGB")
        media = LoadedMedia(images=[img], image_hashes=[content_hash(chat.image_jpeg)], videos=[],
                            video_metadata=[], video_hashes=[])
        text = self.builder.render([{"role": "user", "content": [{"type": "image"},
                                                                 {"type": "text", "text": chat.text}]}])
        return self.engine.stage_prompt(self.builder.build(text, media))

    async def run_chat(self, chat: ChatRequest, max_tokens: int) -> RequestResult:
        from glmv.sampling import SamplingParams

        prompt = self._prompts[id(chat)]
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        self._n += 1
        start = time.perf_counter()
        first: float | None = None
        tokens = 0
        try:
            async for out in self.engine.generate(prompt, params, f"served-{self._n}-{time.time_ns()}"):
                c = out.outputs[0]
                if c.num_tokens and first is None:
                    first = time.perf_counter() - start
                tokens = max(tokens, c.num_tokens)
        except Exception as exc:  # noqa: BLE001 - a failed request is a result
            return RequestResult(first, time.perf_counter() - start, tokens, f"{type(exc).__name__}: {exc}")
        return RequestResult(first, time.perf_counter() - start, tokens)


def drive_engine(engine: Any, door: Callable[[], Any]) -> None:
    """Run the async `door()` against an in-process AsyncEngine as `glmv serve` would: on the CPU the engine loop
    keeps this (main) thread and the door runs beside it (glmv/engine/beside_loop.py: OpenMP runs slower in a
    second thread), on CUDA the loop has its own thread."""
    if engine.config.resolved_device == "cpu":
        from glmv.engine.beside_loop import run_beside_engine_loop

        run_beside_engine_loop(engine, door)
        return

    async def go() -> None:
        await engine.start()
        try:
            await door()
        finally:
            await engine.shutdown()

    asyncio.run(go())


async def run_workload(runner: ChatRunner, w: Workload, progress: Any = None) -> dict[str, Any]:
    """The workload's figure: TTFT percentiles (ms) and output tok/s over its wall time."""
    await runner.prepare(w.chats)
    todo = iter(w.chats)
    results: list[RequestResult] = []
    start = time.perf_counter()

    async def client() -> None:
        for chat in todo:
            results.append(await runner.run_chat(chat, w.max_tokens))
            if progress is not None:
                progress.update(1)

    await asyncio.gather(*(client() for _ in range(min(w.in_flight, len(w.chats)))))
    wall = time.perf_counter() - start
    errors = [r.error for r in results if r.error]
    ttft = [1e3 * r.ttft_s for r in results if r.ttft_s is not None]
    out_tokens = sum(r.output_tokens for r in results)
    fig: dict[str, Any] = {"requests": len(results), "in_flight": w.in_flight, "max_tokens": w.max_tokens,
                           "wall_s": round(wall, 3), "output_tokens": out_tokens,
                           "tok_s": round(out_tokens / wall, 1) if wall > 0 else 0.0, "errors": len(errors),
                           "first_error": errors[0] if errors else None, "ttft_ms": [round(t, 2) for t in ttft]}
    if ttft:
        fig.update(ttft_p50_ms=round(statistics.median(ttft), 2), ttft_p90_ms=round(_pct(ttft, 0.9), 2),
                   ttft_p99_ms=round(_pct(ttft, 0.99), 2), ttft_first_ms=round(ttft[0], 2))
    return fig


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def run_all(runner: ChatRunner, workloads: list[Workload], label: str,
                  log: Callable[[str], None]) -> dict[str, Any]:
    from tqdm import tqdm

    figures: dict[str, Any] = {}
    with tqdm(total=sum(len(w.chats) for w in workloads), desc=label, unit="req", file=sys.stderr,
              mininterval=1.0) as bar:
        for w in workloads:
            bar.set_postfix_str(w.key)
            figures[w.key] = fig = await run_workload(runner, w, bar)
            log(f"{label} {w.key}: {_brief(fig)}")
    return figures


def _brief(fig: dict[str, Any]) -> str:
    return (f"{fig['requests']} req, {fig['tok_s']} tok/s, TTFT p50 {fig.get('ttft_p50_ms')} p99 "
            f"{fig.get('ttft_p99_ms')} first {fig.get('ttft_first_ms')} ms, errors {fig['errors']}"
            + (f" ({fig['first_error']})" if fig["errors"] else ""))


# ---------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    base_url: str
    ready_s: float
    log_path: Path


def start_server(model_dir: Path, device: str, serve_args: Sequence[str], log_path: Path,
                 timeout_s: float = 1800.0) -> Server:
    """`glmv serve` in its own process; returns once /health answers 200 (ready_s: from spawning to that)."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "glmv.cli.main", "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
           "--device", device, "--served-model-name", SERVED_NAME, "--disable-uvicorn-access-log", *serve_args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    logfile = open(log_path, "w")  # noqa: SIM115 - the server writes it until stop_server
    logfile.write(" ".join(cmd) + "\n")
    logfile.flush()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=logfile, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"glmv serve exited with {proc.returncode} before it was ready; see {log_path}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return Server(proc, base, time.perf_counter() - t0, log_path)
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"glmv serve was not ready after {timeout_s:.0f} s; see {log_path}")


def stop_server(server: Server) -> None:
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


async def first_after_ready(target: ChatTarget, builder: Any, plan: ServedPlan, seed: int) -> dict[str, float]:
    """TTFT (ms) of the very first requests a fresh server gets: a text chat, then a picture chat. The client is
    warmed first with a `/health` on the same connection pool: its own first request (connecting, and the lazy
    imports of httpx's async stack, ~10 ms on the CPU here) is not the server's."""
    await target.client.get(target.url.removesuffix("/v1/chat/completions") + "/health")
    text = await target.run_chat(text_chat(builder, plan.text_len, seed), 1)
    image = await target.run_chat(image_chat(seed, plan.image_size), 1)
    return {"text_ms": round(1e3 * (text.ttft_s or float("nan")), 2),
            "image_ms": round(1e3 * (image.ttft_s or float("nan")), 2),
            "errors": [e for e in (text.error, image.error) if e]}


async def _drive(server: Server, builder: Any, plan: ServedPlan, seed: int, workloads: bool,
                 log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    target = ChatTarget(server.base_url, SERVED_NAME)
    try:
        first = await first_after_ready(target, builder, plan, seed)
        log(f"http: first requests after ready: {first}")
        figures = None
        if workloads:
            figures = await run_all(HttpRunner(target), build_workloads(builder, plan, 2), "http", log)
        return first, figures
    finally:
        await target.close()


def bench_http(model_dir: Path, builder: Any, plan: ServedPlan, device: str, serve_args: Sequence[str],
               starts: int, out_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Start `glmv serve` `starts` times (the later starts find the on-disk caches the first one wrote), time each
    start to ready and its first requests; run every workload on the last one."""
    res: dict[str, Any] = {"serve_args": list(serve_args), "starts": []}
    for i in range(starts):
        log(f"http: starting glmv serve ({i + 1} of {starts}): {' '.join(serve_args)}")
        server = start_server(model_dir, device, serve_args, out_dir / f"gpu_bench_serve_{i + 1}.log")
        log(f"http: ready after {server.ready_s:.1f} s")
        try:
            first, figures = asyncio.run(_drive(server, builder, plan, 77_000 + i, i == starts - 1, log))
        finally:
            stop_server(server)
        res["starts"].append({"ready_s": round(server.ready_s, 2), "first": first})
        if figures is not None:
            res["figures"] = figures
    return res


# ---------------------------------------------------------------- the table
def rows(plan: ServedPlan) -> list[tuple[str, str, str, bool, float | None]]:
    """(label, figure, field, higher is better, the issue's goal for the HTTP figure: full plan only)."""
    full = plan == ServedPlan()
    px, t = f"{plan.image_size}px", plan.text_len
    out: list[tuple[str, str, str, bool, float | None]] = [
        (f"TTFT idle, {t}-token text, p50 of {plan.text_idle} (ms)", "ttft_text_idle", "ttft_p50_ms", False, 30.0),
        (f"TTFT idle, {t}-token text, p99 (ms)", "ttft_text_idle", "ttft_p99_ms", False, 60.0),
        (f"TTFT idle, one {px} image, p50 of {plan.image_idle} (ms)", "ttft_image_idle", "ttft_p50_ms", False, 65.0),
        (f"TTFT idle, one {px} image, the first (ms)", "ttft_image_idle", "ttft_first_ms", False, 150.0),
        (f"TTFT p50, {plan.text_burst} x {t}-token text together (ms)", "ttft_text_burst", "ttft_p50_ms", False,
         300.0),
        (f"TTFT p50, {plan.image_burst} distinct {px} image chats together (ms)", "ttft_image_burst",
         "ttft_p50_ms", False, 1000.0),
    ]
    for n in plan.levels:
        out.append((f"{n} x {plan.level_in}/{plan.level_out}, end to end (out tok/s)", f"e2e_{n}", "tok_s", True,
                    None))
    out += [
        (f"saturation {plan.saturation_in}/{plan.saturation_out}, {plan.saturation_in_flight} in flight (out tok/s)",
         "saturation", "tok_s", True, 16000.0),
        ("saturation, TTFT p50 (ms)", "saturation", "ttft_p50_ms", False, None),
    ]
    return out if full else [(label, key, f, h, None) for label, key, f, h, _ in out]


def table(engine: dict[str, Any], http: dict[str, Any], plan: ServedPlan) -> list[str]:
    """The HTTP figures beside the engine's, with HTTP/engine ratios (tok/s goal >= 0.97) and the issue's goals
    (meant for the full plan on the H200)."""
    e_fig, h_fig = engine.get("figures", {}), http.get("figures", {})
    lines = [f"{'served figure':58s} {'engine':>10s} {'HTTP':>10s} {'HTTP/eng':>9s} {'goal':>8s} {'met':>4s}"]
    for label, key, field_, higher, goal in rows(plan):
        ev, hv = e_fig.get(key, {}).get(field_), h_fig.get(key, {}).get(field_)
        ratio = hv / ev if ev and hv else None
        if key.startswith("e2e_"):
            goal_s, met = "0.97x", "" if ratio is None else ("yes" if ratio >= 0.97 else "no")
        else:
            goal_s = f"{goal:8.0f}" if goal else "-"
            met = "" if hv is None or goal is None else ("yes" if (hv >= goal if higher else hv <= goal) else "no")
        lines.append(f"{label:58s} {_f(ev)} {_f(hv)} {(f'{ratio:8.2f}x' if ratio else '        -')} {goal_s:>8s} "
                     f"{met:>4s}")
    for i, start in enumerate(http.get("starts", [])):
        steady_text = h_fig.get("ttft_text_idle", {}).get("ttft_p50_ms")
        steady_image = h_fig.get("ttft_image_idle", {}).get("ttft_p50_ms")
        first = start["first"]
        rt = first["text_ms"] / steady_text if steady_text else None
        ri = first["image_ms"] / steady_image if steady_image else None
        lines.append(f"start {i + 1}: serve to ready {start['ready_s']:.1f} s (goal, second start: <= 20 s); first "
                     f"text TTFT {first['text_ms']:.1f} ms" + (f" = {rt:.2f}x steady" if rt else "")
                     + f", first image {first['image_ms']:.1f} ms" + (f" = {ri:.2f}x steady" if ri else "")
                     + " (goal <= 1.2x)")
    return lines


def _f(x: Any) -> str:
    return f"{x:10.1f}" if isinstance(x, (int, float)) else f"{'-':>10s}"
