"""Decode steps from the runner's persistent buffers (what CUDA graphs replay) give the same tokens as eager steps.

The runner fills pinned host buffers row by row and rewrites a block-table row only where its sequence changed or
grew; these tests drive that bookkeeping on the CPU (`DecodeGraphs.use_static`, no graphs) through rows that
change owner, finish, get preempted and come back, with batch sizes that move between buckets. Also: the deferred
text half of postprocess (outputs one step later) still ends stop strings at the right token.
"""

from __future__ import annotations

from glmv.sampling import SamplingParams

from .conftest import greedy, run_to_completion, tokens_of

NAMES = ["text", "image", "two_images", "video"]


def _mixed_run(engine, prompts):
    arrivals = {
        0: [("video", prompts["video"], greedy(20)), ("t1", prompts["text"], greedy(7))],
        2: [("text", prompts["text"], greedy(25))],
        3: [("image", prompts["image"], SamplingParams(temperature=1.0, top_p=0.9, max_tokens=18, ignore_eos=True,
                                                       seed=4))],
        6: [("two_images", prompts["two_images"], greedy(11)), ("t2", prompts["text"], greedy(3))],
        9: [("t3", prompts["image"], greedy(30))],
    }
    return run_to_completion(engine, arrivals)


def test_static_decode_buffers_match_eager(make_engine, prompts):
    eager = _mixed_run(make_engine(max_num_batched_tokens=32), prompts)
    engine = make_engine(max_num_batched_tokens=32)
    engine.runner.decode_graphs.use_static([1, 2, 4, 8])
    static = _mixed_run(engine, prompts)
    assert set(static) == set(eager)
    for rid in eager:
        assert tokens_of(static, rid) == tokens_of(eager, rid), rid
    assert engine.runner.greedy_graph_steps > 0  # steps with only greedy rows took the decode graph's argmax
    assert engine.pool.all_free()


def test_greedy_rows_with_logprobs_or_min_tokens_go_through_the_sampler(make_engine, prompts):
    """The graph's argmax stands in for sampling only where nothing would change a logit or ask for logprobs."""
    cases = {"logprobs": greedy(12, logprobs=2), "min_tokens": greedy(12, min_tokens=12),
             "bias": greedy(12, logit_bias={5: 100.0})}
    for name, params in cases.items():
        eager = run_to_completion(make_engine(), {0: [(name, prompts["text"], params)]})
        engine = make_engine()
        engine.runner.decode_graphs.use_static([1, 2])
        static = run_to_completion(engine, {0: [(name, prompts["text"], params)]})
        assert tokens_of(static, name) == tokens_of(eager, name), name
        assert engine.runner.greedy_graph_steps == 0, name
        if name == "logprobs":
            assert static[name][0].logprobs == eager[name][0].logprobs
        if name == "bias":
            assert set(tokens_of(static, name)) == {5}


def test_static_decode_under_preemption(make_engine, prompts):
    """A pool too small for everyone: sequences are preempted and re-admitted with new block lists."""
    block_bytes = 2 * 2 * 8 * 2 * 32 * 4  # layers * (k, v) * block 8 * kv heads * head_dim * fp32
    small = {"block_size": 8, "max_model_len": 96, "max_num_batched_tokens": 64}
    reqs = [(name, prompts[name], greedy(30)) for name in ["text", "image", "video"]]
    reqs.append(("sampled", prompts["text"], SamplingParams(temperature=1.0, max_tokens=40, ignore_eos=True, seed=3)))
    expected = {rid: tokens_of(run_to_completion(make_engine(**small), {0: [(rid, p, sp)]}), rid)
                for rid, p, sp in reqs}
    engine = make_engine(kv_cache_memory=14 * block_bytes, **small)
    engine.runner.decode_graphs.use_static([1, 2, 4])
    done = run_to_completion(engine, {0: reqs})
    assert engine.scheduler.num_preemptions > 0
    for rid, _, _ in reqs:
        assert tokens_of(done, rid) == expected[rid], rid
    assert engine.pool.all_free()


def test_stop_string_found_a_step_late_still_ends_at_the_right_token(make_engine, prompts, tokenizer):
    free = tokens_of(run_to_completion(make_engine(), {0: [("a", prompts["text"], greedy(16))]}), "a")
    # the first output token (after the second) whose text brings a character not seen before: a stop string there
    for k in range(2, len(free) + 1):
        before = tokenizer.decode(free[:k - 1], skip_special_tokens=True)
        after = tokenizer.decode(free[:k], skip_special_tokens=True)
        fresh = [c for c in after[len(before):] if c not in before and c != "\ufffd"]
        if after.startswith(before) and fresh:
            stop = fresh[0]
            break
    else:
        raise AssertionError(f"the tiny model's output {free} gives no usable stop string")
    engine = make_engine()
    engine.add_request("s", prompts["text"], SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True,
                                                             stop=[stop]))
    done = run_to_completion(engine)["s"][0]
    assert done.finish_reason.value == "stop" and done.stop_reason == stop
    assert done.token_ids == free[:k] and done.num_tokens == k
    assert done.text == after[:after.index(stop)]
    assert engine.pool.all_free()
