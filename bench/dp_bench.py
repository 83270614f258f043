"""dp_bench: `glmv serve --data-parallel-size 2` against one replica, same workload in the same run, then the kill test.

Goal (issue 16, on nvidia-h200-x2): output tok/s at saturation with 2 replicas >= 1.9x one replica. Both servers are
real `glmv serve` processes driven over HTTP by bench/loadgen.py (streaming /v1/completions, token-id prompts, greedy,
ignore_eos), so both pay the same HTTP and detokenization costs:
1. one replica (`CUDA_VISIBLE_DEVICES` = the first GPU), a closed loop of `--concurrency` requests over `--requests`
   random prompts;
2. `--data-parallel-size 2` on the first two GPUs, the same prompts and concurrency;
3. the kill test on the second server: under the same load with 4x longer outputs, SIGKILL replica 0 (its pid from
   /health); the failed requests must be replica 0's (its failed-requests gauge) and at most those it had in flight,
   all others must finish at full length; times /health going degraded and back, and loads both again.

    python bench/dp_bench.py --model-dir /tmp/glmv-full     # builds the random-weight 9B folder there if missing
    python bench/dp_bench.py --device cpu --preset tiny --requests 24 --concurrency 8 --output-len 32  # CPU smoke

Results go to $OUT/dp_bench.json (or --json) and a summary line to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import CompletionsTarget, run_level  # noqa: E402


def log(msg: str) -> None:
    print(f"[dp_bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_dir: Path, device: str, replicas: int, gpus: list[str], extra: list[str]) -> tuple:
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if device != "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[:replicas])
    cmd = [sys.executable, "-m", "glmv.cli.main", "serve", str(model_dir), "--port", str(port), "--device", device,
           "--data-parallel-size", str(replicas), "--disable-log-requests", "--disable-uvicorn-access-log", *extra]
    log(" ".join(cmd))
    logfile = open(Path(os.environ.get("OUT", "/tmp")) / f"dp_bench_serve_{replicas}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=logfile, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"glmv serve exited with {proc.returncode}; see {logfile.name}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise SystemExit("glmv serve did not start in 30 min")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()


def prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """Random ids away from both ends of the vocabulary (the special tokens sit at the top)."""
    rng = np.random.default_rng(seed)
    margin = min(1000, vocab // 10)
    return [rng.integers(margin, vocab - margin, size=length).tolist() for _ in range(n)]


async def saturate(base: str, model: str, work: list[list[int]], concurrency: int, output_len: int) -> dict:
    target = CompletionsTarget(base, model)
    try:
        await run_level(target, work[: concurrency], concurrency, 8)  # warm-up: graphs, caches, allocator
        level = await run_level(target, work, concurrency, output_len)
    finally:
        await target.close()
    return {"tok_per_s": level.tok_per_s, "wall_s": level.wall_s, "requests": level.num_requests,
            "errors": level.errors, "first_error": level.first_error, "ttft_median_ms": level.ttft_median_ms}


def replica_gauge(base: str, name: str) -> dict[str, float]:
    text = httpx.get(base + "/metrics", timeout=5).text
    return {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{")}


async def kill_test(base: str, model: str, work: list[list[int]], concurrency: int, output_len: int) -> dict:
    """SIGKILL replica 0 while `concurrency` long requests run on both replicas: only replica 0's may fail (each
    with the replica's error), replica 1's must all finish at full length; then time the restart and load both
    again."""
    victim_pid = httpx.get(base + "/health", timeout=5).json()["replicas"][0]["pid"]
    failed_before = replica_gauge(base, "glmv_replica_failed_requests").get("0", 0.0)
    target = CompletionsTarget(base, model)
    tasks = [asyncio.create_task(target.run_one(ids, output_len)) for ids in work[:concurrency]]
    in_flight: dict[str, float] = {}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # both replicas busy, and every request admitted
        in_flight = replica_gauge(base, "glmv_replica_requests_in_flight")
        if min(in_flight.values(), default=0) > 0 and sum(in_flight.values()) >= concurrency:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # well into decoding
    in_flight = replica_gauge(base, "glmv_replica_requests_in_flight")
    killed_at = time.monotonic()
    os.kill(victim_pid, signal.SIGKILL)
    degraded_s = None
    while time.monotonic() - killed_at < 30:
        if httpx.get(base + "/health", timeout=5).json()["status"] == "degraded":
            degraded_s = time.monotonic() - killed_at
            break
        await asyncio.sleep(0.02)
    results = await asyncio.gather(*tasks)
    failed = [r for r in results if r.error]
    restart_s = None
    while time.monotonic() - killed_at < 1800:
        if httpx.get(base + "/health", timeout=5).json()["status"] == "ok":
            restart_s = time.monotonic() - killed_at
            break
        await asyncio.sleep(0.5)
    after = await run_level(target, work[:concurrency], concurrency, 16)
    await target.close()
    failed_on_victim = replica_gauge(base, "glmv_replica_failed_requests").get("0", 0.0) - failed_before
    return {"in_flight_at_kill": in_flight, "failed": len(failed), "completed": len(results) - len(failed),
            "failed_counted_on_replica0": failed_on_victim,
            "only_replica0_failed": len(failed) == failed_on_victim <= in_flight.get("0", 0.0),
            "completed_full_length": all(r.output_tokens == output_len for r in results if not r.error),
            "degraded_after_s": degraded_s, "restart_s": restart_s, "errors_after_restart": after.errors,
            "first_failure": failed[0].error if failed else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", default="/tmp/glmv-full", help="model folder (built with random weights if missing)")
    ap.add_argument("--preset", default="full", help="glmv.models.tiny preset to build when the folder is missing")
    ap.add_argument("--device", default="cuda", help="cuda (one replica per GPU) or cpu (smoke runs)")
    ap.add_argument("--requests", type=int, default=1024)
    ap.add_argument("--concurrency", type=int, default=256, help="requests in flight (saturation for 2 replicas)")
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=128, help="tokens per request (the kill test runs 4x as long)")
    ap.add_argument("--serve-args", default="--max-num-seqs 128", help="more `glmv serve` flags, for both servers")
    ap.add_argument("--json", default=None, help="where to write results (default $OUT/dp_bench.json)")
    args = ap.parse_args()

    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        from glmv.models.tiny import make_tiny_model

        log(f"building the {args.preset} preset in {model_dir}")
        make_tiny_model(model_dir, args.preset, device="cuda" if args.device != "cpu" else "cpu")
    vocab = json.loads((model_dir / "config.json").read_text()).get("text_config", {}).get("vocab_size", 151552)
    gpus = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "0,1").split(",") if d]
    if args.device != "cpu" and len(gpus) < 2:
        raise SystemExit("dp_bench needs two GPUs (CUDA_VISIBLE_DEVICES names fewer)")
    work = prompts(args.requests, args.input_len, vocab, seed=16)
    extra = args.serve_args.split()
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args)}
    for replicas in (1, 2):
        proc, base = start_server(model_dir, args.device, replicas, gpus, extra)
        try:
            model = httpx.get(base + "/v1/models", timeout=5).json()["data"][0]["id"]
            res[f"replicas_{replicas}"] = asyncio.run(saturate(base, model, work, args.concurrency, args.output_len))
            log(f"{replicas} replica(s): {res[f'replicas_{replicas}']}")
            if replicas == 2:
                res["kill_test"] = asyncio.run(kill_test(base, model, work, args.concurrency, 4 * args.output_len))
                log(f"kill test: {res['kill_test']}")
        finally:
            stop_server(proc)
    res["speedup"] = res["replicas_2"]["tok_per_s"] / res["replicas_1"]["tok_per_s"]
    out = Path(args.json or Path(os.environ.get("OUT", "/tmp")) / "dp_bench.json")
    out.write_text(json.dumps(res, indent=2))
    k = res["kill_test"]
    print(f"1 replica {res['replicas_1']['tok_per_s']:.0f} tok/s, 2 replicas {res['replicas_2']['tok_per_s']:.0f} "
          f"tok/s: {res['speedup']:.2f}x (goal >= 1.9x); kill: {k['failed']} failed, in flight {k['in_flight_at_kill']}, "
          f"only replica 0's: {k['only_replica0_failed']}, degraded after {k['degraded_after_s']} s, "
          f"back after {k['restart_s']} s, {k['errors_after_restart']} errors after")


if __name__ == "__main__":
    main()
