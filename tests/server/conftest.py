"""Live servers for the server tests: a real uvicorn on 127.0.0.1 (a free port), in a background thread, serving the
tiny model, started from the same flags `glmv serve` parses.

Running in-process lets a test look at the engine behind the server (e.g. to see that a request was aborted) while the
client talks plain HTTP through the real `openai` SDK. Each test module shares one server (module-scoped fixtures).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import uvicorn

import glmv
from glmv.cli.main import build_parser
from glmv.cli.serve import configs_from_args, normalize_flag_spelling
from glmv.models.constants import CHAT_TEMPLATE_PATH
from glmv.server.app import create_app
from glmv.server.launch import build_state
from glmv.server.state import ServingState
from tests.threaded_server import serve_in_thread


def available_engines() -> list[str]:
    """The reference engine always; glmv's own engine as soon as it is in the tree."""
    engines = ["transformers"]
    if (Path(glmv.__file__).parent / "engine" / "async_engine.py").exists():
        engines.append("glmv")
    return engines


ENGINES = available_engines()


@dataclass
class LiveServer:
    base_url: str
    state: ServingState
    server: uvicorn.Server
    thread: threading.Thread
    engine: str
    timeout_s: float = 30.0  # for the clients below and for stopping

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def client(self, api_key: str = "sk-xxx", **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.v1, api_key=api_key, max_retries=0, timeout=self.timeout_s, **kwargs)

    def async_client(self, api_key: str = "sk-xxx", **kwargs) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.v1, api_key=api_key, max_retries=0, timeout=self.timeout_s,
                                  **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=self.timeout_s)


def start_server(argv: list[str], timeout_s: float = 30.0) -> LiveServer:
    """`glmv serve ARGV` on a free 127.0.0.1 port, in a thread; returns once it accepts connections."""
    args = build_parser().parse_args(normalize_flag_spelling(["serve", *argv]))
    engine_config, server_config = configs_from_args(args)
    state = build_state(engine_config, server_config)
    live = serve_in_thread(create_app(state), "glmv", server_config.root_path)
    return LiveServer(live.url, state, live.server, live.thread, engine_config.engine, timeout_s)


def serve_args(model_dir: Path, engine: str, *extra: str) -> list[str]:
    """Flags every test server shares: the tiny model in float32 on the CPU."""
    return [str(model_dir), "--engine", engine, "--dtype", "float32", "--device", "cpu", *extra]


@contextlib.contextmanager
def live_server(model_dir: Path, engine: str, *extra: str) -> Iterator[LiveServer]:
    """A test server for the length of a `with` block (stopped however the block ends)."""
    s = start_server(serve_args(model_dir, engine, *extra))
    try:
        yield s
    finally:
        s.stop()


def module_server(engine: str, *extra: str):
    """A module-scoped fixture serving the tiny model: `server = module_server("glmv", "--max-model-len", "256")`
    (pytest names it after the variable it is assigned to)."""

    @pytest.fixture(scope="module")
    def fixture(tiny_model_dir):
        with live_server(tiny_model_dir, engine, *extra) as s:
            yield s

    return fixture


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """Real media files made by real encoders (Pillow, PyAV), for file:// URLs."""
    from tests.media_factory import make_image, make_video

    d = tmp_path_factory.mktemp("media")
    make_image(d / "demo1.png", 150, 100, seed=1)
    make_image(d / "demo2-1.JPG", 120, 120, seed=2, fmt="JPEG")
    make_image(d / "demo2-2.JPG", 140, 112, seed=3, fmt="JPEG")
    make_video(d / "demo3.mp4", frames=8, fps=4)
    return d


def think_end_id(server: LiveServer) -> int:
    ids = server.state.tokenizer.encode("</think>", add_special_tokens=False)
    assert len(ids) == 1, "the tiny tokenizer has </think> as one added token"
    return ids[0]


@pytest.fixture(scope="session")
def think_template(tmp_path_factory):
    """glmv's template with a generation prompt that opens the thought (`<|assistant|>\\n<think>`), so what the
    tiny random model writes before `</think>` is reasoning."""
    text = CHAT_TEMPLATE_PATH.read_text()
    plain = "{{ '<|assistant|>\\n' }}\n{%- if enable_thinking"
    assert plain in text, "glmv's template ends its generation prompt with <|assistant|>\\n"
    path = tmp_path_factory.mktemp("templates") / "think.jinja"
    path.write_text(text.replace(plain, "{{ '<|assistant|>\\n<think>' }}\n{%- if enable_thinking"))
    return path
