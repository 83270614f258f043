"""AsyncEngine: glmv's engine behind the EngineClient interface, stepping on a background thread.

The loop thread owns the LLMEngine: it applies queued adds and aborts between steps, runs steps while there is work
(sleeping on an event otherwise), and hands each step's RequestOutput deltas to the per-request asyncio queues with
one call into the event loop per step. The model's tensor work runs outside the GIL, so the server's event loop stays
responsive. `abort()` returns once the request's blocks are free (at most one step later); a stream whose consumer
goes away aborts its request the same way.

`run_loop()` runs the same loop in the calling thread instead (`glmv serve` on the CPU calls it from the main thread
and serves HTTP from another): GNU OpenMP, which PyTorch's CPU ops use, counts the main thread among its busy
threads, so a second thread running a team as wide as the machine gets "oversubscribed" short spin-waits and pays a
futex wake-up for every parallel op (measured on 2 cores: 77 instead of 97-118 tok/s for one stream).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

from glmv.config import EngineConfig, ModelConfig
from glmv.engine.client import EngineOverloadedError
from glmv.engine.engine import LLMEngine
from glmv.engine.gc_policy import GcPolicy
from glmv.engine.outputs import RequestOutput
from glmv.inputs.prompt import Prompt
from glmv.sampling import SamplingParams


@dataclass(frozen=True)
class AddRequest:
    """From an event loop to the engine thread: queue this request."""

    request_id: str
    prompt: Prompt
    params: SamplingParams


@dataclass(frozen=True)
class AbortRequest:
    """From an event loop to the engine thread: stop this request and free its blocks (then resolve `done`)."""

    request_id: str
    done: asyncio.Future | None = None


EngineCommand = AddRequest | AbortRequest

log = logging.getLogger("glmv.async_engine")


class EngineDeadError(RuntimeError):
    """The engine loop failed; requests in flight end with this error."""


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class AsyncEngine:
    computes_logprobs = True
    computes_prompt_logprobs = True  # the prefill scores the prompt (glmv/engine/prompt_logprobs.py)

    def __init__(self, model_config: ModelConfig, engine_config: EngineConfig, tokenizer: Any,
                 engine: LLMEngine | None = None):
        self.model_config = model_config
        self.config = engine_config
        self.engine = engine or LLMEngine(model_config, engine_config, tokenizer)
        self.max_model_len = self.engine.max_model_len
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._pending_adds = 0
        self._stats: dict[str, float] = self.engine.stats()
        self._start_lock = threading.Lock()
        self._loop_done = threading.Event()
        self._external_loop = False
        self.gc_policy = GcPolicy(engine_config.gc_mode)  # when Python's collector runs while the loop serves
        import torch

        # OpenMP's thread count is per thread: a new thread would not inherit the caller's torch.set_num_threads
        # (measured on 2 cores: the engine thread ran CPU matmuls on one core, 44 instead of 61 tok/s).
        self._intra_op_threads = torch.get_num_threads()
        # Requests added to the engine that have not had a token yet (loop thread only): no collection while any
        # waits (glmv/engine/gc_policy.py).
        self._awaiting_first: set[str] = set()

    # ---- lifecycle ----
    async def start(self) -> None:
        self._ensure_started()

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._external_loop = False
                self._loop_done.clear()
                self._thread = threading.Thread(target=self._loop, name="glmv-engine", daemon=True)
                self._thread.start()

    def run_loop(self, on_ready: Callable[[], None] | None = None) -> None:
        """Run the engine loop in the calling thread until `shutdown()` or `stop_loop()`. `on_ready` is called once
        the loop is claimed (so requests that arrive from then on wait for this loop rather than start a thread)."""
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                raise RuntimeError("The engine loop is already running in another thread.")
            self._thread = threading.current_thread()
            self._external_loop = True
            self._stopping = False
            self._loop_done.clear()
        try:
            if on_ready is not None:
                on_ready()
            self._loop()
        finally:
            self._loop_done.set()

    def stop_loop(self) -> None:
        """Ask the loop to end requests in flight and return (thread-safe, does not wait)."""
        self._stopping = True
        self._wake.set()

    async def shutdown(self) -> None:
        self.stop_loop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            if self._external_loop:  # the loop runs in a caller's thread (run_loop): wait for it, do not join it
                await asyncio.to_thread(self._loop_done.wait, 30)
            else:
                await asyncio.to_thread(thread.join, 30)
        self._thread = None

    def stats(self) -> dict[str, float]:
        stats = dict(self._stats)
        stats["waiting"] = stats.get("waiting", 0.0) + self._pending_adds
        return stats

    # ---- requests ----
    def stage_prompt(self, prompt: Prompt) -> Prompt:
        """The prompt with its pixels already in the model dtype (pinned on CUDA). Doors call this where they build
        prompts (an I/O worker thread), so the conversion (~1-2 ms for a 1008x1008 picture) stays off the engine
        loop, which every running request waits on (the runner would convert unstaged pixels itself)."""
        if prompt.mm.empty:
            return prompt
        runner = self.engine.runner
        return replace(prompt, mm=prompt.mm.staged(runner.dtype, pin_memory=runner.device.type == "cuda"))

    async def generate(self, prompt: Prompt, params: SamplingParams, request_id: str) -> AsyncIterator[RequestOutput]:
        self.engine.check_request(prompt, params)  # PromptTooLongError / ValueError before anything is queued
        if self.stats()["waiting"] >= self.config.max_waiting_requests:
            raise EngineOverloadedError(
                f"{int(self.stats()['waiting'])} requests are waiting (limit {self.config.max_waiting_requests}); "
                "retry later."
            )
        self._ensure_started()
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        if request_id in self._streams:
            raise ValueError(f"Request id {request_id!r} is already in use.")
        self._streams[request_id] = stream
        self._pending_adds += 1
        self._send(AddRequest(request_id, prompt, params))
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._send(AbortRequest(request_id))

    async def abort(self, request_id: str) -> None:
        """Abort a request and wait until its blocks are free."""
        if self._thread is None or not self._thread.is_alive():
            return
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        self._send(AbortRequest(request_id, done))
        await done

    def _send(self, command: EngineCommand) -> None:
        self._commands.put(command)
        self._wake.set()

    # ---- the loop thread ----
    def _deliver(self, items: list[tuple[str, object]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, object]]] = {}
        for request_id, item in items:
            if request_id in self._awaiting_first and _answers(item):
                self._awaiting_first.discard(request_id)
            stream = self._streams.get(request_id)
            if stream is not None:
                by_loop.setdefault(stream.loop, []).append((stream.queue, item))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, batch)
            except RuntimeError:  # the consumer's loop is closed
                pass

    def _apply_commands(self) -> None:
        out: list[tuple[str, object]] = []
        resolved: list[asyncio.Future] = []
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if isinstance(command, AddRequest):
                self._pending_adds -= 1
                try:
                    self.engine.add_request(command.request_id, command.prompt, command.params)
                    self._awaiting_first.add(command.request_id)
                except Exception as exc:  # noqa: BLE001 - the request's stream raises it
                    out.append((command.request_id, exc))
            else:
                self._awaiting_first.discard(command.request_id)
                final = self.engine.abort_request(command.request_id)
                if final is not None:
                    out.append((command.request_id, final))
                if command.done is not None:
                    resolved.append(command.done)
        if out:
            self._deliver(out)
        for fut in resolved:
            try:
                fut.get_loop().call_soon_threadsafe(_resolve, fut)
            except RuntimeError:
                pass

    def _loop(self) -> None:
        import torch

        torch.set_grad_enabled(False)
        torch.set_num_threads(self._intra_op_threads)
        # The loop releases the GIL while the device computes; when the step's tokens are ready it must get the GIL
        # back from the server's event-loop thread quickly. Python's default hand-over interval is 5 ms (most of a
        # decode step), so ask for 1 ms.
        if sys.getswitchinterval() > 0.001:
            sys.setswitchinterval(0.001)
        self.gc_policy.start()
        self.engine.on_launched = self._collect_if_due
        try:
            self._serve()
        finally:
            self.engine.on_launched = None
            self.gc_policy.stop()

    def _serve(self) -> None:
        while not self._stopping:
            self._apply_commands()
            if not self.engine.has_unfinished_requests():
                self._stats = self.engine.stats()
                self._awaiting_first.clear()
                if self._commands.empty():  # a request that just arrived goes first
                    self.gc_policy.collect_if_due()  # garbage made while idle (HTTP handling) is collected too
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # noqa: BLE001 - fail the requests in flight, keep serving new ones
                log.exception("engine step failed")
                error = EngineDeadError(f"The engine failed while running this request: {type(exc).__name__}: {exc}")
                self._deliver([(rid, error) for rid in self.engine.fail_all()])
                continue
            self._stats = self.engine.stats()
            if outputs:
                self._deliver([(o.request_id, o) for o in outputs])
        # shutting down: end what is left
        self._apply_commands()
        error = EngineDeadError("The engine shut down before this request finished.")
        self._deliver([(rid, error) for rid in self.engine.fail_all()])

    def _collect_if_due(self) -> None:
        """Called by the engine right after it launched a step."""
        self.gc_policy.collect_if_due(waiting=bool(self._awaiting_first) or not self._commands.empty())


def _answers(item: object) -> bool:
    """Whether a delivered item ends a request's wait for its first token (a token, a finish, an error)."""
    if isinstance(item, RequestOutput):
        return item.finished or any(c.num_tokens for c in item.outputs)
    return True


def _put_all(batch: list[tuple[asyncio.Queue, object]]) -> None:
    for q, item in batch:
        q.put_nowait(item)


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
