"""A real glmv server for the door tests: build_state + create_app (+ mount_ui) under uvicorn on 127.0.0.1 in a
thread, wrapped in a recorder that keeps what each door actually sent (bodies, headers) and how many requests
were in flight at once. Shared by tests/ui (the page) and tests/cli (chat --url, batch --url).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from glmv.config import EngineConfig
from glmv.server.app import create_app
from glmv.server.launch import build_state
from glmv.server.state import ServerConfig, ServingState
from glmv.ui.routes import mount_ui
from tests.threaded_server import serve_in_thread

SERVED_NAME = "glmv-test"


class RecordingApp:
    """ASGI wrapper that keeps the JSON body and headers of every POST to .../chat/completions."""

    def __init__(self, app):
        self.app = app
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].endswith("/v1/chat/completions"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}

        async def recording_receive():
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.requests.append({"headers": headers, "body": json.loads(b"".join(chunks) or b"null")})
            return message

        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.app(scope, recording_receive, send)
        finally:
            self.in_flight -= 1

    def reset(self) -> None:
        self.requests.clear()
        self.max_in_flight = 0


@dataclass
class LiveServer:
    url: str
    recorder: RecordingApp
    state: ServingState  # to look at the engine behind the server (e.g. that an aborted request stopped running)
    server: uvicorn.Server = field(repr=False)
    thread: threading.Thread = field(repr=False)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(model_dir: Path, with_ui: bool = True, api_key: str | None = None,
                 max_model_len: int | None = None, served_name: str | None = SERVED_NAME) -> LiveServer:
    """Serve model_dir as served_name (None: as `glmv serve DIR` names it, by its path; default engine, CPU) on a
    free 127.0.0.1 port; returns once it listens."""
    server_config = ServerConfig(served_model_names=(served_name,) if served_name else (),
                                 api_keys=(api_key,) if api_key else ())
    state = build_state(EngineConfig(model=str(model_dir), device="cpu", max_model_len=max_model_len), server_config)
    app = create_app(state)
    if with_ui:
        mount_ui(app)
    recorder = RecordingApp(app)
    live = serve_in_thread(recorder, "doors")
    return LiveServer(live.url, recorder, state, live.server, live.thread)


def start_looping_server(tiny_model_dir: Path, tmp_path_factory, max_model_len: int) -> LiveServer:
    """The scripted model answering " lazy dog lazy dog ..." until max_tokens, in a max_model_len context: long
    answers, for the tests of a conversation that fills the context (page and glmv chat)."""
    from tests.cli.scripted_model import make_scripted_model

    model = make_scripted_model(tiny_model_dir, tmp_path_factory.mktemp("looping") / "model", answer_loops=True)
    return start_server(model.path, with_ui=False, max_model_len=max_model_len)
