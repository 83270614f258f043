"""The page keeps a list of conversations in the browser: new chat, switch, delete (asked first), titled from the
first message, kept across a reload; a sidebar on a desktop, a drawer at phone width with no horizontal scroll."""

from __future__ import annotations

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.ui.test_page import open_page, text_of, type_prompt, wait_finished
from tests.ui.test_page_doors import ARTIFACTS, overflow, viewport


def titles(browser) -> list[str]:
    return [text_of(b) for b in browser.find_elements(By.CSS_SELECTOR, "#conversation-list .conversation-open")]


def shown_user_texts(browser) -> list[str]:
    return [text_of(m) for m in browser.find_elements(By.CSS_SELECTOR, ".msg.user .user-text")]


def ask(browser, text: str, count: int) -> None:
    type_prompt(browser, text)
    browser.find_element(By.ID, "send").click()
    assert wait_finished(browser, count).get_attribute("data-state") == "done"


def test_conversations_are_listed_switched_kept_and_deleted(browser, page_server):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    viewport(browser, 1280, 800)
    try:
        open_page(browser, page_server)
        sidebar = browser.find_element(By.ID, "conversations")
        assert sidebar.is_displayed() and not browser.find_element(By.ID, "conversations-toggle").is_displayed()
        assert titles(browser) == []
        ask(browser, "What colour is the sky on Mars?    And why?", 1)
        assert titles(browser) == ["What colour is the sky on Mars? And why?"]  # from the first message

        browser.find_element(By.ID, "new-chat").click()  # no question asked: nothing is thrown away
        assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
        ask(browser, "Second topic", 1)
        ask(browser, "Second topic, more", 2)
        assert titles(browser) == ["Second topic", "What colour is the sky on Mars? And why?"]  # newest first

        browser.refresh()  # both kept in this browser, the one shown comes back
        WebDriverWait(browser, 10).until(lambda d: len(titles(d)) == 2)
        assert shown_user_texts(browser) == ["Second topic", "Second topic, more"]
        active = browser.find_element(By.CSS_SELECTOR, ".conversation-item.active")
        assert text_of(active.find_element(By.CLASS_NAME, "conversation-open")) == "Second topic"

        browser.find_elements(By.CSS_SELECTOR, ".conversation-open")[1].click()  # switch to the first chat
        assert shown_user_texts(browser) == ["What colour is the sky on Mars?    And why?"]
        page_server.recorder.reset()
        ask(browser, "Go on", 2)  # it carries on with its own history, not the other chat's
        sent = page_server.recorder.requests[-1]["body"]["messages"]
        assert [m["content"] for m in sent] == ["What colour is the sky on Mars?    And why?",
                                                page_server.model.answer, "Go on"]
        assert titles(browser)[0] == "What colour is the sky on Mars? And why?"
        browser.save_screenshot(str(ARTIFACTS / "conversations-1280x800.png"))

        delete = browser.find_elements(By.CSS_SELECTOR, ".conversation-delete")
        delete[1].click()  # "Second topic"
        alert = browser.switch_to.alert
        assert "Second topic" in alert.text
        alert.dismiss()  # changed my mind
        assert len(titles(browser)) == 2
        browser.find_elements(By.CSS_SELECTOR, ".conversation-delete")[1].click()
        browser.switch_to.alert.accept()
        assert titles(browser) == ["What colour is the sky on Mars? And why?"]
        browser.find_element(By.CSS_SELECTOR, ".conversation-delete").click()  # the one shown
        browser.switch_to.alert.accept()
        assert titles(browser) == [] and browser.find_elements(By.CSS_SELECTOR, ".msg") == []
        browser.refresh()
        WebDriverWait(browser, 10).until(lambda d: d.execute_script("return document.readyState") == "complete")
        assert titles(browser) == [] and browser.find_elements(By.CSS_SELECTOR, ".msg") == []
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_the_list_is_a_drawer_at_phone_width(browser, page_server):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    viewport(browser, 390, 844)
    try:
        open_page(browser, page_server)
        ask(browser, "A question asked on the phone", 1)
        browser.find_element(By.ID, "new-chat").click()
        sidebar = browser.find_element(By.ID, "conversations")
        toggle = browser.find_element(By.ID, "conversations-toggle")
        assert not sidebar.is_displayed() and toggle.is_displayed()
        assert toggle.rect["x"] >= 0 and toggle.rect["x"] + toggle.rect["width"] <= 390

        toggle.click()
        WebDriverWait(browser, 5).until(lambda d: sidebar.is_displayed() and sidebar.rect["x"] >= 0)
        assert toggle.get_attribute("aria-expanded") == "true"
        found = overflow(browser)
        assert found["scrollWidth"] <= found["width"] and found["worst"] is None, found
        assert sidebar.rect["x"] + sidebar.rect["width"] <= 390
        browser.save_screenshot(str(ARTIFACTS / "conversations-390x844.png"))

        browser.find_element(By.CSS_SELECTOR, ".conversation-open").click()  # open it: the drawer closes
        WebDriverWait(browser, 5).until(lambda d: not sidebar.is_displayed())
        assert shown_user_texts(browser) == ["A question asked on the phone"]
        found = overflow(browser)
        assert found["scrollWidth"] <= found["width"] and found["worst"] is None, found
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
