"""The warm-up requests (glmv/server/warmup.py) run inside start-up, before the server answers anything."""

from __future__ import annotations

import logging

from tests.server.conftest import serve_args, start_server


def test_warm_up_runs_before_the_server_answers_and_can_be_turned_off(tiny_model_dir, caplog):
    caplog.set_level(logging.INFO, logger="glmv.server")
    s = start_server(serve_args(tiny_model_dir, "glmv", "--max-model-len", "2048"))
    try:
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("warm-up requests took")]
        assert len(lines) == 1  # already logged when the server started accepting connections
        stats = s.state.engine.stats()
        assert stats.get("running", 0) == 0 and stats.get("waiting", 0) == 0  # nothing left behind
        out = s.client().chat.completions.create(model=str(tiny_model_dir), max_tokens=3, temperature=0,
                                                 messages=[{"role": "user", "content": "hi"}])
        assert out.usage.completion_tokens == 3
    finally:
        s.stop()
    caplog.clear()
    s = start_server(serve_args(tiny_model_dir, "glmv", "--max-model-len", "2048", "--no-warmup"))
    try:
        assert not [r for r in caplog.records if r.getMessage().startswith("warm-up requests took")]
    finally:
        s.stop()


def test_the_stream_backend_is_loaded_by_the_warm_up_and_only_by_it():
    """A fresh interpreter has not imported anyio's asyncio backend after FastAPI and Starlette; the warm-up's
    load_stream_backend imports it (so a first streamed answer does not)."""
    import subprocess
    import sys

    probe = ("import asyncio, sys, fastapi, starlette.responses, glmv.server.warmup as w; "
             "before = 'anyio._backends._asyncio' in sys.modules; asyncio.run(w.load_stream_backend()); "
             "print(before, 'anyio._backends._asyncio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_routes_are_prepared_before_the_first_request_and_the_warm_up_counts_nowhere(tiny_model_dir, monkeypatch):
    """FastAPI builds a route's pydantic adapters the first time a request tries it; the warm-up's request through
    the bare router does that at start-up, so a first client request builds none, and no metric counts it."""
    import httpx
    from pydantic import TypeAdapter

    s = start_server(serve_args(tiny_model_dir, "glmv", "--max-model-len", "2048"))
    try:
        built = []
        original = TypeAdapter.__init__

        def counting(self, *args, **kwargs):
            built.append(args[0] if args else kwargs.get("type"))
            original(self, *args, **kwargs)

        monkeypatch.setattr(TypeAdapter, "__init__", counting)
        out = s.client().chat.completions.create(model=str(tiny_model_dir), max_tokens=2, temperature=0,
                                                 messages=[{"role": "user", "content": "hi"}])
        assert out.usage.completion_tokens == 2
        assert built == []
        text = httpx.get(s.base_url + "/metrics").text
        assert 'status="404"' not in text  # the warm-up's request is in no counter
    finally:
        s.stop()
