"""glmv on top of vLLM (`--engine vllm`), against vLLM's real CPU build and the tiny model, float32.

The transformers reference engine is the oracle: vLLM must give the same greedy tokens and text for text, image and
video prompts, stop where generation_config says (`</answer>`), and close an overlong thought the way glmv's thinking
budget does, token for token. Through the server, the real openai SDK sees glmv's reasoning split on top of vLLM.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from glmv.config import EngineConfig, ModelConfig
from glmv.engine.client import PromptTooLongError
from glmv.engine.reference import TransformersEngine
from glmv.inputs.loaded import LoadedMedia
from glmv.inputs.processor import PromptBuilder
from glmv.inputs.prompt import Prompt
from glmv.sampling import FinishReason, SamplingParams
from tests.engine.media import noise_image, read_mp4, write_mp4


@pytest.fixture(scope="module")
def builder(tiny_model_dir) -> PromptBuilder:
    return PromptBuilder(Path(tiny_model_dir))


@pytest.fixture(scope="module")
def reference(tiny_model_dir, builder) -> TransformersEngine:
    config = EngineConfig(model=str(tiny_model_dir), engine="transformers", device="cpu", dtype="float32",
                          max_model_len=512)
    return TransformersEngine(ModelConfig.from_dir(tiny_model_dir), config, builder.tokenizer)


@pytest.fixture(scope="module")
def engine(vllm_server):
    return vllm_server.state.engine


@pytest.fixture(scope="module")
def prompts(builder, tmp_path_factory) -> dict[str, Prompt]:
    """Plain chat prompts (glmv's own template, not the thinking one): text, one image, one video."""
    frames, meta = read_mp4(write_mp4(tmp_path_factory.mktemp("video") / "clip.mp4"))

    def chat(parts, media=None) -> Prompt:
        return builder.build(builder.render([{"role": "user", "content": parts}]), media)

    return {
        "text": chat("Hello there. What is 456*123? Let me think step by step."),
        "image": chat([{"type": "image"}, {"type": "text", "text": "What is in this image?"}],
                      LoadedMedia([noise_image(1, 140, 90)], ["img-a"], [], [], [])),
        "video": chat([{"type": "video"}, {"type": "text", "text": "Describe the video."}],
                      LoadedMedia([], [], [frames], [meta], ["vid-a"])),
    }


def token_id(builder, text: str) -> int:
    ids = builder.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == 1, f"{text!r} is one token of the tiny tokenizer"
    return ids[0]


async def collect(engine, prompt: Prompt, params: SamplingParams, rid: str) -> dict:
    ids, text, last = [], "", None
    async for out in engine.generate(prompt, params, rid):
        for c in out.outputs:
            ids += c.token_ids
            text += c.text
            if c.finish_reason is not None:
                last = c
    return {"ids": ids, "text": text, "finish": last.finish_reason, "stop_reason": last.stop_reason,
            "num_tokens": last.num_tokens, "forced": last.forced_tokens}


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("kind", ["text", "image", "video"])
def test_greedy_tokens_and_text_match_the_reference(engine, reference, prompts, kind):
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    ours = run(collect(engine, prompts[kind], params, f"v-{kind}"))
    oracle = run(collect(reference, prompts[kind], params, f"r-{kind}"))
    assert ours["ids"] == oracle["ids"]
    assert ours["text"] == oracle["text"]
    assert (ours["finish"], ours["num_tokens"]) == (FinishReason.LENGTH, 24)


def test_answer_end_from_generation_config_stops_vllm(engine, builder, prompts):
    answer_end = token_id(builder, "</answer>")
    forced = SamplingParams(temperature=0.0, max_tokens=6, logit_bias={answer_end: 100.0})
    out = run(collect(engine, prompts["text"], forced, "stop"))
    assert (out["ids"], out["finish"], out["stop_reason"], out["text"]) == ([answer_end], FinishReason.STOP,
                                                                          answer_end, "")
    ignore = SamplingParams(temperature=0.0, max_tokens=6, logit_bias={answer_end: 100.0}, ignore_eos=True)
    out = run(collect(engine, prompts["text"], ignore, "no-stop"))
    assert out["ids"] == [answer_end] * 6 and out["finish"] is FinishReason.LENGTH


@pytest.mark.parametrize("kind", ["thinking", "image"])
def test_thinking_budget_forces_the_answer_like_the_reference(engine, reference, builder, prompts, kind):
    """Budget 3: after three thought tokens `</think><answer>` is forced and the model answers (second vLLM pass)."""
    if kind == "thinking":  # the thought is open in the prompt; a filler bias keeps the model thinking
        prompt = builder.from_text(builder.render([{"role": "user", "content": "2+2?"}]) + "<think>")
        params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, thinking_budget=3,
                                logit_bias={token_id(builder, "Z"): 100.0})
    else:  # media continue through the same pass split
        prompt = prompts["image"]
        params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, thinking_budget=3)
    ours = run(collect(engine, prompt, params, f"b-{kind}"))
    oracle = run(collect(reference, prompt, params, f"rb-{kind}"))
    forced = builder.tokenizer.encode("</think><answer>", add_special_tokens=False)
    assert ours["ids"][3:3 + len(forced)] == forced
    assert ours["forced"] == len(forced) and ours["num_tokens"] == 12
    assert (ours["ids"], ours["text"], ours["forced"]) == (oracle["ids"], oracle["text"], oracle["forced"])
    if kind == "thinking":
        assert ours["text"] == "ZZZ</think><answer>" + "Z" * (12 - 3 - len(forced))


