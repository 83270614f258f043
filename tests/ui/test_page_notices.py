"""What the page tells a person: a document cut short, the served model's name (never a folder path), and the
server's errors in words that say what to do, the raw error one click away."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from glmv.server.errors import error_body
from tests.cli.live_server import SERVED_NAME, start_server
from tests.media_factory import make_image, make_pdf, make_video
from tests.ui.test_page import open_page, send_with_files, text_of, type_prompt, wait_finished

CUT_TO_TWO = '{"media_io_kwargs": {"document": {"max_pages": 2}}}'


def set_extra_fields(browser, extra: str) -> None:
    browser.find_element(By.ID, "settings-toggle").click()
    browser.find_element(By.ID, "extra-body").send_keys(extra)
    browser.find_element(By.ID, "settings-toggle").click()


def test_a_document_cut_short_says_so(browser, page_server, tmp_path):
    pdf = make_pdf(tmp_path / "report.pdf", pages=5)
    open_page(browser, page_server)
    set_extra_fields(browser, CUT_TO_TWO)
    bubble = send_with_files(browser, "Summarize the report", pdf)
    assert bubble.get_attribute("data-state") == "done", text_of(bubble)
    note = text_of(bubble.find_element(By.CLASS_NAME, "note"))
    assert note.startswith("Only the first 2 of the document's 5 pages were read"), note
    assert "Ask about fewer pages" in note
    assert page_server.recorder.requests[-1]["body"]["stream_options"] == {"include_usage": True}


def test_the_model_picker_shows_the_served_name_not_a_folder_path(browser, scripted_model):
    live = start_server(scripted_model.path, with_ui=True, served_name=None)  # `glmv serve DIR`: named by its path
    try:
        browser.get(live.url + "/")
        browser.execute_script("localStorage.clear(); sessionStorage.clear();")
        browser.get(live.url + "/")
        path = str(scripted_model.path)
        WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.getElementById('model').value")
                                         == path)
        option = browser.find_element(By.CSS_SELECTOR, "#model option")
        assert text_of(option) == scripted_model.path.name and option.get_attribute("title") == path
        WebDriverWait(browser, 10).until(lambda d: text_of(d.find_element(By.ID, "status")).startswith("Ready"))
        status = text_of(browser.find_element(By.ID, "status"))
        assert status.startswith(f"Ready: {scripted_model.path.name}") and path not in status, status
        type_prompt(browser, "Hello")
        browser.find_element(By.ID, "send").click()
        assert wait_finished(browser, 1).get_attribute("data-state") == "done"
        assert live.recorder.requests[-1]["body"]["model"] == path  # the full name is what is sent
    finally:
        live.stop()


def test_an_unreadable_image_is_said_in_words_with_the_raw_error_kept(browser, page_server, tmp_path):
    fake = tmp_path / "holiday.png"
    fake.write_text("this is not a picture")
    open_page(browser, page_server)
    bubble = send_with_files(browser, "What is this?", fake)
    assert bubble.get_attribute("data-state") == "error"
    words = text_of(bubble.find_element(By.CSS_SELECTOR, ".error .error-words"))
    assert words == ("The server cannot read an attached file: whatever its name says, it is not a kind of file "
                     "it knows. Attach images (JPG, PNG, GIF, BMP, TIFF, WEBP), a video (MP4, AVI, MKV, MOV, WEBM) "
                     "or a document (PDF, PPT, PPTX)."), words
    details = bubble.find_element(By.CSS_SELECTOR, ".error details.error-details")
    assert details.get_attribute("open") is None
    details.find_element(By.TAG_NAME, "summary").click()  # the raw error, for a bug report
    raw = text_of(details)
    assert "HTTP 415" in raw and "code unsupported_media_type" in raw and "holds text" in raw, raw


@pytest.fixture(scope="module")
def small_server(scripted_model):
    live = start_server(scripted_model.path, with_ui=False, max_model_len=512)
    yield live
    live.stop()


def server_error(url: str, **body) -> tuple[int, str]:
    """A real error answer of the server to a chat request (status, body text)."""
    resp = httpx.post(url + "/v1/chat/completions", json={"model": SERVED_NAME, **body}, timeout=120)
    assert resp.status_code >= 400, resp.text
    return resp.status_code, resp.text


def page_words(browser, status: int | None, body: str) -> dict:
    return browser.execute_script("return window.glmvErrors.explain(arguments[0], arguments[1]);", status, body)


def data_uri(path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def test_server_errors_in_a_persons_words(browser, page_server, small_server, tmp_path):
    open_page(browser, page_server)
    long_chat = [{"role": "user", "content": "word " * 700}]
    status, body = server_error(small_server.url, messages=long_chat)
    found = page_words(browser, status, body)
    assert found["words"] == ("This conversation no longer fits the model's context (512 tokens). Start a new chat "
                              "or drop the oldest turns.")
    assert found["details"].startswith("HTTP 400, BadRequestError, code context_length_exceeded, param messages: "
                                       "This model's maximum context length is 512 tokens")

    status, body = server_error(small_server.url, messages=[{"role": "user", "content": "hi"}], max_tokens=100000)
    words = page_words(browser, status, body)["words"]
    assert words.startswith("The answer's token limit (max_tokens 100000) is more than the model's context (512 "
                            "tokens) leaves after this conversation ("), words
    assert words.endswith("tokens): lower Max tokens in Settings or leave it empty.")

    image = data_uri(make_image(tmp_path / "a.png"), "image/png")
    video = data_uri(make_video(tmp_path / "b.mp4", frames=4, fps=2), "video/mp4")
    status, body = server_error(small_server.url, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image}}, {"type": "video_url", "video_url": {"url": video}}]}])
    assert page_words(browser, status, body)["words"] == (
        "A video cannot share a conversation with images (GLM-4.1V reads one or the other): start a new chat for "
        "the video.")

    status, body = server_error(small_server.url, messages=[{"role": "user", "content": "hi"}], model="gpt-4o")
    assert page_words(browser, status, body)["words"] == "The server does not serve that model: pick one from the " \
        "Model list."

    busy = json.dumps(error_body(503, "The server is overloaded; retry shortly.", None, "overloaded"))
    assert page_words(browser, 503, busy)["words"] == ("The server is busy right now: wait a few seconds and send "
                                                       "the message again.")
    assert page_words(browser, 429, "Too Many Requests")["words"].startswith("The server is busy right now")
    mid_stream = {"error": {"message": "Internal error: RuntimeError. See the server log.", "type": "Error",
                            "code": 500}}
    found = browser.execute_script("return window.glmvErrors.explain(null, arguments[0]);", mid_stream)
    assert found["words"].startswith("The server failed while answering (its log says why)")
    assert found["details"] == "HTTP 500, Error: Internal error: RuntimeError. See the server log."
