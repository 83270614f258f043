"""`glmv chat` as a new user meets it: a conversation that fills the context goes on, images and a video are not
mixed silently, a file that is not an image is refused on the spot, `quit` / `clear` are not sent to the model, a
document cut short is said, and the server's errors come in words that say what to do, the raw error after them."""

from __future__ import annotations

import pytest

from tests.cli.conftest import run_glmv
from tests.cli.live_server import start_looping_server, start_server
from tests.media_factory import make_image, make_pdf, make_video


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


def test_a_document_cut_short_is_said(live_server, tmp_path):
    pdf = make_pdf(tmp_path / "report.pdf", pages=5)
    done = run_glmv(["chat", "--url", live_server.url, "--extra-body",
                     '{"media_io_kwargs": {"document": {"max_pages": 2}}}'], f"/file {pdf}\nSummarize the report\n")
    assert done.returncode == 0, done.stderr
    assert ("Only the first 2 of the document's 5 pages were read (the rest did not fit the model's context or the "
            "server's page limit), so the answer is about those pages.") in done.stdout


def test_server_errors_lead_with_what_to_do_and_keep_the_raw_error(small_context_server, tmp_path):
    done = run_glmv(["chat", "--url", small_context_server.url, "--extra-body", '{"max_tokens": 100000}'], "hi\n")
    assert done.returncode == 1
    first, second = done.stderr.splitlines()[:2]
    assert first.startswith("The answer's token limit (max_tokens 100000) is more than the model's context (512 "
                            "tokens) leaves after this conversation ("), first
    assert first.endswith("tokens): lower it (--max-tokens, --extra-body) or leave it out."), first
    assert second.startswith("  (details: HTTP 400, BadRequestError, code context_length_exceeded, param messages: "
                             "This model's maximum context length is 512 tokens"), second

    fake = tmp_path / "holiday.png"
    fake.write_text("this is not a picture")
    done = run_glmv(["chat", "--url", small_context_server.url], f"/image {fake}\nwhat is it?\n")
    assert done.returncode == 1
    assert "The server cannot read an attached file: whatever its name says, it is not a kind of file it knows." \
        in done.stderr
    assert "(details: HTTP 415, UnsupportedMediaTypeError, code unsupported_media_type" in done.stderr
    assert "your attachments are still waiting" in done.stdout


def test_a_server_that_wants_a_key_says_how_to_give_it(scripted_model):
    live = start_server(scripted_model.path, with_ui=False, api_key="sk-secret")
    try:
        done = run_glmv(["chat", "--url", live.url], "hi\n")
    finally:
        live.stop()
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("glmv: The server wants an API key: give it with --api-key KEY (or set "
                                  "GLMV_API_KEY). (GET /v1/models: HTTP 401, AuthenticationError"), done.stderr
