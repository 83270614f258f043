"""Fixtures for the web page tests: the real server (build_state + create_app + mount_ui) on 127.0.0.1 in a thread,
serving the scripted tiny model, and a headless Debian chromium driven by selenium through /usr/bin/chromedriver.

The server is wrapped in a small ASGI recorder so tests can check exactly what the page sent (messages, parts,
headers) without trusting the page's own account of it.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn

from glmv.config import EngineConfig
from glmv.server.app import create_app
from glmv.server.launch import build_state
from glmv.server.state import ServerConfig
from glmv.ui.routes import mount_ui
from tests.cli.scripted_model import ScriptedModel, make_scripted_model

SERVED_NAME = "glmv-test"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class RecordingApp:
    """ASGI wrapper that keeps the JSON body and headers of every POST /v1/chat/completions."""

    def __init__(self, app):
        self.app = app
        self.requests: list[dict] = []

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

        await self.app(scope, recording_receive, send)


@dataclass
class PageServer:
    url: str
    model: ScriptedModel
    recorder: RecordingApp
    server: uvicorn.Server = field(repr=False)
    thread: threading.Thread = field(repr=False)


@pytest.fixture(scope="session")
def scripted_model(tiny_model_dir, tmp_path_factory) -> ScriptedModel:
    return make_scripted_model(tiny_model_dir, tmp_path_factory.mktemp("scripted") / "model")


@pytest.fixture(scope="module")
def page_server(scripted_model):
    state = build_state(EngineConfig(model=str(scripted_model.path), device="cpu"),
                        ServerConfig(served_model_names=(SERVED_NAME,)))
    app = create_app(state)
    mount_ui(app)
    recorder = RecordingApp(app)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(recorder, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"ui-{port}")
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the page test server did not start")
        time.sleep(0.02)
    yield PageServer(f"http://127.0.0.1:{port}", scripted_model, recorder, server, thread)
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless chromium with a fresh profile; fails (never skips) when `make system-deps` was not run."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.fail(f"{path} is missing: run `make system-deps` (installs Debian's chromium and chromium-driver).")
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
