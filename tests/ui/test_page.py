"""The web chat page in a real headless chromium against the real server and the scripted tiny model."""

from __future__ import annotations

import base64
import time

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.cli.live_server import SERVED_NAME
from tests.media_factory import make_image, make_video

SCREENSHOT = "/tmp/glmv_ui_page.png"
ATTACHMENTS_SCREENSHOT = "/tmp/glmv_ui_attachments.png"
RAW_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def open_page(browser, page_server, path: str = "/"):
    browser.get(page_server.url + path)
    browser.execute_script("localStorage.clear(); sessionStorage.clear();")
    browser.get(page_server.url + path)
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return document.getElementById('model').value") == SERVED_NAME)


def type_prompt(browser, text: str) -> None:
    box = browser.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(text)


def attach(browser, *paths) -> None:
    browser.find_element(By.ID, "file-input").send_keys("\n".join(str(p) for p in paths))
    WebDriverWait(browser, 10).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#attachments .chip")) == len(paths))


def wait_finished(browser, count: int, timeout: float = 60):
    """Wait until the count-th assistant bubble has left the waiting/streaming states; return it."""
    def finished(d):
        bubbles = d.find_elements(By.CSS_SELECTOR, ".msg.assistant")
        if len(bubbles) >= count and bubbles[count - 1].get_attribute("data-state") in ("done", "error", "stopped"):
            return bubbles[count - 1]
        return False

    return WebDriverWait(browser, timeout).until(finished)


def send_with_files(browser, text: str, *paths):
    """Type `text`, attach `paths`, send, and return the first assistant bubble once it has finished."""
    type_prompt(browser, text)
    attach(browser, *paths)
    browser.find_element(By.ID, "send").click()
    return wait_finished(browser, 1)


def text_of(element) -> str:
    return element.get_attribute("textContent").strip()


def drop_files(browser, *paths) -> None:
    """Drag-and-drop as a user would: dragenter/dragover/drop events on the page carrying real File objects."""
    browser.execute_script(
        "const i = document.createElement('input'); i.type = 'file'; i.multiple = true; i.id = 'drop-source';"
        "i.style.display = 'none'; document.body.appendChild(i);")
    browser.find_element(By.ID, "drop-source").send_keys("\n".join(str(p) for p in paths))
    overlay_shown = browser.execute_script("""
        const dt = new DataTransfer();
        for (const f of document.getElementById('drop-source').files) dt.items.add(f);
        const target = document.getElementById('messages');
        target.dispatchEvent(new DragEvent('dragenter', {bubbles: true, cancelable: true, dataTransfer: dt}));
        target.dispatchEvent(new DragEvent('dragover', {bubbles: true, cancelable: true, dataTransfer: dt}));
        const shown = !document.getElementById('drop-overlay').hidden;
        target.dispatchEvent(new DragEvent('drop', {bubbles: true, cancelable: true, dataTransfer: dt}));
        document.getElementById('drop-source').remove();
        return shown;""")
    assert overlay_shown, "the drop overlay should show while files are dragged over the page"


def test_image_question_streams_thinking_and_answer(browser, page_server, tmp_path):
    image = make_image(tmp_path / "photo.png", 160, 120)
    open_page(browser, page_server)
    bubble = send_with_files(browser, "What is in this picture?", image)
    assert bubble.get_attribute("data-state") == "done", text_of(bubble)

    thinking = bubble.find_element(By.CSS_SELECTOR, "details.thinking")
    assert thinking.is_displayed()
    assert text_of(thinking.find_element(By.TAG_NAME, "summary")).startswith("Thinking")
    assert text_of(thinking.find_element(By.CLASS_NAME, "thinking-body")) == page_server.model.reasoning
    assert thinking.get_attribute("open") is None, "the thought folds away once the answer starts"
    answer = bubble.find_element(By.CLASS_NAME, "answer")
    assert answer.text.strip() == page_server.model.answer
    assert "finish: stop" in text_of(bubble.find_element(By.CLASS_NAME, "meta"))

    user = browser.find_element(By.CSS_SELECTOR, ".msg.user")
    assert "What is in this picture?" in user.text
    assert user.find_element(By.TAG_NAME, "img").get_attribute("src").startswith("data:image/png;base64,")
    page_text = browser.find_element(By.TAG_NAME, "body").get_attribute("textContent")
    for tag in RAW_TAGS:
        assert tag not in page_text

    body = page_server.recorder.requests[-1]["body"]
    assert body["stream"] is True and body["model"] == SERVED_NAME
    (message,) = body["messages"]
    kinds = [part["type"] for part in message["content"]]
    assert kinds == ["image_url", "text"]
    sent = message["content"][0]["image_url"]["url"]
    assert base64.b64decode(sent.split(",", 1)[1]) == image.read_bytes()

    thinking.find_element(By.TAG_NAME, "summary").click()  # open it for the screenshot
    browser.save_screenshot(SCREENSHOT)


