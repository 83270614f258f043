"""Thinking through HTTP: reasoning_content / reasoning vs content, streamed and not, and the thinking budget.

The server runs with a --chat-template whose generation prompt opens the thought (`<|assistant|>\\n<think>`), so
what the tiny model writes before `</think>` is reasoning. A logit_bias on `</think>` makes the model close its
thought at a position the test finds from the raw text (/v1/completions on the same prompt ids); a +100 bias on a
filler token makes it think forever, so every `</think><answer>` under a thinking budget was forced by the engine.
"""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import ENGINES, serve_args, start_server, think_end_id

MESSAGES = [{"role": "user", "content": "What is 2+2?"}]
TAGS = ("<think>", "</think>", "<answer>", "</answer>")


@pytest.fixture(scope="module", params=ENGINES)
def server(request, tiny_model_dir, think_template):
    s = start_server(serve_args(tiny_model_dir, request.param, "--served-model-name", "tiny", "--max-model-len",
                                "512", "--chat-template", str(think_template)))
    yield s
    s.stop()


def prompt_ids(server) -> list[int]:
    r = httpx.post(server.base_url + "/tokenize", json={"messages": MESSAGES})
    ids = r.json()["tokens"]
    assert server.state.tokenizer.decode(ids).endswith("<|assistant|>\n<think>")
    return ids


def expected_split(raw: str) -> tuple[str, str]:
    """The contract: reasoning is everything before the first </think>; the answer is the rest, tags removed."""
    before, _, after = raw.partition("</think>")
    return before.strip(), after.replace("</think>", "").strip()


@pytest.fixture(scope="module")
def closing_bias(server):
    """A </think> bias with which the greedy tiny model thinks a while, then closes its thought and goes on."""
    end = think_end_id(server)
    ids = prompt_ids(server)
    for bias in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5):
        r = httpx.post(server.v1 + "/completions", json={"prompt": ids, "max_tokens": 24, "temperature": 0,
                                                         "ignore_eos": True, "logit_bias": {str(end): bias}})
        body = r.json()
        raw = body["choices"][0]["text"]
        if any(t in raw for t in ("<think>", "<answer>", "</answer>")):
            continue
        reasoning, content = expected_split(raw)
        if "</think>" in raw and reasoning and content:
            return {"bias": {str(end): bias}, "raw": raw, "reasoning": reasoning, "content": content,
                    "reasoning_tokens": body["usage"]["completion_tokens_details"]["reasoning_tokens"]}
    pytest.fail("no </think> bias makes the tiny model close its thought mid-answer")


def chat(server, **kw):
    kw = {"max_tokens": 24, **kw}
    return server.client().chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, **kw)


def test_reasoning_and_content_split(server, closing_bias):
    r = chat(server, logit_bias=closing_bias["bias"], extra_body={"ignore_eos": True})
    message = r.choices[0].message
    assert message.model_extra["reasoning_content"] == closing_bias["reasoning"]
    assert message.model_extra["reasoning"] == closing_bias["reasoning"]
    assert message.content == closing_bias["content"]
    for tag in TAGS:
        assert tag not in message.content and tag not in message.model_extra["reasoning_content"]
    details = r.usage.completion_tokens_details
    assert details.reasoning_tokens == closing_bias["reasoning_tokens"]
    assert 1 <= details.reasoning_tokens < r.usage.completion_tokens == 24


def test_reasoning_and_content_split_streamed(server, closing_bias):
    chunks = list(chat(server, logit_bias=closing_bias["bias"], stream=True, stream_options={"include_usage": True},
                       extra_body={"ignore_eos": True}))
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                        for c in chunks if c.choices)
    also = "".join((c.choices[0].delta.model_extra or {}).get("reasoning") or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert reasoning == also == closing_bias["reasoning"]
    assert content == closing_bias["content"]
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == closing_bias["reasoning_tokens"]
    for c in chunks:
        for piece in (c.choices[0].delta.content, (c.choices[0].delta.model_extra or {}).get("reasoning_content"))\
                if c.choices else ():
            assert not any(t in (piece or "") for t in TAGS)


def test_include_reasoning_false_leaves_it_out(server, closing_bias):
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 24, "temperature": 0, "ignore_eos": True,
            "logit_bias": closing_bias["bias"], "include_reasoning": False}
    r = httpx.post(server.v1 + "/chat/completions", json=body, timeout=60).json()
    message = r["choices"][0]["message"]
    assert "reasoning_content" not in message and "reasoning" not in message
    assert message["content"] == closing_bias["content"]
    with httpx.stream("POST", server.v1 + "/chat/completions", json={**body, "stream": True}, timeout=60) as s:
        text = "".join(s.iter_text())
    assert "reasoning" not in text
    assert r["usage"]["completion_tokens_details"]["reasoning_tokens"] == closing_bias["reasoning_tokens"]


@pytest.fixture(scope="module")
def filler(server) -> int:
    tok = server.state.tokenizer
    encoded = [tok.encode(w, add_special_tokens=False) for w in (" The", " the", "The", "A")]
    return next(e[0] for e in encoded if len(e) == 1)


@pytest.mark.parametrize("budget", [1, 5])
def test_thinking_budget_caps_reasoning_and_answers(server, filler, budget):
    kw = dict(max_tokens=budget + 8, logit_bias={str(filler): 100},
              extra_body={"ignore_eos": True, "thinking_budget": budget})
    word = server.state.tokenizer.decode([filler])
    for r in (chat(server, **kw), None):
        if r is None:  # the same through the stream
            chunks = list(chat(server, stream=True, stream_options={"include_usage": True}, **kw))
            reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                                for c in chunks if c.choices)
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            usage = chunks[-1].usage
        else:
            reasoning, content, usage = r.choices[0].message.model_extra["reasoning_content"], \
                r.choices[0].message.content, r.usage
        assert reasoning == (word * budget).strip()
        reasoning_ids = server.state.tokenizer.encode(reasoning, add_special_tokens=False)
        assert len(reasoning_ids) <= budget
        # the answer section is there: forced </think><answer>, then the model answers (fillers)
        assert content == (word * 6).strip()
        assert usage.completion_tokens == budget + 8
        assert usage.completion_tokens_details.reasoning_tokens == budget + 1  # the thought and its closing tag


def test_reserved_answer_tokens(server, filler):
    r = chat(server, max_tokens=12, logit_bias={str(filler): 100},
             extra_body={"ignore_eos": True, "reserved_answer_tokens": 4})
    word = server.state.tokenizer.decode([filler])
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content == (word * 4).strip()
    assert r.choices[0].message.model_extra["reasoning_content"] == (word * 6).strip()


def test_thought_cut_by_max_tokens_is_all_reasoning(server, filler):
    r = chat(server, max_tokens=6, logit_bias={str(filler): 100}, extra_body={"ignore_eos": True})
    word = server.state.tokenizer.decode([filler])
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.model_extra["reasoning_content"] == (word * 6).strip()
    assert r.choices[0].message.content == ""
    assert r.usage.completion_tokens_details.reasoning_tokens == 6
