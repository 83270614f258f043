"""TrackedGeneration: one engine request as the HTTP side sees it (admission, errors, metrics, abort, its log line).

Routes format responses; this class owns the life of the engine request behind them, so that every route gets the
same guarantees: a full server answers 503 before any work, an error before the first token is a proper status
code, a request that ends early (client gone, server stopping) is aborted in the engine so its KV blocks are freed,
and each request leaves exactly one readable log line and its metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from glmv.engine.client import PromptTooLongError
from glmv.engine.outputs import PromptLogprobs, RequestOutput
from glmv.inputs.prompt import Prompt
from glmv.sampling import FinishReason, SamplingParams
from glmv.server.errors import APIError, error_body, overloaded_error, to_api_error
from glmv.server.state import ServingState

request_log = logging.getLogger("glmv.server.requests")
T = TypeVar("T")


class ClientDisconnected(Exception):
    """The HTTP client went away before its answer was ready."""


class TrackedGeneration:
    def __init__(self, state: ServingState, prompt: Prompt, params: SamplingParams, request_id: str, model: str,
                 arrival: float | None = None):
        self.state = state
        self.prompt = prompt
        self.params = params
        self.request_id = request_id
        self.model = model
        self.arrival = arrival if arrival is not None else time.monotonic()
        n = params.n
        self.num_tokens = [0] * n
        self.token_ids: list[list[int]] = [[] for _ in range(n)]
        self.finish: list[FinishReason | None] = [None] * n
        self.num_cached_tokens = 0
        self.prompt_logprobs: PromptLogprobs | None = None  # set by the output that carries them (prompt_logprobs)
        self._stream: AsyncIterator[RequestOutput] | None = None
        self._first: RequestOutput | None = None
        self._admitted = False
        self._closed = False
        self._aborted = False
        self._t_first: float | None = None
        self._t_last: float | None = None

    # ---- life cycle ----

    async def start(self) -> None:
        """Admit the request and wait for the engine's first output, so that errors (prompt too long, overload,
        bad media) become a status code before any response byte is sent."""
        state, max_len = self.state, self.state.max_model_len
        wanted = len(self.prompt) + (self.params.max_tokens or 1)
        if len(self.prompt) >= max_len or wanted > max_len:
            raise to_api_error(PromptTooLongError(len(self.prompt), max_len, self.params.max_tokens))
        room = max_len - len(self.prompt)
        if self.params.min_tokens > room:
            raise APIError(400, f"min_tokens ({self.params.min_tokens}) is more than the {room} tokens left in the "
                           f"context ({max_len}) after the {len(self.prompt)} prompt tokens.", "min_tokens",
                           "invalid_request")
        if state.inflight >= state.max_inflight:
            state.metrics.rejected.inc()
            raise overloaded_error(f"The server is full ({state.inflight} requests in flight); retry shortly.")
        state.inflight += 1
        self._admitted = True
        state.metrics.prompt_tokens.inc(len(self.prompt))
        try:
            self._stream = self.state.engine.generate(self.prompt, self.params, self.request_id)
            self._first = await anext(self._stream, None)
            if self._first is not None:
                self._observe(self._first)
        except BaseException as exc:
            await self.close(status=to_api_error(exc).status if isinstance(exc, Exception) else 499)
            if isinstance(exc, Exception):
                raise to_api_error(exc) from None
            raise

    async def outputs(self) -> AsyncIterator[RequestOutput]:
        """The engine's outputs (deltas), observed for metrics. Ends when every choice has finished."""
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        if self._stream is None:
            return
        async for out in self._stream:
            yield self._observe(out)

    def _observe(self, out: RequestOutput) -> RequestOutput:
        now = time.monotonic()
        new = 0
        for c in out.outputs:
            new += len(c.token_ids)
            self.token_ids[c.index].extend(c.token_ids)
            self.num_tokens[c.index] = c.num_tokens
            if c.finish_reason is not None:
                self.finish[c.index] = c.finish_reason
        self.num_cached_tokens = max(self.num_cached_tokens, out.num_cached_tokens)
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs
        if new:
            metrics = self.state.metrics
            if self._t_first is None:
                self._t_first = now
                metrics.ttft.observe(now - self.arrival)
            elif self._t_last is not None:
                gap = (now - self._t_last) / new
                for _ in range(new):
                    metrics.itl.observe(gap)
            self._t_last = now
        return out

    @property
    def done(self) -> bool:
        return all(f is not None for f in self.finish)

    async def abort(self) -> None:
        """Cancel in the engine (frees its KV blocks); the client went away."""
        if self._aborted or self.done or not self._admitted:
            return
        self._aborted = True
        self.state.metrics.aborted.inc()
        with contextlib.suppress(Exception):
            await self.state.engine.abort(self.request_id)

    async def close(self, status: int = 200) -> None:
        """Idempotent: abort if unfinished, release the admission slot, record metrics and the log line."""
        if self._closed:
            return
        self._closed = True
        if not self.done:
            await self.abort()
        if self._stream is not None:
            with contextlib.suppress(BaseException):
                await self._stream.aclose()  # type: ignore[attr-defined]
        if not self._admitted:
            return
        self.state.inflight -= 1
        metrics = self.state.metrics
        metrics.generation_tokens.inc(sum(self.num_tokens))
        metrics.cached_prompt_tokens.inc(self.num_cached_tokens)
        for f in self.finish:
            reason = "abort" if f is None and self._aborted else (f.value if f is not None else "error")
            metrics.request_finished.labels(finished_reason=reason).inc()
        now = time.monotonic()
        metrics.e2e.observe(now - self.arrival)
        if not self.state.server_config.disable_log_requests:
            finish = ",".join((f.value if f is not None else ("abort" if self._aborted else "error"))
                              for f in self.finish)
            ttft = f"{self._t_first - self.arrival:.3f}s" if self._t_first is not None else "-"
            request_log.info("%s model=%s status=%d prompt=%d cached=%d completion=%d n=%d finish=%s ttft=%s "
                             "latency=%.3fs", self.request_id, self.model, status, len(self.prompt),
                             self.num_cached_tokens, sum(self.num_tokens), self.params.n, finish, ttft,
                             now - self.arrival)