def test_multi_turn_sends_answers_only_and_settings(browser, page_server):
    open_page(browser, page_server)
    browser.find_element(By.ID, "settings-toggle").click()
    for field, value in (("temperature", "0.3"), ("max-tokens", "64"), ("thinking-budget", "40"),
                         ("api-key", "sk-page-test")):
        browser.find_element(By.ID, field).send_keys(value)
    type_prompt(browser, "First question")
    browser.find_element(By.ID, "send").click()
    wait_finished(browser, 1)
    type_prompt(browser, "Second question")
    browser.find_element(By.ID, "send").click()
    second = wait_finished(browser, 2)
    assert second.get_attribute("data-state") == "done"
    assert second.find_element(By.CLASS_NAME, "answer").text.strip() == page_server.model.answer

    request = page_server.recorder.requests[-1]
    body = request["body"]
    assert body["messages"] == [
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": page_server.model.answer},
        {"role": "user", "content": "Second question"},
    ]
    assert (body["temperature"], body["max_tokens"], body["thinking_budget"]) == (0.3, 64, 40)
    assert request["headers"]["authorization"] == "Bearer sk-page-test"

    browser.find_element(By.ID, "new-chat").click()  # the chat so far stays in the list
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
    assert [text_of(b) for b in browser.find_elements(By.CSS_SELECTOR, ".conversation-open")] == ["First question"]
    type_prompt(browser, "Fresh start")
    browser.find_element(By.ID, "send").click()
    wait_finished(browser, 1)
    assert page_server.recorder.requests[-1]["body"]["messages"] == [{"role": "user", "content": "Fresh start"}]


def test_drop_video_and_document_builds_parts(browser, page_server, tmp_path):
    from PIL import Image

    pdf = tmp_path / "slides.pdf"
    Image.new("RGB", (200, 120), "white").save(pdf)
    video = make_video(tmp_path / "clip.mp4")
    notes = tmp_path / "notes.txt"
    notes.write_text("not media")
    open_page(browser, page_server, "/ui")
    drop_files(browser, pdf, video, notes)
    WebDriverWait(browser, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#attachments .chip")) == 2)
    chips = browser.find_elements(By.CSS_SELECTOR, "#attachments .chip")
    assert [c.get_attribute("class") for c in chips] == ["chip chip-file", "chip chip-video"]
    assert "notes.txt" in browser.find_element(By.ID, "status").text  # refused with a reason, not sent
    browser.save_screenshot(ATTACHMENTS_SCREENSHOT)

    chips[1].find_element(By.CLASS_NAME, "chip-remove").click()  # the video goes; the document stays
    assert len(browser.find_elements(By.CSS_SELECTOR, "#attachments .chip")) == 1
    type_prompt(browser, "Summarize the slides")
    before = len(page_server.recorder.requests)
    browser.find_element(By.ID, "send").click()
    bubble = wait_finished(browser, 1)
    assert len(page_server.recorder.requests) == before + 1
    (message,) = page_server.recorder.requests[-1]["body"]["messages"]
    part, text = message["content"]
    assert text == {"type": "text", "text": "Summarize the slides"}
    assert part["type"] == "file" and part["file"]["filename"] == "slides.pdf"
    header, data = part["file"]["file_data"].split(",", 1)
    assert header == "data:application/pdf;base64"
    assert base64.b64decode(data) == pdf.read_bytes()
    # Whether this server build reads documents yet or refuses them, the page ends readably.
    if bubble.get_attribute("data-state") == "error":
        assert "HTTP 4" in text_of(bubble.find_element(By.CSS_SELECTOR, ".error .error-details"))
    else:
        assert bubble.find_element(By.CLASS_NAME, "answer").text.strip() == page_server.model.answer


def send_with_extra_fields(browser, page_server, extra: str, text: str) -> None:
    """A fresh page, the Settings' extra request fields set to `extra`, and `text` sent."""
    open_page(browser, page_server)
    browser.find_element(By.ID, "settings-toggle").click()
    browser.find_element(By.ID, "extra-body").send_keys(extra)
    type_prompt(browser, text)
    browser.find_element(By.ID, "send").click()


def test_server_error_is_readable_and_message_comes_back(browser, page_server):
    send_with_extra_fields(browser, page_server, '{"temperature": 7}', "Will this fail?")
    bubble = wait_finished(browser, 1)
    assert bubble.get_attribute("data-state") == "error"
    words = text_of(bubble.find_element(By.CSS_SELECTOR, ".error .error-words"))
    assert words == "The server refused a setting (temperature): change it in Settings and send again."
    details = bubble.find_element(By.CSS_SELECTOR, ".error details.error-details")
    assert not details.get_attribute("open")  # the raw error is there, folded
    assert text_of(details).startswith("Details") and "HTTP 400" in text_of(details)
    assert "not-sent" in browser.find_element(By.CSS_SELECTOR, ".msg.user").get_attribute("class")
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == "Will this fail?"

    browser.find_element(By.ID, "extra-body").clear()
    browser.find_element(By.ID, "send").click()  # fixed: the restored message goes out and is answered
    bubble = wait_finished(browser, 2)
    assert bubble.get_attribute("data-state") == "done"
    assert page_server.recorder.requests[-1]["body"]["messages"] == [{"role": "user", "content": "Will this fail?"}]


def test_stop_aborts_the_generation(browser, page_server):
    send_with_extra_fields(browser, page_server, '{"ignore_eos": true, "max_tokens": 3000}', "Talk forever")
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.CSS_SELECTOR, ".msg.assistant").get_attribute("data-state") == "streaming")
    stop = browser.find_element(By.ID, "stop")
    assert stop.is_displayed() and not browser.find_element(By.ID, "send").is_displayed()
    stopped_at = time.monotonic()
    stop.click()
    bubble = wait_finished(browser, 1, timeout=10)
    assert bubble.get_attribute("data-state") == "stopped"
    assert "Stopped." in text_of(bubble.find_element(By.CLASS_NAME, "note"))
    assert browser.find_element(By.ID, "send").is_displayed()

    # The server let go of the request: a new one (without ignore_eos) is answered at once, not after 3000 tokens.
    browser.find_element(By.ID, "extra-body").clear()
    type_prompt(browser, "Short one")
    browser.find_element(By.ID, "send").click()
    bubble = wait_finished(browser, 2, timeout=30)
    assert bubble.get_attribute("data-state") == "done"
    assert time.monotonic() - stopped_at < 20
    messages = page_server.recorder.requests[-1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]  # the stopped turn stays, answer only


