"""Fixtures for the web page tests: the real server with the page mounted (tests/cli/live_server.py), serving the
scripted tiny model, and a headless Debian chromium driven by selenium through /usr/bin/chromedriver."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli.live_server import RecordingApp, start_server
from tests.cli.scripted_model import ScriptedModel, make_scripted_model

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@dataclass
class PageServer:
    url: str
    model: ScriptedModel
    recorder: RecordingApp


@pytest.fixture(scope="session")
def scripted_model(tiny_model_dir, tmp_path_factory) -> ScriptedModel:
    return make_scripted_model(tiny_model_dir, tmp_path_factory.mktemp("scripted") / "model")


@pytest.fixture(scope="module")
def page_server(scripted_model):
    live = start_server(scripted_model.path, with_ui=True)
    yield PageServer(live.url, scripted_model, live.recorder)
    live.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless chromium with a fresh profile; fails (never skips) when `make system-deps` was not run."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.fail(f"{path} is missing: run `make system-deps` (installs Debian's chromium and chromium-driver).")
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
