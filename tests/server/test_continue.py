"""continue_final_message through HTTP with the real openai SDK: the prefill is kept verbatim and the output is split
from the state the prefill leaves (a prefilled `<think>` continues the thought; `<think></think><answer>` is answer).

The tiny model's weights are random, so the tests steer it with logit_bias on the tags: what is asserted is where
the text lands (reasoning or content) and what the prompt holds, which only the prefill decides.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from tests.server.conftest import serve_args, start_server

USER = {"role": "user", "content": "Describe the picture."}
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    s = start_server(serve_args(tiny_model_dir, "glmv", "--served-model-name", "tiny", "--max-model-len", "512"))
    yield s
    s.stop()


def tag_id(server, tag: str) -> str:
    ids = server.state.tokenizer.encode(tag, add_special_tokens=False)
    assert len(ids) == 1
    return str(ids[0])


def never(server, *tags: str) -> dict[str, float]:
    return {tag_id(server, t): -100.0 for t in tags}


def prompt_text(server, messages: list[dict], **extra) -> str:
    r = httpx.post(server.base_url + "/tokenize", json={"model": "tiny", "messages": messages, **extra}, timeout=30)
    assert r.status_code == 200, r.text
    return server.state.tokenizer.decode(r.json()["tokens"])


def test_prefill_is_kept_verbatim(server):
    prefill = "<think>The picture shows  a cat"  # two spaces, an open thought: both must survive
    text = prompt_text(server, [USER, {"role": "assistant", "content": prefill}], **CONTINUE)
    assert text.endswith("<|assistant|>\n" + prefill), text
    # Without continue_final_message the same turn is history: answer only, and a new turn is opened.
    text = prompt_text(server, [USER, {"role": "assistant", "content": prefill}])
    assert "The picture shows" not in text and text.endswith("<|assistant|>\n")


def test_prefilled_thought_continues_as_reasoning(server):
    client = server.client()
    messages = [USER, {"role": "assistant", "content": "<think>Let me look"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=1.0, seed=1,
                                       extra_body={**CONTINUE, "logit_bias": never(server, "</think>", "<answer>",
                                                                                   "</answer>")})
    m = r.choices[0].message
    assert m.content in (None, ""), "no `</think>` was written, so nothing is answer"
    assert m.reasoning_content, "the continued thought is reasoning"
    assert r.usage.completion_tokens_details.reasoning_tokens == r.usage.completion_tokens
    # Streamed, the same split.
    parts = list(client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=12, temperature=1.0, seed=1, stream=True,
        extra_body={**CONTINUE, "logit_bias": never(server, "</think>", "<answer>", "</answer>")}))
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in parts if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    assert reasoning == m.reasoning_content and content == ""


def test_prefilled_empty_thought_and_answer_is_all_answer(server):
    client = server.client()
    messages = [USER, {"role": "assistant", "content": "<think></think><answer>"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=1.0, seed=2,
                                       extra_body={**CONTINUE, "logit_bias": never(server, "<think>", "</think>")})
    m = r.choices[0].message
    assert m.content, "the output is the answer"
    assert not m.reasoning_content
    assert r.usage.completion_tokens_details.reasoning_tokens == 0


def test_prefilled_answer_is_constrained_at_once(server):
    """With the answer opened by the prefill, a json_schema grammar applies from the first generated token."""
    schema = {"type": "object", "properties": {"k": {"enum": ["v", "w"]}}, "required": ["k"],
              "additionalProperties": False}
    r = server.client().chat.completions.create(
        model="tiny", messages=[USER, {"role": "assistant", "content": "<think></think><answer>"}], max_tokens=30,
        temperature=1.0, seed=3, response_format={"type": "json_schema", "json_schema": {"name": "k", "schema": schema}},
        extra_body=CONTINUE)
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    assert not r.choices[0].message.reasoning_content


def test_continue_needs_a_last_assistant_message(server):
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(model="tiny", messages=[USER], max_tokens=4, extra_body=CONTINUE)
    assert err.value.body["param"] == "continue_final_message"