@pytest.mark.parametrize("text, must_have, must_not_have", [
    ("<img src=x onerror=alert(1)> **bold**", ["&lt;img src=x onerror=alert(1)&gt;", "<strong>bold</strong>"],
     ["<img"]),
    ("[ok](https://example.com) [bad](javascript:alert(1))", ['<a href="https://example.com"'], ['href="javascript']),
    ("```\n<script>alert(1)</script>\n```", ["<pre><code>&lt;script&gt;"], ["<script>"]),
    ("<|begin_of_box|>[10,20,300,400]<|end_of_box|>", ['<span class="box"', "[10,20,300,400]"], ["begin_of_box"]),
    ("1. one\n2. `a<b`", ["<ol>", "<li>one</li>", "<code>a&lt;b</code>"], []),
])
def test_markdown_renderer_escapes_model_text(browser, page_server, text, must_have, must_not_have):
    if not browser.current_url.startswith(page_server.url):
        open_page(browser, page_server)
    html = browser.execute_script("return window.glmvMarkdown.render(arguments[0]);", text)
    for piece in must_have:
        assert piece in html
    for piece in must_not_have:
        assert piece not in html


def test_server_with_api_key_asks_for_it(browser, scripted_model):
    from selenium.webdriver.common.keys import Keys

    from tests.cli.live_server import start_server

    live = start_server(scripted_model.path, with_ui=True, api_key="sk-secret")
    try:
        browser.get(live.url + "/ui")
        browser.execute_script("localStorage.clear(); sessionStorage.clear();")
        browser.get(live.url + "/ui")  # the page itself needs no key; the API does
        WebDriverWait(browser, 20).until(
            lambda d: "The server wants an API key: enter it in Settings." in d.find_element(By.ID, "status").text)
        assert "HTTP 401" in text_of(browser.find_element(By.CSS_SELECTOR, "#status .error-details"))
        assert browser.find_element(By.ID, "settings").is_displayed()  # opened for the user
        browser.find_element(By.ID, "api-key").send_keys("sk-secret", Keys.TAB)
        WebDriverWait(browser, 20).until(
            lambda d: d.execute_script("return document.getElementById('model').value") == SERVED_NAME)
        type_prompt(browser, "Now with the key")
        browser.find_element(By.ID, "send").click()
        bubble = wait_finished(browser, 1)
        assert bubble.get_attribute("data-state") == "done"
        assert bubble.find_element(By.CLASS_NAME, "answer").text.strip() == scripted_model.answer
        assert live.recorder.requests[-1]["headers"]["authorization"] == "Bearer sk-secret"
    finally:
        live.stop()
