"""Every error a client can cause: status code and OpenAI's error shape {"error": {message, type, param, code}}."""

from __future__ import annotations

import base64
import json
import threading

import httpx
import openai
import pytest

from glmv.engine.client import EngineOverloadedError
from tests.server.conftest import module_server

CONTEXT = 128
BODY_LIMIT = 64 * 1024
USER = [{"role": "user", "content": "hi"}]


server = module_server("transformers", "--served-model-name", "tiny", "--max-model-len", str(CONTEXT),
                       "--max-request-bytes", str(BODY_LIMIT))


def assert_error(r: httpx.Response, status: int, *, param: str | None = None, code=None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and len(err["message"]) > 10
    assert isinstance(err["type"], str) and err["type"].endswith("Error")
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


def post(server, path: str, body, **kw) -> httpx.Response:
    return httpx.post(server.base_url + path, json=body, timeout=60, **kw)


INVALID_CHAT = [
    pytest.param({"messages": USER, "temperature": 5}, "temperature", id="temperature-range"),
    pytest.param({"messages": USER, "top_p": 0}, "top_p", id="top_p-zero"),
    pytest.param({"messages": USER, "n": 0}, "n", id="n-zero"),
    pytest.param({"messages": USER, "max_tokens": 0}, "max_tokens", id="max_tokens-zero"),
    pytest.param({"messages": USER, "top_logprobs": 50, "logprobs": True}, "top_logprobs", id="top_logprobs-range"),
    pytest.param({"messages": USER, "logit_bias": {"abc": 1}}, "logit_bias", id="logit_bias-key"),
    pytest.param({"messages": USER, "logit_bias": {"99999999": 1}}, "logit_bias", id="logit_bias-id"),
    pytest.param({"messages": USER, "logit_bias": {"5": 1000}}, "logit_bias.5", id="logit_bias-value"),
    pytest.param({"messages": USER, "stop_token_ids": [-1]}, "stop_token_ids", id="stop_token_ids"),
    pytest.param({"messages": USER, "stop": [str(i) for i in range(17)]}, None, id="too-many-stops"),
    pytest.param({"messages": USER, "min_tokens": 10, "max_tokens": 5}, None, id="min-over-max"),
    pytest.param({"messages": USER, "seed": 2**70}, "seed", id="seed-range"),
    pytest.param({"messages": USER, "repetition_penalty": 1e-300, "temperature": 1}, "repetition_penalty",
                 id="repetition_penalty-tiny"),
    pytest.param({"messages": USER, "min_tokens": 1000}, "min_tokens", id="min_tokens-over-context"),
    pytest.param({"messages": USER, "thinking_budget": -1}, "thinking_budget", id="thinking_budget"),
    pytest.param({"messages": []}, "messages", id="no-messages"),
    pytest.param({"model": "tiny"}, "messages", id="missing-messages"),
    pytest.param({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", id="bad-role"),
    pytest.param({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, None, id="part-missing-url"),
    pytest.param({"messages": [{"role": "user", "content": [{"type": "hologram"}]}]}, None, id="unknown-part"),
    pytest.param({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                              "image_url": {"url": "file:///etc/hostname"}}]}]},
                 None, id="file-url-not-allowed"),
]


@pytest.mark.parametrize(("body", "param"), INVALID_CHAT)
def test_invalid_parameters_are_400(server, body, param):
    err = assert_error(post(server, "/v1/chat/completions", body), 400)
    if param is not None:
        assert err["param"] == param


def test_malformed_json_is_400(server):
    r = httpx.post(server.v1 + "/chat/completions", content=b'{"messages": [', timeout=30,
                   headers={"content-type": "application/json"})
    assert_error(r, 400, code="invalid_json")


def test_prompt_longer_than_context_is_400_with_counts(server):
    long = [{"role": "user", "content": "word " * 300}]
    err = assert_error(post(server, "/v1/chat/completions", {"messages": long}), 400,
                       code="context_length_exceeded")
    n = httpx.post(server.base_url + "/tokenize", json={"messages": long}).json()["count"]
    assert str(CONTEXT) in err["message"] and str(n) in err["message"]
    err = assert_error(post(server, "/v1/chat/completions", {"messages": USER, "max_tokens": CONTEXT}), 400,
                       code="context_length_exceeded")
    assert str(CONTEXT) in err["message"]


def test_unknown_model_is_404(server):
    assert_error(post(server, "/v1/chat/completions", {"model": "gpt-4", "messages": USER}), 404, param="model",
                 code="model_not_found")
    assert_error(post(server, "/v1/completions", {"model": "gpt-4", "prompt": "x"}), 404, param="model")
    assert_error(httpx.get(server.v1 + "/models/gpt-4"), 404, param="model")
    assert_error(post(server, "/tokenize", {"model": "gpt-4", "prompt": "x"}), 404)
    with pytest.raises(openai.NotFoundError) as e:
        server.client().chat.completions.create(model="gpt-4", messages=USER)
    assert e.value.body["code"] == "model_not_found"


def test_unknown_route_is_404_and_wrong_method_405(server):
    assert_error(httpx.get(server.v1 + "/engines"), 404)
    assert_error(httpx.post(server.v1 + "/nothing", json={}), 404)
    assert_error(httpx.get(server.v1 + "/chat/completions"), 405)
    assert_error(httpx.delete(server.v1 + "/models"), 405)


