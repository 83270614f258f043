"""How `glmv chat` and `glmv batch` reach the OpenAI API: glmv's own app inside this process, or a server at --url.

Without --url the doors build exactly the app `glmv serve` runs (build_state + create_app) and call it through an
httpx transport that hands requests straight to the ASGI app, no socket. So the terminal chat and the batch runner
get the server's behaviour for free and can never drift from it: request validation, sampling defaults from the
checkpoint's generation_config, the thinking split, media loading, error codes and messages. With --url the same
client code talks to any OpenAI-compatible server instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from glmv.cli.error_words import ServerError, in_words, parse_error
from glmv.options import RuntimeOptions

# Generation can pause for long between bytes (a long prefill, a queue): no read timeout, a bounded connect.
REMOTE_TIMEOUT = httpx.Timeout(connect=30.0, read=None, write=None, pool=None)


class InProcessTransport(httpx.AsyncBaseTransport):
    """An httpx transport that runs an ASGI app in the current event loop and streams its response as it is sent.

    httpx's own ASGITransport collects the whole body before returning, which would turn a streamed chat into one
    late block. Closing the response early (Ctrl-C in the chat) tells the app the client went away, exactly as a
    dropped connection does, so the server aborts the request and frees its engine slot.
    """

    def __init__(self, app: Any):
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},  # spec 2.0: Starlette watches receive() for the disconnect
            "http_version": "1.1",
            "method": request.method,
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?", 1)[0],
            "query_string": request.url.query,
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "client": ("127.0.0.1", 0),
            "server": ("127.0.0.1", 0),
        }
        messages: asyncio.Queue = asyncio.Queue()
        disconnected = asyncio.Event()
        body_sent = False

        async def receive() -> dict:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if disconnected.is_set():
                raise OSError("the in-process client closed the response")
            await messages.put(message)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as exc:  # noqa: BLE001 - handed to the reader below
                await messages.put(exc)
            finally:
                await messages.put(None)

        task = asyncio.create_task(run())
        start = await messages.get()
        if isinstance(start, Exception):
            raise httpx.RemoteProtocolError(f"the app failed: {start!r}", request=request) from start
        if start is None or start.get("type") != "http.response.start":
            raise httpx.RemoteProtocolError("the app ended without a response", request=request)
        return httpx.Response(start["status"], headers=start.get("headers", []),
                              stream=_AppBodyStream(messages, task, disconnected), request=request)


class _AppBodyStream(httpx.AsyncByteStream):
    def __init__(self, messages: asyncio.Queue, task: asyncio.Task, disconnected: asyncio.Event):
        self.messages = messages
        self.task = task
        self.disconnected = disconnected

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            message = await self.messages.get()
            if message is None:
                return
            if isinstance(message, Exception):
                raise httpx.ReadError(f"the app failed while answering: {message!r}") from message
            if message.get("type") == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    return

    async def aclose(self) -> None:
        self.disconnected.set()
        if not self.task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout=10)
            except (TimeoutError, Exception):  # noqa: BLE001 - the app is told; do not hang the door on it
                self.task.cancel()


def local_state(engine_config, served_model_names: tuple[str, ...], allowed_local_media_path: Path | None = None):
    """The serving state (engine loaded) that `glmv serve` would build for these settings."""
    from glmv.server.launch import build_state
    from glmv.server.state import ServerConfig

    server_config = ServerConfig(served_model_names=served_model_names,
                                 allowed_local_media_path=allowed_local_media_path)
    return build_state(engine_config, server_config)


@contextlib.asynccontextmanager
async def local_client(engine_config, served_model_names: tuple[str, ...], allowed_local_media_path: Path | None = None,
                       state=None) -> AsyncIterator[httpx.AsyncClient]:
    """Build glmv's server app for engine_config in this process (or use `state`, built already) and yield an httpx
    client bound to it."""
    from glmv.server.app import create_app

    # Loaded right here, blocking this loop on purpose: nothing else runs yet, and a Ctrl-C during a long load
    # then ends the process at once (a worker thread would keep it alive until the load finished).
    state = state or local_state(engine_config, served_model_names, allowed_local_media_path)
    app = create_app(state)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=InProcessTransport(app), base_url="http://glmv.local",
                                     timeout=None) as client:
            yield client


def remote_client(url: str, api_key: str | None, max_connections: int = 100) -> httpx.AsyncClient:
    """A client for a running OpenAI-compatible server. `url` may end in /v1 or not; without api_key the
    GLMV_API_KEY, then OPENAI_API_KEY environment variables are used."""
    api_key = api_key or RuntimeOptions.from_env().api_key or os.environ.get("OPENAI_API_KEY")
    base = url.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"--url {url}: give a full address such as http://127.0.0.1:8000.")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(base_url=base, headers=headers, timeout=REMOTE_TIMEOUT,
                             limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=20))


def error_message(status: int, body: bytes | str) -> str:
    """One readable sentence from an error response: the OpenAI error message if there is one."""
    return f"HTTP {status}: {parse_error(status, body).message}"


async def first_model(client: httpx.AsyncClient) -> str:
    """The first model a server lists at /v1/models (for --url without a model name)."""
    resp = await client.get("/v1/models")
    if resp.status_code != 200:
        err = parse_error(resp.status_code, resp.content)
        raise ValueError(f"{in_words(err)} (GET /v1/models: {err.details()})")
    data = resp.json().get("data") or []
    if not data:
        raise ValueError("The server lists no model at /v1/models.")
    return data[0]["id"]


@dataclass
class ChatEvent:
    """One piece of a streamed chat answer, already split: kind is reasoning, content, finish, usage, prompt_info
    (what the server did to the prompt, e.g. a document cut to fit: in `info`) or error (in `error`)."""

    kind: str
    text: str = ""
    usage: dict | None = None
    info: dict | None = None
    error: ServerError | None = None


async def stream_chat(client: httpx.AsyncClient, body: dict) -> AsyncIterator[ChatEvent]:
    """POST a streamed chat completion and yield its events; HTTP and mid-stream errors become error events."""
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
        if resp.status_code != 200:
            err = parse_error(resp.status_code, await resp.aread())
            yield ChatEvent("error", err.details(), error=err)
            return
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError:
                continue
            if "error" in chunk:
                err = parse_error(None, chunk)
                yield ChatEvent("error", err.details(), error=err)
                return
            if chunk.get("usage"):
                yield ChatEvent("usage", usage=chunk["usage"])
            if isinstance(chunk.get("prompt_info"), dict):
                yield ChatEvent("prompt_info", info=chunk["prompt_info"])
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if reasoning:
                    yield ChatEvent("reasoning", reasoning)
                if delta.get("content"):
                    yield ChatEvent("content", delta["content"])
                if choice.get("finish_reason"):
                    yield ChatEvent("finish", choice["finish_reason"])
