"""Continuous batching is invisible in the tokens: batch mates, arrival times, prefix-cache hits, preemption and
n>1 forking never change what a request generates; afterwards every KV block is free again."""

from __future__ import annotations

from glmv.inputs.processor import LoadedMedia
from glmv.sampling import SamplingParams

from .conftest import greedy, run_to_completion, tokens_of

NAMES = ["text", "image", "two_images", "video"]


def sampled(seed: int, max_tokens: int = 20) -> SamplingParams:
    return SamplingParams(temperature=1.0, top_p=0.9, max_tokens=max_tokens, ignore_eos=True, seed=seed)


def alone(make_engine, prompt, params, **kw) -> list[int]:
    engine = make_engine(**kw)
    engine.add_request("x", prompt, params)
    return tokens_of(run_to_completion(engine), "x")


def test_tokens_do_not_depend_on_batch_mates_or_arrival(make_engine, prompts):
    solo = {name: alone(make_engine, prompts[name], greedy(20)) for name in NAMES}
    solo_sampled = alone(make_engine, prompts["image"], sampled(7))
    engine = make_engine(max_num_batched_tokens=24)
    arrivals = {
        0: [("video", prompts["video"], greedy(20)), ("noise-1", prompts["text"], sampled(1, 30))],
        2: [("text", prompts["text"], greedy(20))],
        3: [("image-sampled", prompts["image"], sampled(7))],
        5: [("two_images", prompts["two_images"], greedy(20)), ("noise-2", prompts["two_images"], sampled(2))],
        9: [("image", prompts["image"], greedy(20))],
    }
    done = run_to_completion(engine, arrivals)
    for name in NAMES:
        assert tokens_of(done, name) == solo[name], name
    assert tokens_of(done, "image-sampled") == solo_sampled
    assert engine.pool.all_free()


def test_prefix_cache_hits_give_identical_tokens(make_engine, builder, prompts, images):
    engine = make_engine()
    first = run_to_completion(engine, {0: [("a", prompts["two_images"], greedy(16))]})
    assert engine.pool.stats().cached_blocks > 0
    encoded = engine.runner.encoder.tokens_encoded
    assert encoded > 0
    again = run_to_completion(engine, {0: [("b", prompts["two_images"], greedy(16))]})
    assert tokens_of(again, "b") == tokens_of(first, "a")
    # every whole block but the one holding the last prompt token was reused ...
    n = len(prompts["two_images"])
    assert engine.pool.prefix_hits == (n - 1) // 16 * 16
    # ... and the vision tower did not run again (prefix cache or vision-embedding cache)
    assert engine.runner.encoder.tokens_encoded == encoded
    # equal token ids with a different second picture: only the blocks before that picture are reused
    text = builder.render([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"},
                                                        {"type": "image"}, {"type": "text", "text": "Compare them."}]}])
    other = builder.build(text, LoadedMedia([images[0], images[2].resize(images[1].size)], ["img-a", "img-c"],
                                            [], [], []))
    assert other.token_ids == prompts["two_images"].token_ids
    hits_before = engine.pool.prefix_hits
    diff = run_to_completion(engine, {0: [("c", other, greedy(16))]})
    from glmv.engine.request import find_media_items

    second_image_start = find_media_items(other, 2)[1].first
    assert engine.pool.prefix_hits - hits_before == second_image_start // 16 * 16
    assert tokens_of(diff, "c") == alone(make_engine, other, greedy(16), enable_prefix_caching=False)
    assert engine.pool.all_free()


def test_shared_system_prompt_prefix(make_engine, builder):
    system = "You are a careful assistant. " * 6
    prompts = [builder.from_text(builder.render([{"role": "system", "content": system},
                                                 {"role": "user", "content": q}]))
               for q in ("What is 2+2?", "Name a colour.", "Count to five.")]
    engine = make_engine()
    done = run_to_completion(engine, {0: [("q0", prompts[0], greedy(12))],
                                      3: [("q1", prompts[1], greedy(12)), ("q2", prompts[2], greedy(12))]})
    assert engine.pool.prefix_hits >= 2 * 48
    for i, p in enumerate(prompts):
        assert tokens_of(done, f"q{i}") == alone(make_engine, p, greedy(12), enable_prefix_caching=False)
    assert engine.pool.all_free()


