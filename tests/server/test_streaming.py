"""Streaming: the deltas joined equal the non-streamed answer (greedy and seeded), usage in the last chunk when
asked, n > 1 streams per index; with the sync and async openai SDK."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.server.conftest import ENGINES, serve_args, start_server


@pytest.fixture(scope="module", params=ENGINES)
def server(request, tiny_model_dir):
    s = start_server(serve_args(tiny_model_dir, request.param, "--served-model-name", "tiny", "--max-model-len",
                                "512"))
    yield s
    s.stop()


MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Describe a red square."}]
SAMPLING = [
    pytest.param({"temperature": 0}, id="greedy"),
    pytest.param({"temperature": 1.0, "top_p": 0.9, "seed": 1234, "extra_body": {"top_k": 50}}, id="seeded"),
]


def joined(chunks) -> dict[int, dict]:
    """Per choice index: the role, the joined content / reasoning deltas and the finish reason."""
    out: dict[int, dict] = {}
    for chunk in chunks:
        for c in chunk.choices:
            d = out.setdefault(c.index, {"role": None, "content": "", "reasoning": "", "finish": None, "chunks": 0})
            d["chunks"] += 1
            if c.delta.role:
                assert d["role"] is None, "the role comes once, in the first chunk of a choice"
                assert d["content"] == "" and d["reasoning"] == ""
                d["role"] = c.delta.role
            d["content"] += c.delta.content or ""
            d["reasoning"] += (c.delta.model_extra or {}).get("reasoning_content") or ""
            if c.finish_reason:
                assert d["finish"] is None
                d["finish"] = c.finish_reason
    return out


@pytest.mark.parametrize("sampling", SAMPLING)
def test_stream_equals_non_stream(server, sampling):
    client = server.client()
    kwargs = dict(model="tiny", messages=MESSAGES, max_tokens=40, **sampling)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    [streamed] = joined(chunks).values()
    message = whole.choices[0].message
    assert streamed["role"] == "assistant"
    assert streamed["content"] == message.content
    assert streamed["reasoning"] == (message.model_extra.get("reasoning_content") or "")
    assert streamed["finish"] == whole.choices[0].finish_reason
    assert chunks[-1].choices[0].finish_reason is not None
    assert all(c.usage is None for c in chunks), "no usage chunk unless asked"
    assert len(message.content) > 0


def test_seed_gives_same_output_and_other_seed_differs(server):
    client = server.client()
    kwargs = dict(model="tiny", messages=MESSAGES, max_tokens=24, temperature=1.5, extra_body={"top_k": 0})
    a = client.chat.completions.create(seed=7, **kwargs).choices[0].message.content
    b = client.chat.completions.create(seed=7, **kwargs).choices[0].message.content
    c = client.chat.completions.create(seed=8, **kwargs).choices[0].message.content
    assert a == b
    assert a != c


def test_usage_in_last_chunk(server):
    client = server.client()
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0)
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert last.usage.completion_tokens == whole.usage.completion_tokens == 12
    assert last.usage.total_tokens == last.usage.prompt_tokens + 12
    assert last.usage.completion_tokens_details.reasoning_tokens == whole.usage.completion_tokens_details.reasoning_tokens
    assert last.usage.prompt_tokens_details.cached_tokens >= 0


def test_sse_wire_format(server):
    """Raw bytes: `data: {...}` events, the role first, `data: [DONE]` last."""
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.v1 + "/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert '"role": "assistant"' in events[0]


def test_n_streams_per_index(server):
    client = server.client()
    kwargs = dict(model="tiny", messages=MESSAGES, max_tokens=16, temperature=1.0, seed=3, n=3)
    whole = client.chat.completions.create(**kwargs)
    assert [c.index for c in whole.choices] == [0, 1, 2]
    streamed = joined(client.chat.completions.create(stream=True, **kwargs))
    assert sorted(streamed) == [0, 1, 2]
    for choice in whole.choices:
        s = streamed[choice.index]
        assert s["role"] == "assistant"
        assert s["content"] == choice.message.content
        assert s["finish"] == choice.finish_reason == "length"
    assert whole.usage.completion_tokens == 3 * 16
    assert len({c.message.content for c in whole.choices}) > 1, "sampled choices differ"


def test_async_client_streaming(server):
    async def main():
        client = server.async_client()
        kwargs = dict(model="tiny", messages=MESSAGES, max_tokens=20, temperature=0)
        whole = await client.chat.completions.create(**kwargs)
        stream = await client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
        chunks = [c async for c in stream]
        both = await asyncio.gather(client.chat.completions.create(**kwargs),
                                    client.chat.completions.create(**kwargs))
        await client.close()
        return whole, chunks, both

    whole, chunks, both = asyncio.run(main())
    [streamed] = joined(chunks).values()
    assert streamed["content"] == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [b.choices[0].message.content for b in both] == [whole.choices[0].message.content] * 2


def test_completions_stream_equals_non_stream(server):
    client = server.client()
    kwargs = dict(model="tiny", prompt="456*123等于多少？<think>\n", max_tokens=30, temperature=0)
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_logprobs(server):
    client = server.client()
    kw = dict(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    if not getattr(server.state.engine, "computes_logprobs", True):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(**kw)
        assert err.value.body["param"] == "logprobs"
        return
    whole = client.chat.completions.create(**kw)
    content = whole.choices[0].logprobs.content
    assert len(content) == 8
    for entry in content:
        assert entry.logprob <= 0
        assert entry.bytes == list(entry.token.encode("utf-8"))
        assert 1 <= len(entry.top_logprobs) <= 3
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)  # greedy: the top token
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs),
                                                                 reverse=True)
    streamed = [e for c in client.chat.completions.create(stream=True, **kw) if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in content]
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0)
    assert plain.choices[0].logprobs is None
