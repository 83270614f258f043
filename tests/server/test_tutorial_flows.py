"""The tutorial's `vllm serve` flows, verbatim, against `glmv serve` (datawhale self-llm, GLM-4.1V-Thinking vLLM).

Server flags as in the tutorial (--served-model-name, --max_model_len with underscores, --limit-mm-per-prompt,
--allowed-local-media-path /), except a shorter context: the tiny random model rarely stops on its own, and the
tutorial's chat requests set no max_tokens, so a 25,000-token context would make each answer 25,000 tokens long.
"""

from __future__ import annotations

import os

import httpx
import pytest

from tests.server.conftest import ENGINES, serve_args, start_server

MODEL = "GLM-4.1V-9B-Thinking"
CONTEXT = 1536


@pytest.fixture(scope="module", params=ENGINES)
def server(request, tiny_model_dir):
    s = start_server(serve_args(tiny_model_dir, request.param, "--served-model-name", MODEL,
                                "--max_model_len", str(CONTEXT), "--limit-mm-per-prompt",
                                '{"image": 32, "video": 1}', "--allowed-local-media-path", "/"))
    yield s
    s.stop()


# ---- the tutorial's client code (vllm_openai_completions.py), unchanged ----

def get_media_type(file_path):
    video_extensions = {".mp4", ".avi", ".mov"}
    image_extensions = {".jpg", ".jpeg", ".png"}
    _, ext = os.path.splitext(file_path.lower())
    return (
        "video_url"
        if ext in video_extensions
        else "image_url"
        if ext in image_extensions
        else None
    )


def create_content_item(media_path, media_type):
    if media_path.startswith(("http://", "https://")):
        url = media_path
    else:
        url = "file://" + media_path

    if media_type == "video_url":
        return {"type": "video_url", "video_url": {"url": url}}
    else:
        return {"type": "image_url", "image_url": {"url": url}}


def ask(client, messages):
    return client.chat.completions.create(
        model="GLM-4.1V-9B-Thinking",
        messages=messages,
        temperature=1.0,
        top_p=None,
        extra_body={
            "skip_special_tokens": False,
            "repetition_penalty": 1.0,
        },
    )


# ---- checks ----

def prompt_tokens_of(server, messages) -> int:
    """What /tokenize counts for these messages (template + media placeholders)."""
    r = httpx.post(server.base_url + "/tokenize", json={"model": MODEL, "messages": messages}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["count"]


def check_chat_answer(server, response, messages) -> None:
    assert response.object == "chat.completion"
    assert response.model == MODEL
    assert response.id.startswith("chatcmpl-")
    choice = response.choices[0]
    assert choice.finish_reason in ("stop", "length")
    answer = choice.message.content.strip()  # the tutorial's print(...content.strip())
    assert isinstance(answer, str)
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert tag not in answer
        assert tag not in (choice.message.model_extra.get("reasoning_content") or "")
    usage = response.usage
    assert usage.prompt_tokens == prompt_tokens_of(server, messages)
    assert usage.completion_tokens >= 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens + usage.completion_tokens <= CONTEXT


def test_curl_models(server):
    """`curl http://localhost:8000/v1/models`"""
    r = httpx.get(server.base_url + "/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert card["id"] == MODEL
    assert card["object"] == "model"
    assert isinstance(card["created"], int)
    assert card["owned_by"] == "glmv"
    assert card["root"] == str(server.state.model_config.path)
    assert card["max_model_len"] == CONTEXT
    assert card["permission"][0]["object"] == "model_permission"
    # and through the SDK
    assert [m.id for m in server.client().models.list()] == [MODEL]


def test_curl_completions_greedy(server):
    """The tutorial's curl to /v1/completions: "456*123等于多少？<think>\\n", max_tokens 1024, temperature 0."""
    payload = {"model": "GLM-4.1V-9B-Thinking", "prompt": "456*123等于多少？<think>\n", "max_tokens": 1024,
               "temperature": 0}
    r = httpx.post(server.base_url + "/v1/completions", headers={"Content-Type": "application/json"},
                   json=payload, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["model"] == MODEL
    [choice] = body["choices"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    prompt_ids = server.state.tokenizer.encode(payload["prompt"], add_special_tokens=True)
    assert usage["prompt_tokens"] == len(prompt_ids)
    assert 1 <= usage["completion_tokens"] <= 1024
    # The prompt opens the thought: what the model writes before any </think> counts as reasoning.
    assert usage["completion_tokens_details"]["reasoning_tokens"] >= 1
    # temperature 0 is greedy: the same request gives the same text
    again = httpx.post(server.base_url + "/v1/completions", json=payload, timeout=120).json()
    assert again["choices"][0]["text"] == choice["text"]


def media_messages(media_dir, names: list[str], text: str) -> list[dict]:
    """One user turn as the tutorial's client builds it: each file's part (its type from its extension), then the
    question."""
    paths = [str(media_dir / name) for name in names]
    parts = [create_content_item(path, get_media_type(path)) for path in paths]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def test_chat_one_image_by_file_url(server, media_dir):
    client = server.client()
    messages = media_messages(media_dir, ["demo1.png"], "这张图是什么")
    response = ask(client, messages)
    check_chat_answer(server, response, messages)
    text_only = [{"role": "user", "content": [{"type": "text", "text": "这张图是什么"}]}]
    assert response.usage.prompt_tokens > prompt_tokens_of(server, text_only) + 4  # the image's placeholders


def test_chat_two_images(server, media_dir):
    client = server.client()
    messages = media_messages(media_dir, ["demo2-1.JPG", "demo2-2.JPG"], "这两张图像之间可能有哪些关联？")
    response = ask(client, messages)
    check_chat_answer(server, response, messages)
    one = [{"role": "user", "content": messages[0]["content"][:1] + messages[0]["content"][2:]}]
    assert response.usage.prompt_tokens > prompt_tokens_of(server, one)


def test_chat_video(server, media_dir):
    client = server.client()
    assert get_media_type(str(media_dir / "demo3.mp4")) == "video_url"
    messages = media_messages(media_dir, ["demo3.mp4"], "这个视频的内容是什么？")
    response = ask(client, messages)
    check_chat_answer(server, response, messages)
    text_only = [{"role": "user", "content": [{"type": "text", "text": "这个视频的内容是什么？"}]}]
    assert response.usage.prompt_tokens > prompt_tokens_of(server, text_only) + 4  # the frames' placeholders
