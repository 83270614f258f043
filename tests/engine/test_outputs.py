"""What postprocess makes of sampled tokens: stop token ids (generation_config's, including </answer>), stop strings,
min_tokens, ignore_eos, max_tokens, the thinking budget's forced tokens, abort, and length checks."""

from __future__ import annotations

import pytest

from glmv.engine.client import PromptTooLongError
from glmv.sampling import FinishReason, SamplingParams

from .conftest import greedy, run_to_completion


@pytest.fixture(scope="module")
def free_run(make_engine, prompts):
    """24 greedy tokens of the text prompt with nothing stopping them."""
    engine = make_engine()
    engine.add_request("free", prompts["text"], greedy(24))
    return run_to_completion(engine)["free"][0]


def run_one(make_engine, prompt, params, **kw):
    engine = make_engine(**kw)
    engine.add_request("r", prompt, params)
    out = run_to_completion(engine)["r"][0]
    assert engine.pool.all_free()
    return out


def test_max_tokens_finishes_with_length(free_run, make_engine, prompts):
    out = run_one(make_engine, prompts["text"], greedy(7))
    assert out.token_ids == free_run.token_ids[:7] and out.num_tokens == 7
    assert out.finish_reason is FinishReason.LENGTH


def test_stop_token_id_from_params(free_run, make_engine, prompts):
    stop = free_run.token_ids[5]
    first = free_run.token_ids.index(stop)
    out = run_one(make_engine, prompts["text"], greedy(24, stop_token_ids=[stop]))
    assert out.token_ids == free_run.token_ids[: first + 1]
    assert out.finish_reason is FinishReason.STOP and out.stop_reason == stop


def test_generation_config_eos_includes_answer_close(make_engine, prompts, tokenizer, model_config):
    answer_close = tokenizer.convert_tokens_to_ids("</answer>")
    assert answer_close in model_config.eos_token_ids
    params = SamplingParams(temperature=0.0, max_tokens=20, min_tokens=3, logit_bias={answer_close: 100.0})
    out = run_one(make_engine, prompts["text"], params)
    # min_tokens masks the stop ids for three tokens, then the biased </answer> ends the sequence
    assert len(out.token_ids) == 4 and answer_close not in out.token_ids[:3] and out.token_ids[3] == answer_close
    assert out.finish_reason is FinishReason.STOP and out.stop_reason == answer_close
    assert "</answer>" not in out.text
    ignored = run_one(make_engine, prompts["text"], SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True,
                                                                   logit_bias={answer_close: 100.0}))
    assert ignored.token_ids == [answer_close] * 5 and ignored.finish_reason is FinishReason.LENGTH


def test_stop_string_cuts_text(free_run, make_engine, prompts, tokenizer):
    text = free_run.text
    # a 3-character stop string whose first occurrence is past the start of the text
    start = next(k for k in range(4, len(text) - 3) if text.find(text[k:k + 3]) == k)
    stop = text[start:start + 3]
    out = run_one(make_engine, prompts["text"], greedy(24, stop=[stop]))
    assert out.text == text[: text.find(stop)]
    assert out.finish_reason is FinishReason.STOP and out.stop_reason == stop
    with_stop = run_one(make_engine, prompts["text"], greedy(24, stop=[stop], include_stop_str_in_output=True))
    assert with_stop.text == text[: text.find(stop) + len(stop)]


def test_thinking_budget_forces_close_and_answer(make_engine, prompts, tokenizer):
    forced = tokenizer.encode("</think><answer>", add_special_tokens=False)
    out = run_one(make_engine, prompts["text"], greedy(12, thinking_budget=4))
    assert out.token_ids[4:4 + len(forced)] == forced
    assert out.forced_tokens == len(forced)
    assert out.num_tokens == 12  # forced tokens count as output tokens
    assert "</think><answer>" in out.text


def test_engine_wide_thinking_budget_default(make_engine, prompts, tokenizer):
    forced = tokenizer.encode("</think><answer>", add_special_tokens=False)
    out = run_one(make_engine, prompts["text"], greedy(10), max_thinking_tokens=2)
    assert out.token_ids[2:2 + len(forced)] == forced


def test_abort_frees_blocks_and_reports_abort(make_engine, prompts):
    engine = make_engine()
    engine.add_request("a", prompts["image"], greedy(50))
    engine.add_request("b", prompts["text"], SamplingParams(n=2, temperature=1.0, max_tokens=50, seed=1))
    for _ in range(3):
        engine.step()
    assert not engine.pool.all_free()
    final = engine.abort_request("a")
    assert final.finished and final.outputs[0].finish_reason is FinishReason.ABORT
    final_b = engine.abort_request("b")
    assert sorted(c.index for c in final_b.outputs) == [0, 1]
    assert engine.pool.all_free() and not engine.has_unfinished_requests()
    assert engine.abort_request("a") is None


def test_prompt_too_long_and_bad_ids(make_engine, prompts):
    engine = make_engine(max_model_len=64)
    with pytest.raises(PromptTooLongError) as err:
        engine.add_request("long", prompts["video"], greedy(30))
    assert err.value.prompt_tokens == len(prompts["video"]) and err.value.max_model_len == 64
    with pytest.raises(ValueError, match="vocabulary"):
        engine.add_request("bad", prompts["text"], greedy(4, logit_bias={10**6: 1.0}))
    assert not engine.has_unfinished_requests()


def test_context_length_ends_generation(make_engine, prompts):
    n = len(prompts["text"])
    out = run_one(make_engine, prompts["text"], SamplingParams(temperature=0.0, ignore_eos=True),
                  max_model_len=n + 5)
    assert out.num_tokens == 5 and out.finish_reason is FinishReason.LENGTH


def test_zero_budget_forces_before_the_first_token(make_engine, prompts, tokenizer):
    forced = tokenizer.encode("</think><answer>", add_special_tokens=False)
    out = run_one(make_engine, prompts["text"], greedy(6, thinking_budget=0))
    assert out.token_ids[: len(forced)] == forced and out.num_tokens == 6 and out.forced_tokens == len(forced)
    assert out.text.startswith("</think><answer>")
    n2 = make_engine()
    n2.add_request("n2", prompts["image"], SamplingParams(n=2, temperature=1.0, max_tokens=5, seed=4, ignore_eos=True,
                                                          thinking_budget=0))
    done = run_to_completion(n2)["n2"]
    assert all(done[i].token_ids[: len(forced)] == forced and done[i].num_tokens == 5 for i in (0, 1))
    assert n2.pool.all_free()


def test_reserved_answer_tokens_close_the_thought_in_time(make_engine, prompts, tokenizer):
    forced = tokenizer.encode("</think><answer>", add_special_tokens=False)
    out = run_one(make_engine, prompts["text"], greedy(12, reserved_answer_tokens=4))
    at = 12 - 4 - len(forced)
    assert out.token_ids[at:at + len(forced)] == forced and out.num_tokens == 12
    assert out.finish_reason is FinishReason.LENGTH