def test_abort_ends_the_stream_and_vllm_keeps_serving(engine, prompts):
    async def go():
        # The abort goes out as soon as the request is in flight (sent to vLLM), not after an output: the tiny model
        # on vLLM makes thousands of tokens a second, so waiting for an output (or 0.2 s) let it finish 400 and
        # even 4000 tokens before the abort landed (seen in CI and here).
        params = SamplingParams(temperature=0.0, max_tokens=4000, ignore_eos=True)
        outputs = []

        async def consume() -> None:
            async for out in engine.generate(prompts["text"], params, "to-abort"):
                outputs.append(out)

        consumer = asyncio.create_task(consume())
        for _ in range(1000):  # until the request has its vLLM sub-request ids
            if engine._subs.get("to-abort"):
                break
            await asyncio.sleep(0.001)
        await engine.abort("to-abort")
        start = time.monotonic()
        await asyncio.wait_for(consumer, 10)
        assert time.monotonic() - start < 10
        assert outputs[-1].finished and outputs[-1].outputs[-1].finish_reason is FinishReason.ABORT
        assert outputs[-1].outputs[-1].num_tokens < 4000
        after = await collect(engine, prompts["text"], SamplingParams(temperature=0.0, max_tokens=4), "after")
        assert after["num_tokens"] >= 1

    run(go())


def test_n_sequences_with_a_seed_are_reproducible(engine, prompts):
    params = SamplingParams(temperature=1.0, n=2, max_tokens=8, seed=7, ignore_eos=True)

    async def twice():
        runs = []
        for rid in ("seed-a", "seed-b"):
            seqs: dict[int, list[int]] = {0: [], 1: []}
            async for out in engine.generate(prompts["text"], params, rid):
                for c in out.outputs:
                    seqs[c.index] += c.token_ids
            runs.append(seqs)
        return runs

    first, second = run(twice())
    assert first == second and all(len(v) == 8 for v in first.values())


def test_prompt_longer_than_the_context_is_refused_before_vllm(engine):
    with pytest.raises(PromptTooLongError) as err:
        run(anext(engine.generate(Prompt(token_ids=[5] * 4100), SamplingParams(max_tokens=4), "long")))
    assert err.value.max_model_len == 4096 == engine.max_model_len


def test_stats_have_the_gauges_metrics_needs(engine):
    stats = engine.stats()
    assert set(stats) >= {"running", "waiting", "kv_usage", "prefix_cache_hit_rate"}
    assert 0.0 <= stats["kv_usage"] <= 1.0


def test_chat_with_an_image_over_http_splits_reasoning_from_the_answer(vllm_server, builder, media_dir):
    """The openai SDK, a file:// image, the server's thinking template: reasoning and content come apart, streamed
    and not, with a thinking budget that vLLM cannot know about."""
    z = token_id(builder, "Z")
    kwargs = dict(
        model="tiny", max_tokens=10, temperature=0,
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"file://{media_dir / 'a.png'}"}},
            {"type": "text", "text": "What is in this image?"}]}],
        logit_bias={str(z): 100}, extra_body={"ignore_eos": True, "thinking_budget": 4},
    )
    client = vllm_server.client()
    r = client.chat.completions.create(**kwargs)
    message = r.choices[0].message
    assert message.model_extra["reasoning_content"] == "ZZZZ"
    assert message.content == "Z" * (10 - 4 - 2)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 10
    reasoning, content = "", ""
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        if chunk.choices:
            delta = chunk.choices[0].delta
            reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
            content += delta.content or ""
    assert (reasoning, content) == ("ZZZZ", message.content)


def test_logprobs_come_back_per_token(engine, prompts):
    async def go():
        params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True, logprobs=2)
        rows = []
        async for out in engine.generate(prompts["text"], params, "logprobs"):
            for c in out.outputs:
                assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
                rows += list(zip(c.token_ids, c.logprobs, strict=True))
        return rows

    rows = run(go())
    assert len(rows) == 5
    for token, lp in rows:
        assert lp.token_id == token and lp.logprob <= 0.0
        assert len(lp.top) == 2 and lp.top[0][0] == token  # greedy: the chosen token is the most likely
        assert lp.top[0][2] >= lp.top[1][2] and abs(lp.top[0][2] - lp.logprob) < 1e-4


def test_structured_outputs_and_forced_calls_pass_through_to_vllm(vllm_server):
    """response_format, structured_outputs and a named tool call reach vLLM's own grammar (after the thought) and
    come back valid; glmv shapes the forced call into tool_calls."""
    import json

    import jsonschema

    client = vllm_server.client()
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    base = dict(model="tiny", max_tokens=60, messages=[{"role": "user", "content": "JSON please."}],
                extra_body={"thinking_budget": 2})
    r = client.chat.completions.create(
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema, "strict": True}}, **base)
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    r = client.chat.completions.create(**{**base, "extra_body": {"thinking_budget": 2,
                                                                 "structured_outputs": {"choice": ["yes", "no"]}}})
    assert r.choices[0].message.content in ("yes", "no")
    tool = {"type": "function", "function": {"name": "pick", "parameters": schema}}
    r = client.chat.completions.create(tools=[tool], tool_choice={"type": "function", "function": {"name": "pick"}},
                                       **base)
    assert r.choices[0].message.tool_calls, (r.choices[0].message.content, r.choices[0].message.model_extra)
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "pick" and r.choices[0].finish_reason == "tool_calls"
    jsonschema.validate(json.loads(call.function.arguments), schema)