def test_body_too_large_is_413(server):
    big = {"messages": [{"role": "user", "content": "x" * (BODY_LIMIT + 10)}]}
    err = assert_error(post(server, "/v1/chat/completions", big), 413, code="request_too_large")
    assert str(BODY_LIMIT) in err["message"]

    def chunked():  # no Content-Length: counted while it arrives
        data = json.dumps(big).encode()
        for i in range(0, len(data), 8192):
            yield data[i:i + 8192]

    r = httpx.post(server.v1 + "/chat/completions", content=chunked(), timeout=30,
                   headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_error(r, 413)


def test_non_json_body_is_415(server):
    r = httpx.post(server.v1 + "/chat/completions", content=b"messages=hi", timeout=30,
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert_error(r, 415, code="unsupported_media_type")
    r = httpx.post(server.v1 + "/completions", content=b"hello", headers={"content-type": "text/plain"})
    assert_error(r, 415)
    # JSON with a charset, and no content type at all, are accepted
    ok = httpx.post(server.base_url + "/tokenize", content=b'{"prompt": "hi"}',
                    headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200
    ok = httpx.post(server.base_url + "/tokenize", content=b'{"prompt": "hi"}')
    assert "content-type" not in ok.request.headers
    assert ok.status_code == 200


def test_unsupported_media_is_415(server):
    text = base64.b64encode(b"just some text, not a picture").decode()
    part = {"type": "image_url", "image_url": {"url": f"data:text/plain;base64,{text}"}}
    err = assert_error(post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": [part]}]}),
                       415)
    assert "content[0]" in err["message"]


def test_engine_overload_is_503_with_retry_after(server, monkeypatch):
    async def overloaded(prompt, params, request_id):
        raise EngineOverloadedError("the engine queue is full")
        yield  # an async generator, like the real one

    monkeypatch.setattr(server.state.engine, "generate", overloaded)
    r = post(server, "/v1/chat/completions", {"messages": USER, "max_tokens": 2})
    assert_error(r, 503)
    assert int(r.headers["retry-after"]) >= 1
    assert server.state.inflight == 0


def test_errors_reach_the_sdk_as_typed_exceptions(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=USER, temperature=9)
    assert e.value.status_code == 400
    assert e.value.body["param"] == "temperature"


# ---- a server that admits one request at a time: overload -----------------------------------------------------

narrow_server = module_server("transformers", "--max-model-len", "4096", "--max-num-seqs", "1",
                              "--max-waiting-requests", "0")


def test_full_server_is_503_then_recovers(narrow_server):
    s = narrow_server
    body = {"messages": USER, "max_tokens": 4000, "temperature": 0, "ignore_eos": True, "stream": True}
    started = threading.Event()
    with httpx.Client(timeout=60) as c, c.stream("POST", s.v1 + "/chat/completions", json=body) as first:
        assert first.status_code == 200
        lines = first.iter_lines()
        next(lines)
        started.set()
        r = httpx.post(s.v1 + "/chat/completions", json={"messages": USER, "max_tokens": 2}, timeout=30)
        assert_error(r, 503, code="overloaded")
        assert r.headers["retry-after"] == "1"
    # the first stream was dropped by the client: its slot comes back
    for _ in range(200):
        if s.state.inflight == 0:
            break
        threading.Event().wait(0.02)
    r = httpx.post(s.v1 + "/chat/completions", json={"messages": USER, "max_tokens": 2}, timeout=30)
    assert r.status_code == 200, r.text
    metrics = httpx.get(s.base_url + "/metrics").text
    assert "glmv_requests_rejected_total 1.0" in metrics


# ---- a server with an API key: 401 ----------------------------------------------------------------------------

keyed_server = module_server("transformers", "--api-key", "s3cret", "--max-model-len", "128")


def test_wrong_or_missing_key_is_401(keyed_server):
    s = keyed_server
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret"}, {"Authorization": "Basic x"}):
        r = httpx.get(s.v1 + "/models", headers=headers)
        assert_error(r, 401, code="invalid_api_key")
        assert r.headers["www-authenticate"] == "Bearer"
    assert_error(post(s, "/v1/chat/completions", {"messages": USER}), 401)
    assert_error(post(s, "/tokenize", {"prompt": "x"}), 401)
    with pytest.raises(openai.AuthenticationError):
        s.client(api_key="wrong").models.list()
    assert [m.id for m in s.client(api_key="s3cret").models.list()]
    reply = s.client(api_key="s3cret").chat.completions.create(model=s.state.default_name, messages=USER,
                                                                max_tokens=3)
    assert reply.usage.completion_tokens == 3
    # open routes
    for path in ("/health", "/metrics", "/version", "/openapi.json"):
        assert httpx.get(s.base_url + path).status_code == 200, path


def test_internal_error_is_500_in_openai_shape_and_counted(server, monkeypatch):
    """Only our own bugs may be a 500: still OpenAI's shape, logged, counted, and the server goes on."""
    async def broken(prompt, params, request_id):
        raise RuntimeError("a bug")
        yield

    monkeypatch.setattr(server.state.engine, "generate", broken)
    r = post(server, "/v1/chat/completions", {"messages": USER, "max_tokens": 2})
    err = assert_error(r, 500)
    assert "RuntimeError" in err["message"]
    monkeypatch.undo()
    metrics = httpx.get(server.base_url + "/metrics").text
    assert 'glmv_http_responses_total{method="POST",route="/v1/chat/completions",status="500"} 1.0' in metrics
    assert post(server, "/v1/chat/completions", {"messages": USER, "max_tokens": 2}).status_code == 200