def test_preemption_by_recompute_gives_identical_tokens(make_engine, prompts):
    block_bytes = 2 * 2 * 8 * 2 * 32 * 4  # layers * (k, v) * block 8 * kv heads * head_dim * fp32
    small = {"block_size": 8, "max_model_len": 96, "kv_cache_memory": 14 * block_bytes,
             "max_num_batched_tokens": 64}
    reqs = [("text", prompts["text"], greedy(40)), ("image", prompts["image"], greedy(40)),
            ("sampled", prompts["text"], sampled(3, 40)), ("video", prompts["video"], greedy(30))]
    expected = {rid: alone(make_engine, p, sp, block_size=8, max_model_len=96) for rid, p, sp in reqs}
    engine = make_engine(**small)
    assert engine.pool.num_usable_blocks == 13
    done = run_to_completion(engine, {0: reqs})
    assert engine.scheduler.num_preemptions > 0
    for rid, _, _ in reqs:
        assert tokens_of(done, rid) == expected[rid], rid
    assert engine.pool.all_free()


def test_n_greater_than_one_forks_shared_prompt_blocks(make_engine, prompts):
    prompt = prompts["image"]
    params = SamplingParams(n=3, temperature=1.0, max_tokens=12, ignore_eos=True, seed=100)
    engine = make_engine()
    engine.add_request("n3", prompt, params)
    done: dict[int, list[int]] = {}
    shared_checked = False
    while engine.has_unfinished_requests():
        for out in engine.step():
            for c in out.outputs:
                done.setdefault(c.index, []).extend(c.token_ids)
        seqs = engine.groups["n3"].sequences if "n3" in engine.groups else []
        if len(seqs) == 3 and not shared_checked:
            heads = {tuple(s.block_ids[: len(prompt) // 16]) for s in seqs}
            assert len(heads) == 1  # one copy of the prompt's whole blocks ...
            assert all(engine.pool.ref_counts[b] == 3 for b in next(iter(heads)))  # ... referenced three times
            shared_checked = True
    assert shared_checked and sorted(done) == [0, 1, 2]
    assert len({tuple(v) for v in done.values()}) == 3  # the completions differ
    for i in range(3):  # completion i is exactly what a single request with seed 100 + i gives
        assert done[i] == alone(make_engine, prompt, SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True,
                                                                    seed=100 + i))
    assert engine.pool.all_free()


def test_n_greater_than_one_whose_fork_prefix_is_all_cached(make_engine, prompts):
    """The parent's whole-block prefix comes from the prefix cache: it forks without computing anything."""
    engine = make_engine()
    params = SamplingParams(n=2, temperature=1.0, max_tokens=5, ignore_eos=True, seed=9)
    first = run_to_completion(engine, {0: [("a", prompts["text"], params)]})
    again = run_to_completion(engine, {0: [("b", prompts["text"], params)]}, max_steps=50)
    assert {i: c.token_ids for i, c in again["b"].items()} == {i: c.token_ids for i, c in first["a"].items()}
    assert engine.pool.all_free()


def test_a_batch_mate_that_reads_history_changes_no_other_tokens(make_engine, prompts, tokenizer):
    """A running sequence with a penalty makes every step launch its forward first and sample after taking in the
    previous tokens (deferred sampling); a seeded draw and min_tokens in the same batch must come out as alone."""
    answer_close = tokenizer.convert_tokens_to_ids("</answer>")
    short = SamplingParams(temperature=0.0, max_tokens=20, min_tokens=3, logit_bias={answer_close: 100.0})
    solo_sampled = alone(make_engine, prompts["text"], sampled(7))
    solo_short = alone(make_engine, prompts["image"], short)
    assert len(solo_short) == 4 and solo_short[3] == answer_close  # three stop-masked tokens, then the biased stop
    engine = make_engine()
    deferred = []
    sample = engine.runner.sample

    def counting_sample(step):
        deferred.append(step.unsampled is not None)
        sample(step)

    engine.runner.sample = counting_sample
    penalized = SamplingParams(temperature=1.0, max_tokens=30, ignore_eos=True, seed=3, presence_penalty=0.5)
    done = run_to_completion(engine, {0: [("pen", prompts["two_images"], penalized),
                                          ("sampled", prompts["text"], sampled(7)),
                                          ("short", prompts["image"], short)]})
    assert sum(deferred) >= 19  # every decode step of the seeded request was sampled deferred
    assert tokens_of(done, "sampled") == solo_sampled
    assert tokens_of(done, "short") == solo_short
    assert engine.pool.all_free()
