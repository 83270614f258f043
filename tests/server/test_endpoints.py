"""The small endpoints: /health, /version, /v1/models/{id}, /tokenize, /detokenize, /openapi.json, /metrics; the
request log line; --root-path and CORS."""

from __future__ import annotations

import logging
import re

import httpx
import pytest

import glmv
from tests.server.conftest import serve_args, start_server

MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    s = start_server(serve_args(tiny_model_dir, "transformers", "--served-model-name", "tiny", "tiny-alias",
                                "--max-model-len", "256"))
    yield s
    s.stop()


def metrics(server) -> dict[str, float]:
    text = httpx.get(server.base_url + "/metrics").text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) ([0-9.e+-]+)$", text, re.M)}


def test_health_and_version(server):
    r = httpx.get(server.base_url + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert httpx.get(server.base_url + "/version").json() == {"version": glmv.__version__}


def test_web_page_is_served(server):
    for path in ("/", "/ui"):
        r = httpx.get(server.base_url + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/ui" not in httpx.get(server.base_url + "/openapi.json").json()["paths"]


def test_models_list_and_retrieve(server):
    client = server.client()
    assert [m.id for m in client.models.list()] == ["tiny", "tiny-alias"]
    card = client.models.retrieve("tiny-alias")
    assert card.id == "tiny-alias" and card.owned_by == "glmv"
    assert card.model_extra["max_model_len"] == 256
    # either name serves
    r = client.chat.completions.create(model="tiny-alias", messages=MESSAGES, max_tokens=2)
    assert r.model == "tiny-alias"
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
    assert r.model == "tiny"


def test_unknown_fields_are_ignored(server):
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2, "some_future_field": {"x": 1},
            "response_format": {"type": "text"}, "tools": [], "metadata": {"k": "v"}, "store": False,
            "service_tier": "auto", "parallel_tool_calls": True}
    r = httpx.post(server.v1 + "/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 2
    r = httpx.post(server.v1 + "/completions", json={"prompt": "hi", "max_tokens": 2, "whatever": 1}, timeout=60)
    assert r.status_code == 200, r.text


def test_tokenize_and_detokenize(server):
    tok = server.state.tokenizer
    r = httpx.post(server.base_url + "/tokenize", json={"prompt": "Hello world", "return_token_strs": True}).json()
    assert r["tokens"] == tok.encode("Hello world", add_special_tokens=True)
    assert r["count"] == len(r["tokens"]) and r["max_model_len"] == 256
    assert r["token_strs"] == tok.convert_ids_to_tokens(r["tokens"])
    back = httpx.post(server.base_url + "/detokenize", json={"tokens": r["tokens"]}).json()
    assert back == {"prompt": "Hello world"}
    chat = httpx.post(server.base_url + "/tokenize", json={"messages": MESSAGES}).json()
    reply = server.client().chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1)
    assert chat["count"] == reply.usage.prompt_tokens
    assert tok.decode(chat["tokens"]).endswith("<|assistant|>\n")
    no_gen = httpx.post(server.base_url + "/tokenize", json={"messages": MESSAGES,
                                                             "add_generation_prompt": False}).json()
    assert no_gen["count"] < chat["count"]
    bad = httpx.post(server.base_url + "/detokenize", json={"tokens": [10**8]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


def test_openapi_documents_the_api(server):
    spec = httpx.get(server.base_url + "/openapi.json").json()
    paths = spec["paths"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/tokenize", "/detokenize", "/health",
                 "/version"):
        assert path in paths, path
    schemas = spec["components"]["schemas"]
    chat_fields = schemas["ChatCompletionRequest"]["properties"]
    for field in ("messages", "max_completion_tokens", "stream_options", "logit_bias", "top_k", "min_p",
                  "repetition_penalty", "skip_special_tokens", "chat_template_kwargs", "mm_processor_kwargs",
                  "media_io_kwargs", "include_reasoning", "thinking_budget", "reserved_answer_tokens"):
        assert field in chat_fields, field
    assert "echo" in schemas["CompletionRequest"]["properties"]
    assert "400" in paths["/v1/chat/completions"]["post"]["responses"]


def test_metrics_count_requests_tokens_and_latencies(server):
    before = metrics(server)
    client = server.client()
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=7, temperature=0)
    httpx.get(server.v1 + "/nope")
    after = metrics(server)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta('glmv_http_responses_total{method="POST",route="/v1/chat/completions",status="200"}') == 1
    assert delta('glmv_http_responses_total{method="GET",route="other",status="404"}') == 1
    assert delta('glmv_request_finished_total{finished_reason="length"}') == 1
    assert delta("glmv_prompt_tokens_total") == r.usage.prompt_tokens
    assert delta("glmv_generation_tokens_total") == 7
    assert delta("glmv_time_to_first_token_seconds_count") == 1
    assert delta("glmv_inter_token_latency_seconds_count") == 6
    assert delta("glmv_e2e_request_latency_seconds_count") == 1
    for gauge in ("glmv_num_requests_running", "glmv_num_requests_waiting", "glmv_kv_cache_usage_ratio",
                  "glmv_prefix_cache_hit_rate", "glmv_server_requests_in_flight"):
        assert gauge in after
    assert after["glmv_server_requests_in_flight"] == 0
    assert after['glmv_cache_capacity_bytes{cache="media"}'] > 0
    assert after['glmv_cache_capacity_entries{cache="media"}'] == 0  # bounded in bytes only
    assert httpx.get(server.base_url + "/metrics").headers["content-type"].startswith("text/plain")


def test_one_log_line_per_request(server, caplog):
    caplog.set_level(logging.INFO, logger="glmv.server.requests")
    r = server.client().chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3)
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "glmv.server.requests"]
    [line] = [m for m in lines if r.id in m]
    assert "model=tiny" in line and "status=200" in line
    assert f"prompt={r.usage.prompt_tokens}" in line and "completion=3" in line
    assert "finish=length" in line and re.search(r"latency=\d+\.\d+s", line)


# ---- --root-path, CORS, --disable-log-requests ----------------------------------------------------------------

@pytest.fixture(scope="module")
def proxied(tiny_model_dir):
    s = start_server(serve_args(tiny_model_dir, "transformers", "--root-path", "/glmv", "--max-model-len", "128",
                                "--allowed-origins", '["http://app.example"]', "--disable-log-requests"))
    yield s
    s.stop()


def test_root_path_and_cors(proxied, caplog):
    # a proxy serves glmv under /glmv and strips the prefix: routes answer as usual, documents name the prefix
    assert httpx.get(proxied.base_url + "/v1/models").status_code == 200
    spec = httpx.get(proxied.base_url + "/openapi.json").json()
    assert spec["servers"][0]["url"] == "/glmv"
    pre = httpx.options(proxied.v1 + "/chat/completions", headers={
        "Origin": "http://app.example", "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "http://app.example"
    other = httpx.options(proxied.v1 + "/chat/completions", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in other.headers
    caplog.set_level(logging.INFO, logger="glmv.server.requests")
    r = httpx.post(proxied.v1 + "/chat/completions", json={"messages": MESSAGES, "max_tokens": 2},
                   headers={"Origin": "http://app.example"})
    assert r.headers["access-control-allow-origin"] == "http://app.example"
    assert not [rec for rec in caplog.records if rec.name == "glmv.server.requests"]
