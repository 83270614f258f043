"""`glmv chat` as a new user meets it: a conversation that fills the context goes on, images and a video are not
mixed silently, a file that is not an image is refused on the spot, and `quit` / `clear` are not sent to the model."""

from __future__ import annotations

import pytest

from tests.cli.conftest import run_glmv
from tests.cli.live_server import start_looping_server
from tests.media_factory import make_image, make_video


@pytest.fixture(scope="module")
def small_context_server(tiny_model_dir, tmp_path_factory):
    live = start_looping_server(tiny_model_dir, tmp_path_factory, max_model_len=512)
    yield live
    live.stop()


def test_a_conversation_that_fills_the_context_goes_on(small_context_server):
    script = "".join(f"tell me more, part {i}\n" for i in range(1, 6))
    done = run_glmv(["chat", "--url", small_context_server.url, "--max-tokens", "400"], script)
    assert done.returncode == 0, done.stderr
    assert "Error" not in done.stderr, done.stderr
    assert "max_tokens lowered from 400 to" in done.stdout
    assert "oldest turn(s) so the conversation fits the context" in done.stdout
    assert done.stdout.count("lazy dog") >= 5  # every message was answered
    sent = [r["body"] for r in small_context_server.recorder.requests]
    assert len(sent) == 5 and all(b["max_tokens"] <= 400 for b in sent)


def test_words_to_leave_or_clear_are_not_sent(live_server):
    live_server.recorder.reset()
    done = run_glmv(["chat", "--url", live_server.url], "hello\nclear\nagain\nquit\nnever sent\n")
    assert done.returncode == 0, done.stderr
    assert "Conversation cleared" in done.stdout
    sent = [r["body"]["messages"] for r in live_server.recorder.requests]
    assert [m[-1]["content"] for m in sent] == ["hello", "again"]
    assert len(sent[1]) == 1  # "clear" forgot the first turn


def test_a_video_after_images_is_refused_when_attached_with_what_to_do(live_server, tmp_path):
    image = make_image(tmp_path / "photo.png")
    video = make_video(tmp_path / "clip.mp4", frames=4, fps=2)
    tool = tmp_path / "tool.exe"
    tool.write_bytes(b"MZ\x90\x00")
    live_server.recorder.reset()
    script = f"/image {image}\nwhat is it?\n/video {video}\nand this?\n/image {tool}\n"
    done = run_glmv(["chat", "--url", live_server.url], script)
    assert "A video cannot go in the same conversation as images" in done.stderr
    assert "/reset starts a new conversation" in done.stderr
    assert "tool.exe is not an image" in done.stderr
    assert "Error: HTTP" not in done.stderr  # nothing reached the server to be refused there
    assert len(live_server.recorder.requests) == 2  # both messages answered, the video never attached
