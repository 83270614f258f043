"""The page as a new user meets it: phone and desktop widths, a chat that fills the context and goes on, grounding
boxes over the image, Regenerate / Copy / Edit, the conversation kept across a reload, New chat asking first."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.cli.live_server import start_looping_server
from tests.media_factory import make_image
from tests.ui.test_page import attach, open_page, text_of, type_prompt, wait_finished

ARTIFACTS = Path(__file__).resolve().parents[2] / ".cache" / "test-artifacts" / "ui"


def viewport(browser, width: int, height: int) -> None:
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})


def overflow(browser) -> dict:
    """How far the page, or any element on it, reaches past the right edge of the viewport."""
    return browser.execute_script("""
        const w = window.innerWidth;
        let worst = null;
        for (const el of document.querySelectorAll('body *')) {
          const r = el.getBoundingClientRect();
          if (r.width && r.right > w + 0.5 && !(worst && worst.right >= r.right))
            worst = {tag: el.tagName, id: el.id, cls: el.className, right: r.right};
        }
        return {scrollWidth: document.documentElement.scrollWidth, width: w, worst: worst};""")


@pytest.mark.parametrize("width, height", [(390, 844), (1280, 800)])
def test_the_page_fits_phone_and_desktop_widths(browser, page_server, tmp_path, width, height):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    viewport(browser, width, height)
    try:
        open_page(browser, page_server)
        type_prompt(browser, "What is in this picture?")
        attach(browser, make_image(tmp_path / "photo.png", 320, 200))
        browser.find_element(By.ID, "send").click()
        wait_finished(browser, 1)
        browser.find_element(By.ID, "settings-toggle").click()
        found = overflow(browser)
        browser.save_screenshot(str(ARTIFACTS / f"page-{width}x{height}.png"))
        assert found["scrollWidth"] <= found["width"] and found["worst"] is None, found
        settings = browser.find_element(By.ID, "settings-toggle").rect
        assert settings["x"] + settings["width"] <= width  # Settings is on screen
        prompt = browser.find_element(By.ID, "prompt")
        assert browser.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth", prompt)
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


@pytest.fixture(scope="module")
def long_server(tiny_model_dir, tmp_path_factory):
    live = start_looping_server(tiny_model_dir, tmp_path_factory, max_model_len=4096)
    yield live
    live.stop()


def test_six_turns_of_4000_token_answers_in_a_4096_context_never_jam(browser, long_server):
    class Page:  # open_page wants .url
        url = long_server.url

    open_page(browser, Page)
    browser.find_element(By.ID, "settings-toggle").click()
    browser.find_element(By.ID, "max-tokens").send_keys("4000")
    browser.find_element(By.ID, "settings-toggle").click()
    offers = 0
    for turn in range(1, 7):
        type_prompt(browser, f"Tell me more, part {turn}")
        browser.find_element(By.ID, "send").click()

        def answered_or_offered(d, turn=turn):
            bubbles = d.find_elements(By.CSS_SELECTOR, ".msg.assistant")
            if len(bubbles) >= turn and bubbles[turn - 1].get_attribute("data-state") in ("done", "error", "stopped"):
                return "answered"
            return "offered" if d.find_elements(By.CSS_SELECTOR, ".msg.offer .action-drop-oldest") else False

        if WebDriverWait(browser, 240).until(answered_or_offered) == "offered":
            offers += 1
            assert "no longer fits the model's context" in text_of(browser.find_element(By.CSS_SELECTOR, ".msg.offer"))
            browser.find_element(By.CSS_SELECTOR, ".msg.offer .action-drop-oldest").click()
        bubble = wait_finished(browser, turn, timeout=240)
        assert bubble.get_attribute("data-state") == "done", text_of(bubble)
        assert not bubble.find_elements(By.CSS_SELECTOR, ".error"), text_of(bubble)
        assert "lazy dog" in text_of(bubble.find_element(By.CSS_SELECTOR, ".answer"))
    assert offers >= 1  # the history filled the context and the page offered a way on
    notes = " ".join(text_of(n) for n in browser.find_elements(By.CSS_SELECTOR, ".msg.assistant .note"))
    assert "Max tokens lowered from 4000" in notes
    for request in long_server.recorder.requests:
        assert request["body"]["max_tokens"] <= 4000


def test_two_boxes_are_drawn_and_numbered_over_the_image(browser, page_server, tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    image = make_image(tmp_path / "scene.png", 400, 300)
    data = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    answer = ("The cat is at <|begin_of_box|>[[100,200,400,600]]<|end_of_box|> and the dog at "
              "<|begin_of_box|>[[500,100,900,700]]<|end_of_box|>.")
    conversation = [
        {"role": "user", "text": "Where are the cat and the dog?",
         "attachments": [{"kind": "image", "name": "scene.png", "mime": "image/png", "size": 1, "dataUrl": data}]},
        {"role": "assistant", "answer": answer, "reasoning": "Looking."},
    ]
    open_page(browser, page_server)
    browser.execute_script("localStorage.setItem('glmv.conversation', arguments[0]);", json.dumps(conversation))
    browser.refresh()
    WebDriverWait(browser, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".grounding-box")) == 2)
    img = browser.find_element(By.CSS_SELECTOR, ".grounding img")
    WebDriverWait(browser, 10).until(lambda d: img.rect["width"] > 0)
    frame = img.rect
    boxes = browser.find_elements(By.CSS_SELECTOR, ".grounding-box")
    assert [text_of(b) for b in boxes] == ["1", "2"]
    for box, coords in zip(boxes, ([100, 200, 400, 600], [500, 100, 900, 700]), strict=True):
        r = box.rect
        got = [(r["x"] - frame["x"]) / frame["width"], (r["y"] - frame["y"]) / frame["height"],
               (r["x"] + r["width"] - frame["x"]) / frame["width"], (r["y"] + r["height"] - frame["y"]) / frame["height"]]
        assert got == pytest.approx([c / 1000 for c in coords], abs=0.02)
    browser.save_screenshot(str(ARTIFACTS / "boxes.png"))


def test_regenerate_copy_edit_reload_and_new_chat(browser, page_server):
    open_page(browser, page_server)
    browser.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": page_server.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    type_prompt(browser, "First question")
    browser.find_element(By.ID, "send").click()
    wait_finished(browser, 1)

    browser.refresh()  # the conversation is kept in this browser
    WebDriverWait(browser, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg")) == 2)
    assert text_of(browser.find_element(By.CSS_SELECTOR, ".msg.user")) .startswith("First question")
    assert page_server.model.answer in text_of(browser.find_element(By.CSS_SELECTOR, ".msg.assistant .answer"))

    browser.find_element(By.CSS_SELECTOR, ".msg.assistant .action-copy").click()
    WebDriverWait(browser, 5).until(lambda d: text_of(d.find_element(By.ID, "status")) == "Answer copied.")
    copied = browser.execute_async_script("navigator.clipboard.readText().then(arguments[0]);")
    assert copied == page_server.model.answer

    page_server.recorder.reset()
    browser.find_element(By.CSS_SELECTOR, ".msg.assistant .action-regenerate").click()
    wait_finished(browser, 1)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 1
    assert page_server.recorder.requests[-1]["body"]["messages"] == [{"role": "user", "content": "First question"}]

    browser.find_element(By.CSS_SELECTOR, ".msg.user .action-edit").click()
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == "First question"
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
    type_prompt(browser, "Edited question")
    browser.find_element(By.ID, "send").click()
    wait_finished(browser, 1)
    assert page_server.recorder.requests[-1]["body"]["messages"] == [{"role": "user", "content": "Edited question"}]

    browser.find_element(By.ID, "new-chat").click()  # a new chat; the edited one stays in the list
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
    browser.refresh()
    WebDriverWait(browser, 10).until(lambda d: d.execute_script("return document.readyState") == "complete")
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []  # the new, empty chat is the one shown
    assert [text_of(b) for b in browser.find_elements(By.CSS_SELECTOR, ".conversation-open")] == ["Edited question"]
