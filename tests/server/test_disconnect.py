"""A client that goes away cancels its request: the engine's abort is called, generation stops early (its KV
blocks are freed), the admission slot comes back, and the server keeps serving."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.server.conftest import ENGINES, serve_args, start_server

LONG = {"messages": [{"role": "user", "content": "Count to a million."}], "max_tokens": 7000, "temperature": 0,
        "ignore_eos": True}


@pytest.fixture(scope="module", params=ENGINES)
def server(request, tiny_model_dir):
    s = start_server(serve_args(tiny_model_dir, request.param, "--max-model-len", "8192"))
    yield s
    s.stop()


@pytest.fixture
def aborted(server, monkeypatch):
    """Request ids the server asked the engine to abort."""
    ids: list[str] = []
    real = server.state.engine.abort

    async def spy(request_id: str) -> None:
        ids.append(request_id)
        await real(request_id)

    monkeypatch.setattr(server.state.engine, "abort", spy)
    return ids


def metric(server, name: str) -> float:
    text = httpx.get(server.base_url + "/metrics").text
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def wait_idle(server, timeout: float = 5.0) -> float:
    """Seconds until nothing runs any more (server slot and engine), or fail."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        stats = server.state.engine.stats()
        if server.state.inflight == 0 and stats.get("running", 0) == 0 and stats.get("waiting", 0) == 0:
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"still busy after {timeout}s: inflight={server.state.inflight} {server.state.engine.stats()}")


def assert_still_serving(server):
    r = httpx.post(server.v1 + "/chat/completions", json={"messages": LONG["messages"], "max_tokens": 3}, timeout=60)
    assert r.status_code == 200
    assert r.json()["usage"]["completion_tokens"] == 3


def test_streaming_client_disconnect_aborts(server, aborted):
    tokens_before = metric(server, "glmv_generation_tokens_total")
    with httpx.Client(timeout=60) as c, c.stream("POST", server.v1 + "/chat/completions",
                                                  json={**LONG, "stream": True}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert got[0].startswith("data: ")
        request_id = re.search(r'"id": "([^"]+)"', got[0]).group(1)
    # leaving the block closed the connection mid-stream
    wait_idle(server)
    assert request_id in aborted
    generated = metric(server, "glmv_generation_tokens_total") - tokens_before
    assert 0 < generated < LONG["max_tokens"] / 2, "generation stopped early"
    assert metric(server, 'glmv_request_finished_total{finished_reason="abort"}') >= 1
    if "kv_usage" in server.state.engine.stats():
        assert server.state.engine.stats()["kv_usage"] == 0.0
    assert_still_serving(server)


def test_non_streaming_client_disconnect_aborts(server, aborted):
    before = metric(server, "glmv_requests_aborted_total")
    tokens_before = metric(server, "glmv_generation_tokens_total")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.v1 + "/chat/completions", json=LONG, timeout=httpx.Timeout(60, read=0.5))
    wait_idle(server)
    assert len(aborted) == 1 and aborted[0].startswith("chatcmpl-")
    assert metric(server, "glmv_requests_aborted_total") == before + 1
    assert metric(server, "glmv_generation_tokens_total") - tokens_before < LONG["max_tokens"] / 2
    assert_still_serving(server)


def test_completions_disconnect_aborts_every_prompt(server, aborted):
    body = {"prompt": ["one", "two"], "max_tokens": 7000, "temperature": 0, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.v1 + "/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
    wait_idle(server)
    assert sorted(a.rsplit("-", 1)[1] for a in aborted) == ["0", "1"]
    assert_still_serving(server)
