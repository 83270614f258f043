"""DataParallelEngine: N replicas of glmv's engine, one process each, behind one EngineClient (`--data-parallel-size`).

A 9B model fits one GPU, so more GPUs on one host means more replicas, not a split model. The server keeps one
copy of everything user-facing (HTTP, inputs, reasoning split); each replica process runs an AsyncEngine on its
own GPU (or CPU share) and gets prompts over a socket (worker.py, wire.py). This class:
- routes each request by prefix affinity, then by requests in flight (router.py), so a conversation's next turn
  lands on the replica whose prefix cache holds it;
- fails only a dead replica's own requests, each with ReplicaFailedError (503 with Retry-After and a message that
  says what happened), restarts the replica (with backoff while it keeps failing), and keeps routing to the others;
- reports /health "degraded" while a replica is down and per-replica gauges for /metrics (ReplicatedEngine);
- on shutdown stops taking requests, waits for those in flight (at most `drain_timeout_s`), then stops every replica.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from glmv.backends.replicas.replica import Replica, ReplicaLaunch, ReplicaStartError, ReplicaState
from glmv.backends.replicas.router import PrefixRouter
from glmv.backends.replicas.wire import engine_config_to_wire, output_from_wire, params_to_wire, prompt_to_wire
from glmv.config import EngineConfig, ModelConfig
from glmv.engine.client import (
    EngineHealth,
    EngineOverloadedError,
    PromptTooLongError,
    ReplicaFailedError,
    ReplicaHealth,
)
from glmv.engine.outputs import RequestOutput
from glmv.inputs.prompt import Prompt
from glmv.sampling import SamplingParams

log = logging.getLogger("glmv.replicas")

MAX_RESTART_DELAY_S = 30.0


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    replica: int
    prompt_token_ids: list[int]


@dataclass
class _Counters:
    in_flight: int = 0
    routed: int = 0
    prefix_routed: int = 0
    failed: int = 0  # requests that ended because the replica died
    last_exit: str = field(default="")


def plan_replicas(model_config: ModelConfig, engine_config: EngineConfig, *, visible_gpus: list[str],
                  cpu_count: int, startup_timeout_s: float, drain_timeout_s: float) -> list[ReplicaLaunch]:
    """One launch per replica: GPU i of the visible ones on CUDA, an equal share of the cores on a CPU host."""
    n = engine_config.data_parallel_size
    if n < 2:
        raise ValueError(f"a data-parallel engine needs at least 2 replicas, got {n}")
    wire = engine_config_to_wire(engine_config)
    if engine_config.resolved_device == "cpu":
        threads = max(1, cpu_count // n)
        return [ReplicaLaunch(i, str(model_config.path), wire | {"device": "cpu"}, None, threads, startup_timeout_s,
                              drain_timeout_s) for i in range(n)]
    if len(visible_gpus) < n:
        raise ValueError(f"--data-parallel-size {n} runs one replica per GPU, but this machine shows "
                         f"{len(visible_gpus)} GPU(s). Lower --data-parallel-size or make more GPUs visible "
                         "(CUDA_VISIBLE_DEVICES).")
    return [ReplicaLaunch(i, str(model_config.path), wire | {"device": "cuda"}, visible_gpus[i], max(1, cpu_count // n),
                          startup_timeout_s, drain_timeout_s) for i in range(n)]


class DataParallelEngine:
    """EngineClient over N replica processes. Construction starts them all and returns once every model is loaded."""

    computes_logprobs = True

    def stage_prompt(self, prompt: Prompt) -> Prompt:
        """Nothing to stage here: each replica stages the pixels it receives, off its own engine loop."""
        return prompt

    def __init__(self, launches: list[ReplicaLaunch], block_size: int, drain_timeout_s: float = 30.0):
        self.drain_timeout_s = drain_timeout_s
        self.replicas = [Replica(launch, self._on_message, self._on_exit) for launch in launches]
        self.router = PrefixRouter(len(self.replicas), block_size)
        self._counters = [_Counters() for _ in self.replicas]
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()  # streams, counters and the router: the event loop and reader threads share them
        self._closing = False
        self._start_all()
        self.max_model_len = min(r.max_model_len for r in self.replicas)

    def _start_all(self) -> None:
        with ThreadPoolExecutor(len(self.replicas), thread_name_prefix="glmv-replica-start") as pool:
            futures = [pool.submit(r.start) for r in self.replicas]
            errors = [f.exception() for f in futures]
        failed = [e for e in errors if e is not None]
        if failed:
            for r in self.replicas:
                r.stop(timeout_s=5)
            raise failed[0]
        log.info("%d replicas up (pids %s)", len(self.replicas), ", ".join(str(r.pid) for r in self.replicas))

    # ---- EngineClient ----
    async def start(self) -> None:
        return None

    async def generate(self, prompt: Prompt, params: SamplingParams, request_id: str) -> AsyncIterator[RequestOutput]:
        if self._closing:
            raise EngineOverloadedError("The server is shutting down; retry on another server or after it restarts.")
        msg = {"type": "generate", "id": request_id, "prompt": prompt_to_wire(prompt), "params": params_to_wire(params)}
        unreachable: set[int] = set()
        stream = self._admit(prompt, request_id, unreachable)
        while True:
            try:
                if prompt.mm.empty:
                    self.replicas[stream.replica].send(msg)
                else:  # pixels can be megabytes: keep the event loop free while they are written
                    await asyncio.to_thread(self.replicas[stream.replica].send, msg)
                break
            except OSError as exc:
                # The replica died and its exit is not handled yet; nothing ran there, so another replica takes it.
                log.warning("glmv replica %d unreachable (%s); routing %s elsewhere", stream.replica, exc, request_id)
                self._release(request_id, stream)
                unreachable.add(stream.replica)
                stream = self._admit(prompt, request_id, unreachable)
        index = stream.replica
        finished = False
        try:
            while True:
                msg = await stream.queue.get()
                kind = msg["type"]
                if kind == "output":
                    out = output_from_wire(msg["output"], stream.prompt_token_ids)
                    finished = out.finished
                    yield out
                    if finished:
                        return
                elif kind == "dead":
                    finished = True
                    raise self._died_error(index, msg["reason"])
                else:
                    finished = True
                    raise _request_error(msg)
        finally:
            self._release(request_id, stream)
            if not finished:
                self._send_quietly(index, {"type": "abort", "id": request_id})

    def _admit(self, prompt: Prompt, request_id: str, unreachable: set[int]) -> _Stream:
        """Route the request and count it in flight there."""
        with self._lock:
            if request_id in self._streams:
                raise ValueError(f"Request id {request_id!r} is already in use.")
            try:
                choice = self.router.choose(prompt, [c.in_flight for c in self._counters],
                                            [r.up and r.index not in unreachable for r in self.replicas])
            except LookupError:
                raise ReplicaFailedError("No engine replica is serving right now (they are restarting); retry "
                                         "shortly.") from None
            counters = self._counters[choice.replica]
            stream = _Stream(asyncio.get_running_loop(), asyncio.Queue(), choice.replica, list(prompt.token_ids))
            self._streams[request_id] = stream
            counters.in_flight += 1
            counters.routed += 1
            counters.prefix_routed += choice.prefix_blocks > 0
            return stream

    def _release(self, request_id: str, stream: _Stream) -> None:
        with self._lock:
            if self._streams.get(request_id) is stream:
                del self._streams[request_id]
                self._counters[stream.replica].in_flight -= 1

    async def abort(self, request_id: str) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            self._send_quietly(stream.replica, {"type": "abort", "id": request_id})

    def stats(self) -> dict[str, float]:
        """Totals over the replicas: counts summed, KV usage averaged over those up, prefix hits over all lookups."""
        per = [r.stats for r in self.replicas if r.up and r.stats]
        total: dict[str, float] = {}
        for stats in per:
            for key, value in stats.items():
                if key != "time":
                    total[key] = total.get(key, 0.0) + value
        total["kv_usage"] = total.get("kv_usage", 0.0) / len(per) if per else 0.0
        queries = total.get("prefix_queries", 0.0)
        total["prefix_cache_hit_rate"] = total.get("prefix_hits", 0.0) / queries if queries else 0.0
        total.setdefault("running", 0.0)
        total.setdefault("waiting", 0.0)
        total["replicas_up"] = float(sum(r.up for r in self.replicas))
        return total

    def replica_stats(self) -> list[dict[str, float]]:
        out = []
        for r, c in zip(self.replicas, self._counters, strict=True):
            stats = {k: v for k, v in r.stats.items() if k != "time"} if r.up else {}
            stats.update(up=float(r.up), restarts=float(r.restarts), in_flight=float(c.in_flight),
                         routed_total=float(c.routed), prefix_routed_total=float(c.prefix_routed),
                         failed_requests_total=float(c.failed))
            out.append(stats)
        return out

    def health(self) -> EngineHealth:
        up = sum(r.up for r in self.replicas)
        status = "ok" if up == len(self.replicas) else "degraded" if up else "down"
        return EngineHealth(status, tuple(ReplicaHealth(r.index, r.state.value, r.pid, r.restarts)
                                          for r in self.replicas))

    async def shutdown(self) -> None:
        """Take no new requests, let those in flight finish (at most drain_timeout_s), then stop every replica."""
        self._closing = True
        deadline = time.monotonic() + self.drain_timeout_s
        while any(c.in_flight for c in self._counters) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = sum(c.in_flight for c in self._counters)
        if left:
            log.warning("%d requests still running after %.0f s of draining; stopping the replicas", left,
                        self.drain_timeout_s)
        await asyncio.gather(*(asyncio.to_thread(r.stop, 10.0) for r in self.replicas))

    # ---- replica events (reader threads) ----
    def _on_message(self, index: int, msg: dict[str, Any]) -> None:
        if msg.get("type") == "stats":
            self.replicas[index].stats = msg["stats"]
            return
        stream = self._streams.get(msg.get("id", ""))
        if stream is not None:
            _put(stream, msg)

    def _on_exit(self, index: int, reason: str) -> None:
        replica = self.replicas[index]
        if replica.state is ReplicaState.STOPPED or self._closing:
            replica.state = ReplicaState.STOPPED
            return
        replica.state = ReplicaState.DOWN
        with self._lock:
            self.router.forget_replica(index)
            lost = [s for s in self._streams.values() if s.replica == index]
            self._counters[index].failed += len(lost)
            self._counters[index].last_exit = reason
        log.error("glmv replica %d (pid %s) ended: %s; failing its %d request(s) and restarting it", index,
                  replica.pid, reason, len(lost))
        for stream in lost:
            _put(stream, {"type": "dead", "reason": reason})
        threading.Thread(target=self._restart, args=(index,), name=f"glmv-replica-{index}-restart",
                         daemon=True).start()

    def _restart(self, index: int) -> None:
        replica = self.replicas[index]
        delay = 0.5
        while not self._closing:
            try:
                replica.start()
            except ReplicaStartError as exc:
                replica.state = ReplicaState.DOWN
                log.error("glmv replica %d did not restart: %s; trying again in %.0f s", index, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, MAX_RESTART_DELAY_S)
                continue
            replica.restarts += 1
            log.info("glmv replica %d restarted (pid %s)", index, replica.pid)
            return

    def _died_error(self, index: int, reason: str) -> ReplicaFailedError:
        return ReplicaFailedError(f"Engine replica {index} stopped while running this request ({reason.rstrip('.')}). "
                                  "It is being restarted and the other replicas keep serving; retry the request.")

    def _send_quietly(self, index: int, msg: dict[str, Any]) -> None:
        try:
            self.replicas[index].send(msg)
        except OSError:
            pass


def _put(stream: _Stream, msg: dict[str, Any]) -> None:
    try:
        stream.loop.call_soon_threadsafe(stream.queue.put_nowait, msg)
    except RuntimeError:  # the consumer's loop is closed
        pass


def _request_error(msg: dict[str, Any]) -> Exception:
    """A replica's error message -> the exception the doors map (400 too long / 503 overloaded / 400 / 500)."""
    kind = msg.get("kind")
    if kind == "too_long":
        return PromptTooLongError(msg["prompt_tokens"], msg["max_model_len"], msg.get("max_tokens"))
    if kind == "overloaded":
        return EngineOverloadedError(msg["message"])
    if kind == "invalid":
        return ValueError(msg["message"])
    return RuntimeError(f"The engine replica failed on this request: {msg.get('message')}")


def build_data_parallel_engine(model_config: ModelConfig, engine_config: EngineConfig,
                               startup_timeout_s: float = 1800.0, drain_timeout_s: float = 30.0) -> DataParallelEngine:
    """`--data-parallel-size N` with glmv's engine: N replicas on the GPUs this process sees, or on the CPU cores."""
    import os

    visible: list[str] = []
    if engine_config.resolved_device != "cpu":
        import torch

        named = os.environ.get("CUDA_VISIBLE_DEVICES")
        visible = [d.strip() for d in named.split(",") if d.strip()] if named else \
            [str(i) for i in range(torch.cuda.device_count())]
    launches = plan_replicas(model_config, engine_config, visible_gpus=visible, cpu_count=len(os.sched_getaffinity(0)),
                             startup_timeout_s=startup_timeout_s, drain_timeout_s=drain_timeout_s)
    return DataParallelEngine(launches, engine_config.block_size, drain_timeout_s)
