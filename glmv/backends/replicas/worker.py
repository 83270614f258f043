"""One engine replica: a process that runs glmv's AsyncEngine and answers the server over a local socket.

Started by glmv/backends/replicas/replica.py as `python -m glmv.backends.replicas.worker --socket PATH`, with
CUDA_VISIBLE_DEVICES naming its one GPU (or, on a CPU host, a torch thread count that is its share of the cores).
The engine loop runs in this process's main thread (GNU OpenMP's full spin-waits on the CPU, as `glmv serve` does)
and the socket is served from an asyncio loop beside it (glmv/engine/beside_loop.py). Messages: see wire.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from typing import Any

from glmv.backends.vllm_worker import Outbox, recv_msg, send_msg, serve_requests, start_inbox
from glmv.options import take_worker_token

STATS_INTERVAL_S = 0.2


def _error_message(request_id: str, exc: BaseException) -> dict[str, Any]:
    from glmv.engine.client import EngineOverloadedError, PromptTooLongError

    if isinstance(exc, PromptTooLongError):
        return {"type": "error", "id": request_id, "kind": "too_long", "message": str(exc),
                "prompt_tokens": exc.prompt_tokens, "max_model_len": exc.max_model_len, "max_tokens": exc.max_tokens}
    if isinstance(exc, EngineOverloadedError):
        return {"type": "error", "id": request_id, "kind": "overloaded", "message": str(exc)}
    if isinstance(exc, ValueError):
        return {"type": "error", "id": request_id, "kind": "invalid", "message": str(exc)}
    return {"type": "error", "id": request_id, "kind": "internal", "message": f"{type(exc).__name__}: {exc}"}


def _stats(engine: Any) -> dict[str, float]:
    """The engine's gauges plus the prefix cache's raw counts (the server sums those over replicas)."""
    stats = engine.stats()
    pool = engine.engine.pool.stats()
    stats["prefix_queries"] = float(pool.prefix_queries)
    stats["prefix_hits"] = float(pool.prefix_hits)
    return stats


async def serve(sock: socket.socket, outbox: Outbox, engine: Any, drain_timeout_s: float) -> None:
    """Answer the server until it says shutdown (then let what runs finish, at most `drain_timeout_s`) or the
    connection drops (then stop at once)."""
    from glmv.backends.replicas.wire import output_to_wire, params_from_wire, prompt_from_wire

    inbox = start_inbox(sock, "glmv-replica-inbox")
    tasks: dict[str, asyncio.Task] = {}

    async def run(msg: dict[str, Any]) -> None:
        rid = msg["id"]
        try:
            prompt = prompt_from_wire(msg["prompt"])
            if not prompt.mm.empty:  # pixels to the model dtype off the engine loop, as the server would
                prompt = await asyncio.to_thread(engine.stage_prompt, prompt)
            async for out in engine.generate(prompt, params_from_wire(msg["params"]), rid):
                outbox.put({"type": "output", "id": rid, "output": output_to_wire(out)})
        except Exception as exc:  # noqa: BLE001 - the request fails, the replica keeps serving
            outbox.put(_error_message(rid, exc))
        finally:
            tasks.pop(rid, None)

    async def report() -> None:
        while True:
            outbox.put({"type": "stats", "stats": _stats(engine)})
            await asyncio.sleep(STATS_INTERVAL_S)

    reporter = asyncio.create_task(report())
    try:
        drain = await serve_requests(inbox, tasks, run, engine.abort)
        if tasks and drain:
            await asyncio.wait(list(tasks.values()), timeout=drain_timeout_s)
    finally:
        reporter.cancel()
        for task in list(tasks.values()):
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


def main() -> int:
    parser = argparse.ArgumentParser(description="one glmv engine replica (started by glmv serve, not by hand)")
    parser.add_argument("--socket", required=True, help="the Unix socket the server listens on")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(args.socket)
    send_msg(sock, {"type": "hello", "token": take_worker_token()})
    message = recv_msg(sock)
    if message is None or message.get("type") != "config":
        return 2
    config = message["engine_args"]
    try:
        import torch
        from transformers import AutoTokenizer

        from glmv.backends.replicas.wire import engine_config_from_wire
        from glmv.config import ModelConfig
        from glmv.engine.async_engine import AsyncEngine
        from glmv.engine.beside_loop import run_beside_engine_loop

        torch.set_num_threads(int(config["torch_threads"]))
        engine_config = engine_config_from_wire(config["engine_config"])
        model_config = ModelConfig.from_dir(config["model_path"], engine_config.generation_config)
        tokenizer = AutoTokenizer.from_pretrained(config["model_path"])
        engine = AsyncEngine(model_config, engine_config, tokenizer)
    except Exception as exc:  # noqa: BLE001 - told to the server, which explains it to the user
        send_msg(sock, {"type": "fatal", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    send_msg(sock, {"type": "ready", "max_model_len": int(engine.max_model_len), "pid": os.getpid(),
                    "time": time.time()})
    outbox = Outbox(sock)
    try:
        run_beside_engine_loop(engine, lambda: serve(sock, outbox, engine, float(config["drain_timeout_s"])))
    except KeyboardInterrupt:  # Ctrl-C sent to this process by hand: end quietly
        pass
    finally:
        outbox.close()
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
