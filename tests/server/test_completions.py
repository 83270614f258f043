"""POST /v1/completions: prompt as text, list of texts, token ids, lists of token ids; echo; n; logprobs; stream."""

from __future__ import annotations

import openai
import pytest

from tests.server.conftest import ENGINES, live_server

PROMPT = "456*123等于多少？<think>\n"


@pytest.fixture(scope="module", params=ENGINES)
def server(request, tiny_model_dir):
    with live_server(tiny_model_dir, request.param, "--served-model-name", "tiny", "alias",
                     "--max-model-len", "256") as s:
        yield s


def ids_of(server, text: str) -> list[int]:
    return server.state.tokenizer.encode(text, add_special_tokens=True)


def test_prompt_forms_agree(server):
    """Text, token ids, and the one-element list forms give the same greedy continuation."""
    client = server.client()
    ids = ids_of(server, PROMPT)
    kw = dict(model="tiny", max_tokens=12, temperature=0)
    by_text = client.completions.create(prompt=PROMPT, **kw)
    by_ids = client.completions.create(prompt=ids, **kw)
    by_text_list = client.completions.create(prompt=[PROMPT], **kw)
    by_ids_list = client.completions.create(prompt=[ids], **kw)
    texts = {r.choices[0].text for r in (by_text, by_ids, by_text_list, by_ids_list)}
    assert len(texts) == 1
    assert by_text.object == "text_completion"
    assert by_text.id.startswith("cmpl-")
    assert by_text.usage.prompt_tokens == by_ids.usage.prompt_tokens == len(ids)
    assert by_text.usage.completion_tokens == 12
    assert by_text.choices[0].finish_reason == "length"


def test_several_prompts_and_n(server):
    client = server.client()
    prompts = ["Hello", "The sky is", "456*123="]
    r = client.completions.create(model="alias", prompt=prompts, max_tokens=5, temperature=1.0, seed=11, n=2)
    assert r.model == "alias"
    assert [c.index for c in r.choices] == list(range(6))
    singles = [client.completions.create(model="tiny", prompt=p, max_tokens=5, temperature=1.0, seed=11, n=2)
               for p in prompts]
    for i, single in enumerate(singles):
        for j in range(2):
            assert r.choices[i * 2 + j].text == single.choices[j].text
    assert r.usage.prompt_tokens == sum(len(ids_of(server, p)) for p in prompts)
    assert r.usage.completion_tokens == 6 * 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_several_token_prompts_stream(server):
    client = server.client()
    prompts = [ids_of(server, "Hello"), ids_of(server, "The sky is")]
    whole = client.completions.create(model="tiny", prompt=prompts, max_tokens=6, temperature=0)
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for chunk in client.completions.create(model="tiny", prompt=prompts, max_tokens=6, temperature=0, stream=True):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert texts == {c.index: c.text for c in whole.choices}
    assert finishes == {0: "length", 1: "length"}


def test_echo(server):
    client = server.client()
    plain = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0)
    echoed = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    ids = ids_of(server, "Hello world")
    echoed_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=4, temperature=0, echo=True)
    assert echoed_ids.choices[0].text.startswith(server.state.tokenizer.decode(ids))
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, echo=True,
                                            stream=True))
    assert chunks[0].choices[0].text == PROMPT
    assert "".join(c.choices[0].text for c in chunks) == echoed.choices[0].text


def test_stop_string_and_stop_token(server):
    client = server.client()
    base = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    visible = base.replace("\ufffd", "")
    stop = visible[len(visible) // 2:][:2]
    assert stop.strip(), "the tiny model writes some visible text"
    cut = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True})
    assert cut.choices[0].finish_reason == "stop"
    assert stop not in cut.choices[0].text
    assert base.startswith(cut.choices[0].text)
    assert cut.choices[0].model_extra["stop_reason"] == stop
    kept = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop],
                                     extra_body={"ignore_eos": True, "include_stop_str_in_output": True})
    assert kept.choices[0].text == cut.choices[0].text + stop
    # a stop token id: force token X everywhere with logit_bias; with X as a stop token the choice ends at once
    [x] = server.state.tokenizer.encode("a", add_special_tokens=False)
    forced = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0,
                                       logit_bias={str(x): 100})
    assert forced.choices[0].text == "aaaaa"
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0, logit_bias={str(x): 100},
                                  extra_body={"stop_token_ids": [x]})
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].model_extra["stop_reason"] == x
    assert r.choices[0].text == ""
    assert r.usage.completion_tokens == 1


def test_logprobs_legacy_shape(server):
    client = server.client()
    kw = dict(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    if not getattr(server.state.engine, "computes_logprobs", True):
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(**kw)
        assert err.value.body["param"] == "logprobs"
        return
    r = client.completions.create(**kw)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert all(x <= 0 for x in lp.token_logprobs)
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 1 <= len(top) <= 4
        assert top[token] == pytest.approx(logprob, abs=1e-6)
        assert max(top.values()) == pytest.approx(logprob, abs=1e-4)  # greedy picks the most likely token
    assert lp.text_offset == sorted(lp.text_offset)


def test_completion_errors(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="", max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt=[], max_tokens=4)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt=[10**9], max_tokens=4)
    assert "out of range" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt="x", suffix="y", max_tokens=4)
    assert err.value.body["param"] == "suffix"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt="x", max_tokens=300)
    assert err.value.body["code"] == "context_length_exceeded"
    assert "256" in err.value.message and "300" in err.value.message
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=4)
