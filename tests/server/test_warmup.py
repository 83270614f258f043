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
