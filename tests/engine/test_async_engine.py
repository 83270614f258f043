"""AsyncEngine: concurrent streams of deltas equal the synchronous engine's results; abort frees blocks at once;
length and overload errors come before anything is queued; the factory picks it for --engine glmv."""

from __future__ import annotations

import asyncio

import pytest

from glmv.config import EngineConfig
from glmv.engine.async_engine import AsyncEngine
from glmv.engine.client import EngineClient, EngineOverloadedError, PromptTooLongError
from glmv.sampling import FinishReason, SamplingParams

from .conftest import greedy, run_to_completion


def async_engine(make_engine, model_config, tokenizer, **kw) -> AsyncEngine:
    engine = make_engine(**kw)
    return AsyncEngine(model_config, engine.config, tokenizer, engine=engine)


async def collect(stream) -> dict[int, dict]:
    got: dict[int, dict] = {}
    async for out in stream:
        for c in out.outputs:
            acc = got.setdefault(c.index, {"text": "", "ids": [], "finish": None, "num": 0})
            acc["text"] += c.text
            acc["ids"] += c.token_ids
            acc["num"] = c.num_tokens
            acc["finish"] = c.finish_reason or acc["finish"]
    return got


async def test_streams_match_the_synchronous_engine(make_engine, model_config, tokenizer, prompts):
    sync = make_engine()
    sync.add_request("text", prompts["text"], greedy(20))
    sync.add_request("image", prompts["image"], greedy(20))
    sync.add_request("n2", prompts["text"], SamplingParams(n=2, temperature=1.0, max_tokens=10, seed=5,
                                                           ignore_eos=True))
    expected = run_to_completion(sync)
    engine = async_engine(make_engine, model_config, tokenizer)
    assert isinstance(engine, EngineClient)
    await engine.start()
    try:
        text, image, n2 = await asyncio.gather(
            collect(engine.generate(prompts["text"], greedy(20), "text")),
            collect(engine.generate(prompts["image"], greedy(20), "image")),
            collect(engine.generate(prompts["text"], SamplingParams(n=2, temperature=1.0, max_tokens=10, seed=5,
                                                                    ignore_eos=True), "n2")))
        assert text[0]["ids"] == expected["text"][0].token_ids and text[0]["text"] == expected["text"][0].text
        assert image[0]["ids"] == expected["image"][0].token_ids
        assert {i: v["ids"] for i, v in n2.items()} == {i: c.token_ids for i, c in expected["n2"].items()}
        assert text[0]["finish"] is FinishReason.LENGTH and text[0]["num"] == 20
        stats = engine.stats()
        assert {"running", "waiting", "kv_usage", "prefix_cache_hit_rate"} <= set(stats)
    finally:
        await engine.shutdown()
    assert engine.engine.pool.all_free()


async def test_abort_frees_blocks_at_once(make_engine, model_config, tokenizer, prompts):
    engine = async_engine(make_engine, model_config, tokenizer)
    await engine.start()
    try:
        stream = engine.generate(prompts["image"], greedy(400), "long")
        first = await anext(stream)
        assert not first.finished
        await engine.abort("long")
        assert engine.engine.pool.all_free() and not engine.engine.has_unfinished_requests()
        rest = [out async for out in stream]
        assert rest and rest[-1].finished and rest[-1].outputs[0].finish_reason is FinishReason.ABORT
        # a consumer that walks away aborts too
        stream = engine.generate(prompts["text"], greedy(400), "walkaway")
        await anext(stream)
        await stream.aclose()
        for _ in range(100):
            if engine.engine.pool.all_free():
                break
            await asyncio.sleep(0.01)
        assert engine.engine.pool.all_free()
    finally:
        await engine.shutdown()


async def test_errors_before_queueing(make_engine, model_config, tokenizer, prompts):
    engine = async_engine(make_engine, model_config, tokenizer, max_model_len=64)
    with pytest.raises(PromptTooLongError):
        await anext(engine.generate(prompts["video"], greedy(30), "too-long"))
    with pytest.raises(PromptTooLongError):
        await anext(engine.generate(prompts["text"], greedy(60), "too-much-output"))
    full = make_engine(max_waiting_requests=0)
    overloaded = AsyncEngine(model_config, full.config, tokenizer, engine=full)
    with pytest.raises(EngineOverloadedError):
        await anext(overloaded.generate(prompts["text"], greedy(4), "x"))
    assert engine._thread is None  # nothing was started or queued


def test_factory_builds_the_glmv_engine(tiny_dir, model_config, tokenizer):
    from glmv.backends.factory import build_engine

    config = EngineConfig(model=str(tiny_dir), device="cpu", dtype="float32", max_model_len=128, max_num_seqs=2)
    engine = build_engine(model_config, config, tokenizer)
    assert isinstance(engine, AsyncEngine) and engine.max_model_len == 128