async def wait_for_disconnect(raw: Request) -> None:
    """Returns when the client closes its connection (the body has been read already)."""
    while True:
        message = await raw.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(raw: Request, work: Awaitable[T], gens: list[TrackedGeneration]) -> T:
    """Run `work`; if the client disconnects first, abort `gens` in the engine, cancel `work` and raise
    ClientDisconnected.

    Non-streaming requests need this: nothing is written until the end, so nothing else would notice that the
    client is gone, and the engine would generate (and hold KV blocks) for nobody. The engine requests are aborted
    before `work` is cancelled because an engine may only let go of a cancelled waiter once the requests ahead of
    it have ended.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(raw))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    for g in gens:
        await g.abort()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise ClientDisconnected()


def disconnect_guard(raw: Request, gens: list[TrackedGeneration]) -> asyncio.Task:
    """For streams: a side task that aborts the generations when the client goes away, even while no chunk is
    being written (a queued request, a long prefill)."""

    async def watch() -> None:
        await wait_for_disconnect(raw)
        for g in gens:
            await g.abort()

    return asyncio.ensure_future(watch())


class GenerationStream(StreamingResponse):
    """A text/event-stream response that always closes its generations, however the stream ends.

    Starlette stops iterating a stream when the client goes away, and may never start it at all; closing here
    (idempotent) releases the admission slot and aborts the engine request at once instead of at garbage
    collection.
    """

    def __init__(self, content: AsyncIterator[str], gens: list[TrackedGeneration]):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.gens = gens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for g in self.gens:
                await g.close(499)


def sse(obj: dict | str) -> str:
    """One server-sent event of chat and completions streams (`data: [DONE]` for the string)."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n"


def error_events(err: APIError) -> list[str]:
    """How chat and completions streams end on an error: the error body as an event, then `[DONE]`."""
    return [sse(error_body(err.status, err.message, err.param, err.code)), sse("[DONE]")]


async def guarded_stream(raw: Request, gens: list[TrackedGeneration], events: AsyncIterator[str],
                         on_error: Callable[[APIError], list[str]] = error_events) -> AsyncIterator[str]:
    """A route's events with what every stream guarantees: the generations are aborted when the client goes away
    (even between chunks), a mid-stream error becomes the route's error events (`on_error`) rather than a dropped
    socket, and the generations are closed with the status the stream ended with."""
    watcher = disconnect_guard(raw, gens)
    status = 200
    try:
        async for event in events:
            yield event
    except Exception as exc:  # noqa: BLE001 - a mid-stream error becomes error events, never a dropped socket
        err = to_api_error(exc)
        status = err.status
        for event in on_error(err):
            yield event
    except BaseException:
        status = 499
        raise
    finally:
        watcher.cancel()
        await events.aclose()  # type: ignore[attr-defined]
        for g in gens:
            await g.close(status)


async def respond(raw: Request, gens: list[TrackedGeneration], start: Awaitable[None],
                  stream: Callable[[], AsyncIterator[str]] | None, collect: Callable[[], Awaitable[dict]]) -> Response:
    """The end every generating route shares: wait for `start` (the first output: errors become status codes),
    then either stream (`stream` given) or wait for the whole body; a client that leaves first gets its
    generations closed and a 499."""
    try:
        await unless_disconnected(raw, start, gens)
        if stream is not None:
            return GenerationStream(stream(), gens)
        body = await unless_disconnected(raw, collect(), gens)
    except ClientDisconnected:
        for g in gens:
            await g.close(499)
        return Response(status_code=499)
    return JSONResponse(body)
