"""Fixtures for the terminal doors: the scripted tiny model, a live server for --url runs, and a subprocess runner."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.cli.live_server import LiveServer, start_server
from tests.cli.scripted_model import ScriptedModel, make_scripted_model

GLMV = [sys.executable, "-m", "glmv.cli.main"]


def door_env() -> dict[str, str]:
    """The child's environment: one CPU thread, offline, no colours unless a test asks for a terminal."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("NO_COLOR", None)
    return env


def run_glmv(args: list[str], stdin: str = "", timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*GLMV, *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                          env=door_env())


@pytest.fixture(scope="session")
def scripted_model(tiny_model_dir, tmp_path_factory) -> ScriptedModel:
    return make_scripted_model(tiny_model_dir, tmp_path_factory.mktemp("scripted") / "model")


@pytest.fixture(scope="module")
def live_server(scripted_model) -> LiveServer:
    live = start_server(scripted_model.path, with_ui=False)
    yield live
    live.stop()
