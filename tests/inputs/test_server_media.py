"""Media through a real server: good media answer 200, each bad input a 4xx in OpenAI's error shape, and the server
keeps serving afterwards. A uvicorn on 127.0.0.1 serves the tiny model with the reference (transformers) engine;
the client is the real `openai` SDK."""

from __future__ import annotations

import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler

import openai
import pytest
import uvicorn

from glmv.config import EngineConfig
from glmv.server.app import create_app
from glmv.server.launch import build_state
from glmv.server.state import ServerConfig
from tests.inputs.http_host import http_host
from tests.inputs.media import (
    audio_only_bytes,
    data_uri,
    encrypted_pdf_bytes,
    file_part,
    image_bytes,
    image_part,
    pdf_bytes,
    png_declaring,
    text_part,
    video_bytes,
    video_part,
)

GOOD_PNG = image_bytes("png", 84, 56, seed=5)


class _Files(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path == "/ok.png":
            body = GOOD_PNG
        elif self.path == "/big.bin":
            body = b"\0" * (3 << 20)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def media_site():
    """A media host on localhost (allowed by the server under test) plus a port that accepts and never answers."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes handshakes; nobody ever reads or answers
    with http_host(_Files) as port:
        yield {"http": f"http://localhost:{port}", "silent": f"http://localhost:{silent.getsockname()[1]}"}
    silent.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("allowed")
    outside = tmp_path_factory.mktemp("outside")
    (root / "ok.png").write_bytes(GOOD_PNG)
    (outside / "secret.png").write_bytes(GOOD_PNG)
    os.symlink(outside / "secret.png", root / "link.png")
    return {"root": root, "outside": outside}


@pytest.fixture(scope="module")
def client(tiny_model_dir, files):
    engine_config = EngineConfig(model=str(tiny_model_dir), engine="transformers", device="cpu", dtype="float32",
                                 max_model_len=4096)
    server_config = ServerConfig(port=0, served_model_names=("tiny",), allowed_local_media_path=files["root"],
                                 allowed_media_domains=("localhost",), media_fetch_timeout=2.0,
                                 max_media_bytes=2 << 20, limit_mm_per_prompt={"image": 3, "video": 1, "document": 1})
    state = build_state(engine_config, server_config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}/v1", api_key="x", max_retries=0,
                        timeout=60)
    server.should_exit = True
    thread.join(timeout=30)


def _chat(client, *parts, **extra):
    return client.chat.completions.create(model="tiny", max_tokens=3, temperature=0,
                                          messages=[{"role": "user", "content": list(parts)}], **extra)


def _assert_ok(client):
    reply = _chat(client, image_part(data_uri(GOOD_PNG)), text_part("What is this?"))
    assert reply.choices[0].finish_reason in ("length", "stop") and reply.usage.prompt_tokens > 10


def test_good_media_are_answered(client, files, media_site):
    _assert_ok(client)
    assert _chat(client, image_part(f"file://{files['root']}/ok.png")).usage.prompt_tokens > 10
    assert _chat(client, image_part(f"{media_site['http']}/ok.png")).usage.prompt_tokens > 10
    video = data_uri(video_bytes("webm", "libvpx", frames=12, fps=6))
    assert _chat(client, video_part(video), text_part("What happens?")).usage.prompt_tokens > 10
    pdf = file_part(data_uri(pdf_bytes(2, size=(144, 144)), "application/pdf"))
    assert _chat(client, pdf, text_part("Summarize.")).usage.prompt_tokens > 10


@pytest.mark.parametrize(("case", "status", "words"), [
    ("truncated image", 400, "truncated"),
    ("text file named .png", 415, "text"),
    ("png declaring 100000x100000", 413, "pixels"),
    ("empty file", 400, "empty"),
    ("video without a video stream", 400, "no video stream"),
    ("encrypted pdf", 400, "encrypted"),
    ("url to 127.0.0.1", 400, "allowed-media-domains"),
    ("file outside the allowed path", 400, "outside"),
    ("symlink escape", 400, "outside"),
    ("download over the cap", 413, "2 MiB"),
    ("url that never answers", 400, "within 2 s"),
    ("image with a video", 400, "cannot share a prompt"),
    ("too many images", 400, "at most 3 images"),
    ("bad media_io_kwargs", 400, "fps"),
])
def test_bad_inputs_are_4xx_and_the_server_keeps_serving(client, files, media_site, case, status, words):
    png = image_part(data_uri(GOOD_PNG))
    parts, extra = {
        "truncated image": ([image_part(data_uri(GOOD_PNG[: len(GOOD_PNG) // 2]))], {}),
        "text file named .png": ([image_part(data_uri(b"just some text\n", "image/png"))], {}),
        "png declaring 100000x100000": ([image_part(data_uri(png_declaring(100_000, 100_000)))], {}),
        "empty file": ([image_part("data:image/png;base64,")], {}),
        "video without a video stream": ([video_part(data_uri(audio_only_bytes()))], {}),
        "encrypted pdf": ([file_part(data_uri(encrypted_pdf_bytes()))], {}),
        "url to 127.0.0.1": ([image_part(media_site["http"].replace("localhost", "127.0.0.1") + "/ok.png")], {}),
        "file outside the allowed path": ([image_part(f"file://{files['outside']}/secret.png")], {}),
        "symlink escape": ([image_part(f"file://{files['root']}/link.png")], {}),
        "download over the cap": ([image_part(f"{media_site['http']}/big.bin")], {}),
        "url that never answers": ([image_part(f"{media_site['silent']}/x.png")], {}),
        "image with a video": ([png, video_part(data_uri(video_bytes("mp4", "mpeg4")))], {}),
        "too many images": ([png] * 4, {}),
        "bad media_io_kwargs": ([png], {"extra_body": {"media_io_kwargs": {"video": {"fps": -1}}}}),
    }[case]
    with pytest.raises(openai.APIStatusError) as err:
        _chat(client, text_part("Look:"), *parts, **extra)
    assert err.value.status_code == status, err.value
    body = err.value.body
    assert isinstance(body, dict) and words in body["message"], body
    assert body["type"] and body["param"]
    if case not in ("bad media_io_kwargs",):
        assert body["param"].startswith("messages[0].content[")
    _assert_ok(client)  # and the server still answers
