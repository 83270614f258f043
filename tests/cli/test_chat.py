"""`glmv chat`: piped stdin with the model in-process, a real terminal (pty) against a live server, and its parts."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import pty
import re
import select
import signal
import sys
import time

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from glmv.cli.api import InProcessTransport
from glmv.cli.chat import DIM, RESET, AnswerPrinter, Conversation, media_part
from tests.cli.conftest import GLMV, door_env, run_glmv
from tests.cli.live_server import SERVED_NAME
from tests.media_factory import make_image, make_video

RAW_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


# --------------------------------------------------------------------------------------------- piped stdin


def test_piped_chat_in_process(scripted_model, tmp_path):
    image = make_image(tmp_path / "photo.png")
    script = "\n".join([f"/image {image}", "What is in the picture?", "/think off", "And now?", "/budget 3",
                        "/think", "/reset", "Again", "/exit", "never sent"]) + "\n"
    done = run_glmv(["chat", str(scripted_model.path), "--device", "cpu"], script)
    assert done.returncode == 0, done.stderr
    r, a = scripted_model.reasoning, scripted_model.answer
    head, budgeted = done.stdout.split("Conversation cleared.\n")
    assert head == (
        "Attached photo.png; it goes with your next message.\n"
        f"Thinking: {r}\n\nAnswer: {a}\n"
        "Thinking is hidden.\n"
        f"{a}\n"
        "Thinking budget: 3.\n"
        "Thinking is shown.\n"
    )
    # /budget 3 reached the engine: the thought was cut short, and the model still answered.
    thought = re.fullmatch(rf"Thinking: (.*)\n\nAnswer: {a}\n", budgeted)
    assert thought and r.startswith(thought[1]) and len(thought[1]) < len(r), budgeted
    assert done.stderr.count("HTTP") == 0
    for tag in RAW_TAGS:
        assert tag not in done.stdout


def test_piped_errors_are_reported_and_set_the_exit_code(live_server, scripted_model, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("plain text")
    script = f"/file {notes}\n/image {tmp_path / 'missing.png'}\n/budget lots\n/frobnicate\n/image {notes}\nhi\n"
    done = run_glmv(["chat", "--url", live_server.url], script)
    assert done.returncode == 1
    assert "notes.txt: /file takes a PDF, PPT or PPTX document" in done.stderr
    assert "missing.png: no such file." in done.stderr
    assert "Expected a whole number, got 'lots'." in done.stderr
    assert "Unknown command /frobnicate; /help lists them." in done.stderr
    # A text file attached as an image is refused on the spot, before anything is sent.
    assert "notes.txt is not an image (JPG, PNG, GIF, BMP, TIFF, WEBP)" in done.stderr
    assert scripted_model.answer in done.stdout  # "hi" went alone


# --------------------------------------------------------------------------------------------- a real terminal


class Terminal:
    """`glmv chat` on a pseudo-terminal: what a person at a keyboard sees and sends (Ctrl-C included)."""

    def __init__(self, args: list[str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become glmv chat on this terminal
            os.execve(sys.executable, [*GLMV, *args], door_env() | {"TERM": "xterm", "COLUMNS": "200"})
        self.output = ""
        self.seen = 0  # expect() looks only past the end of its previous match

    def expect(self, pattern: str, timeout: float = 30) -> re.Match:
        deadline = time.monotonic() + timeout
        start = self.seen
        while True:
            match = re.compile(pattern, re.S).search(self.output, start)
            if match:
                self.seen = match.end()
                return match
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"never saw {pattern!r}; the terminal shows:\n{self.output[start:]}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                try:
                    self.output += os.read(self.fd, 65536).decode("utf-8", "replace")
                except OSError:  # the child closed the terminal
                    time.sleep(0.05)

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait_exit(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            ready, _, _ = select.select([self.fd], [], [], 0.2)  # keep draining so the child never blocks
            if ready:
                try:
                    self.output += os.read(self.fd, 65536).decode("utf-8", "replace")
                except OSError:
                    pass
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("glmv chat did not exit")


PROMPT = r"you>\x1b\[0m "


def test_terminal_chat_against_a_server(live_server, scripted_model, tmp_path):
    image = make_image(tmp_path / "cat.png", seed=3)
    term = Terminal(["chat", "--url", live_server.url + "/v1", "--temperature", "0.5"])
    term.expect(PROMPT)
    live_server.recorder.reset()
    term.type(f"/image {image}\r")
    term.expect(r"Attached cat\.png")
    term.expect(r"\[1 attached\] ")
    term.type("What is this?\r")
    shown = term.expect(rf"{re.escape(scripted_model.answer)}\r\n.*?\[\d+ tokens, [\d.]+ tok/s\]", timeout=60)
    # The thinking is dim grey, the answer plain: the colour is reset between them.
    before = term.output[:shown.end()]
    assert f"{DIM}{scripted_model.reasoning}{RESET}" in before
    term.expect(PROMPT)
    term.type("/think off\r")
    term.expect("Thinking is hidden")
    term.type("And the colour?\r")
    term.expect(re.escape(scripted_model.answer))
    term.expect(PROMPT)
    term.type("\x04")  # Ctrl-D leaves
    assert term.wait_exit() == 0
    for tag in RAW_TAGS:
        assert tag not in term.output

    first, second = (r["body"] for r in live_server.recorder.requests)
    assert first["model"] == SERVED_NAME and first["temperature"] == 0.5 and first["stream"] is True
    (message,) = first["messages"]
    assert [p["type"] for p in message["content"]] == ["image_url", "text"]
    url = message["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == image.read_bytes()
    assert second["messages"][1:] == [{"role": "assistant", "content": scripted_model.answer},
                                      {"role": "user", "content": "And the colour?"}]
    assert second["messages"][0] == message  # the image stays in the history


def test_ctrl_c_stops_the_answer_and_the_chat_goes_on(live_server, scripted_model):
    term = Terminal(["chat", "--url", live_server.url, "--max-tokens", "4000", "--extra-body", '{"ignore_eos": true}'])
    term.expect(PROMPT)
    live_server.recorder.reset()
    term.type("Talk for a long time\r")
    term.expect(re.escape(scripted_model.answer))  # it is streaming (and would go on for 4000 tokens)
    term.type("\x03")
    term.expect(r"\[stopped\]")
    term.expect(PROMPT)
    # The server saw the client leave and aborted: the engine is idle long before 4000 tokens could be written.
    deadline = time.monotonic() + 10
    while live_server.state.engine.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live_server.state.engine.stats()["running"] == 0
    term.type("\x03")  # Ctrl-C at the prompt does not leave
    term.expect(r"Ctrl-D or /exit to leave")
    term.type("/exit\r")
    assert term.wait_exit() == 0
    (request,) = live_server.recorder.requests
    assert request["body"]["ignore_eos"] is True and request["body"]["max_tokens"] == 4000


# --------------------------------------------------------------------------------------------- parts


def test_conversation_sends_answers_only_and_pending_media():
    conv = Conversation(system="Be brief.")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    conv.pending.append(image)
    first = conv.messages("What is it?")
    assert first == [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}]
    conv.commit(first[-1], "A cat.")
    assert conv.pending == []
    assert conv.messages("Sure?")[1:] == [first[-1], {"role": "assistant", "content": "A cat."},
                                          {"role": "user", "content": "Sure?"}]
    conv.reset()
    conv.system = None
    assert conv.messages("hi") == [{"role": "user", "content": "hi"}]


def test_media_parts_are_data_uris_of_the_right_type(tmp_path):
    from PIL import Image

    png = make_image(tmp_path / "a.png")
    video = make_video(tmp_path / "clip.mkv")
    pdf = tmp_path / "deck.pdf"
    Image.new("RGB", (50, 50)).save(pdf)
    assert media_part("image", str(png))["image_url"]["url"].startswith("data:image/png;base64,")
    assert media_part("video", str(video))["video_url"]["url"].startswith("data:video/x-matroska;base64,")
    doc = media_part("file", str(pdf))
    assert doc["file"]["filename"] == "deck.pdf" and doc["file"]["file_data"].startswith("data:application/pdf;")
    with pytest.raises(ValueError, match="no such file"):
        media_part("image", str(tmp_path / "nope.png"))
    with pytest.raises(ValueError, match="PDF, PPT or PPTX"):
        media_part("file", str(png))


@pytest.mark.parametrize("color, show, expected", [
    (True, True, f"{DIM}think{RESET}\n\nanswer\n"),
    (False, True, "Thinking: think\n\nAnswer: answer\n"),
    (False, False, "answer\n"),
    (True, False, "answer\n"),
])
def test_answer_printer(color, show, expected):
    out = io.StringIO()
    printer = AnswerPrinter(out, color, show)
    for piece in ("\nthi", "nk"):
        printer.reasoning(piece)
    for piece in ("\n", "ans", "wer"):
        printer.content(piece)
    printer.close()
    assert out.getvalue() == expected
    assert (printer.reasoning_text, printer.answer_text) == ("\nthink", "answer")


def test_in_process_transport_streams_and_reports_the_disconnect():
    app = FastAPI()
    events: list[str] = []
    never = asyncio.Event()

    @app.get("/stream")
    async def stream():
        async def body():
            try:
                yield b"first\n"
                await never.wait()  # only the client leaving ends this response
                yield b"second\n"
            except asyncio.CancelledError:
                events.append("cancelled")
                raise

        return StreamingResponse(body())

    async def scenario() -> str:
        async with httpx.AsyncClient(transport=InProcessTransport(app), base_url="http://in-process") as client:
            async with client.stream("GET", "/stream") as resp:
                async for line in resp.aiter_lines():
                    return line
        return ""

    async def main() -> str:
        first = await asyncio.wait_for(scenario(), timeout=10)  # a buffering transport would hang here
        await asyncio.sleep(0.05)
        return first

    assert asyncio.run(main()) == "first"
    assert events == ["cancelled"]
