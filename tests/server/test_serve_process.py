"""`glmv serve` as a user starts it, in its own process: on the CPU the engine loop runs in the main thread and HTTP
in another (glmv/server/launch.py). It answers, and SIGTERM or Ctrl-C (SIGINT) shut it down cleanly and quickly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(model_dir, port: int, *extra: str) -> subprocess.Popen:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "glmv.cli.main", "serve", str(model_dir), "--port", str(port),
                             "--device", "cpu", *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"glmv serve exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    pytest.fail("glmv serve did not start in 120 s")


@pytest.mark.parametrize(("dtype", "stop_signal"), [("bfloat16", signal.SIGTERM), ("float32", signal.SIGINT)])
def test_cpu_server_answers_and_stops_on_a_signal(tiny_model_dir, dtype, stop_signal):
    port = free_port()
    proc = start(tiny_model_dir, port, "--dtype", dtype)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", timeout=60)
        model = client.models.list().data[0].id
        done = client.completions.create(model=model, prompt="hello", max_tokens=5, temperature=0,
                                         extra_body={"ignore_eos": True})
        assert done.usage.completion_tokens == 5
        chunks = list(client.completions.create(model=model, prompt="hi", max_tokens=4, temperature=0, stream=True,
                                                extra_body={"ignore_eos": True}))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == \
            client.completions.create(model=model, prompt="hi", max_tokens=4, temperature=0,
                                      extra_body={"ignore_eos": True}).choices[0].text
        proc.send_signal(stop_signal)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output
    assert f"chat page: http://127.0.0.1:{port}/" in output  # the start-up log names the page
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)


def test_port_in_use_is_a_clear_failure(tiny_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "glmv.cli.main", "serve", str(tiny_model_dir), "--port", str(port),
                              "--device", "cpu", "--dtype", "float32"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "address already in use" in (out.stdout + out.stderr).lower()
    assert "pick another port with --port" in out.stderr
    assert "loading" not in out.stderr  # found before the model loads (minutes for the 9B model)
    assert "Traceback" not in out.stdout + out.stderr
