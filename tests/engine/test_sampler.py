"""Sampler: distributions of top_k / top_p / min_p / temperature on a fixed logit vector, seeded determinism that
does not depend on the batch, penalties, logit_bias, min_tokens and logprobs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from glmv.engine.sampler import Sampler, _open_uniform, race_noise
from glmv.sampling import SamplingParams

from .conftest import run_to_completion, tokens_of

LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
DRAWS = 20_000


def rows(params: SamplingParams, count: int, seed0: int = 0, tokens=(), prompt_len: int | None = None):
    toks = list(tokens)
    plen = len(toks) if prompt_len is None else prompt_len
    return [SimpleNamespace(params=params, seed=seed0 + i, token_ids=toks, num_prompt_tokens=plen,
                            constraint=None)
            for i in range(count)]


def frequencies(params: SamplingParams, logits: torch.Tensor = LOGITS) -> torch.Tensor:
    sampler = Sampler(len(logits), "cpu")
    out = sampler.sample(logits.expand(DRAWS, -1).clone(), rows(params, DRAWS))
    return torch.bincount(torch.tensor(out.token_ids), minlength=len(logits)).float() / DRAWS


def assert_close(freq: torch.Tensor, expected: torch.Tensor) -> None:
    # 20k draws: a binomial standard error is at most 0.0036; allow about 4 of them
    assert (freq - expected).abs().max().item() < 0.015, (freq, expected)
    assert torch.all(freq[expected == 0] == 0)


def test_plain_temperature_sampling_follows_softmax():
    assert_close(frequencies(SamplingParams(temperature=1.0)), LOGITS.softmax(-1))
    assert_close(frequencies(SamplingParams(temperature=0.5)), (LOGITS / 0.5).softmax(-1))


def test_top_k():
    expected = torch.zeros(8)
    expected[:3] = LOGITS[:3].softmax(-1)
    assert_close(frequencies(SamplingParams(temperature=1.0, top_k=3)), expected)


def test_top_p():
    probs = LOGITS.softmax(-1)  # 0.39, 0.24, 0.14, 0.09, ...: top_p 0.7 keeps the first three (0.39+0.24 < 0.7)
    cum = probs.cumsum(0)
    keep = (cum - probs) < 0.7
    assert keep.tolist()[:4] == [True, True, True, False]
    expected = torch.where(keep, probs, torch.zeros(8))
    assert_close(frequencies(SamplingParams(temperature=1.0, top_p=0.7)), expected / expected.sum())


def test_min_p():
    probs = LOGITS.softmax(-1)
    keep = probs >= 0.3 * probs.max()
    expected = torch.where(keep, probs, torch.zeros(8))
    assert_close(frequencies(SamplingParams(temperature=1.0, min_p=0.3)), expected / expected.sum())


def test_top_k_and_top_p_together():
    probs = LOGITS[:4].softmax(-1)  # top_k 4 first, then top_p 0.8 over the renormalised four
    keep = (probs.cumsum(0) - probs) < 0.8
    expected = torch.zeros(8)
    expected[:4] = torch.where(keep, probs, torch.zeros(4))
    assert_close(frequencies(SamplingParams(temperature=1.0, top_k=4, top_p=0.8)), expected / expected.sum())


def test_seeded_draws_do_not_depend_on_the_batch():
    sampler = Sampler(8, "cpu")
    params = SamplingParams(temperature=1.0)
    batch = rows(params, 64, seed0=1000)
    full = sampler.sample(LOGITS.expand(64, -1).clone(), batch).token_ids
    again = sampler.sample(LOGITS.expand(64, -1).clone(), batch).token_ids
    assert full == again
    picked = [batch[i] for i in (40, 3, 17)]
    mixed = picked + rows(SamplingParams(temperature=0.0), 2) + rows(SamplingParams(temperature=1.0, top_k=2), 2)
    sub = sampler.sample(LOGITS.expand(len(mixed), -1).clone(), mixed).token_ids
    assert sub[:3] == [full[40], full[3], full[17]]
    assert len(set(full)) > 3  # different seeds draw different tokens


def test_draws_change_with_the_step():
    sampler = Sampler(8, "cpu")
    params = SamplingParams(temperature=1.0)
    by_step = [sampler.sample(LOGITS.expand(1, -1).clone(), rows(params, 1, 5, tokens=[0] * k, prompt_len=0))
               .token_ids[0] for k in range(40)]
    assert len(set(by_step)) >= 3


def test_the_noise_is_never_zero_so_a_masked_token_is_never_drawn():
    """Seed 1309953 at output step 0 hashes vocab-64 token 34 to the top 24-bit value: drawn as a float32 uniform
    from 24 bits it rounded to 1 and gave zero noise, and the masked token's 0 / 0 (NaN) won the argmax."""
    sampler = Sampler(64, "cpu")
    all_ones = torch.full((1,), 0xFFFFFFFF, dtype=torch.long)
    assert 0.0 < float(_open_uniform(all_ones)) < 1.0 and 0.0 < float(_open_uniform(torch.zeros(1, dtype=torch.long)))
    noise = race_noise(torch.tensor([1309953]), torch.tensor([0]), sampler.vocab_hash)
    assert bool((noise > 0).all() and noise.isfinite().all())
    logits = torch.zeros(2, 64)
    logits[0, 34] = float("-inf")  # a grammar's (or top_k's) mask
    out = sampler.sample(logits, rows(SamplingParams(temperature=1.0), 2, seed0=1309953))
    assert out.token_ids[0] != 34

def test_greedy_picks_argmax():
    out = Sampler(8, "cpu").sample(torch.stack([LOGITS, LOGITS.flip(0)]), rows(SamplingParams(temperature=0.0), 2))
    assert out.token_ids == [0, 7]


def test_repetition_penalty_matches_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = torch.tensor([[2.0, -1.0, 0.5, -0.2, 1.0, 0.0, 3.0, -2.0]])
    seen = [1, 2, 6, 2]
    ours = Sampler(8, "cpu").apply_logits_processors(
        logits.clone(), rows(SamplingParams(repetition_penalty=1.3), 1, tokens=seen, prompt_len=2))
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([seen]), logits.clone())
    assert torch.allclose(ours, ref)


def test_presence_and_frequency_penalties_count_output_tokens_only():
    logits = torch.zeros(1, 8)
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    out = Sampler(8, "cpu").apply_logits_processors(logits, rows(params, 1, tokens=[7, 7, 1, 1, 1, 2], prompt_len=2))
    # prompt [7, 7] is ignored; output has 1 three times, 2 once
    expected = torch.zeros(8)
    expected[1] = -(0.5 + 3 * 0.25)
    expected[2] = -(0.5 + 0.25)
    assert torch.allclose(out[0], expected)


def test_logit_bias_and_min_tokens():
    sampler = Sampler(8, "cpu", eos_token_ids=(0,))
    forced = sampler.sample(LOGITS.expand(4, -1).clone(), rows(SamplingParams(temperature=1.0,
                                                                              logit_bias={6: 100.0}), 4))
    assert forced.token_ids == [6, 6, 6, 6]
    banned = sampler.sample(LOGITS.expand(2, -1).clone(), rows(SamplingParams(temperature=0.0,
                                                                              logit_bias={0: -100.0}), 2))
    assert banned.token_ids == [1, 1]
    early = rows(SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[1]), 1, tokens=[5, 5, 5], prompt_len=2)
    assert sampler.sample(LOGITS.expand(1, -1).clone(), early).token_ids == [2]  # eos 0 and stop id 1 masked
    late = rows(SamplingParams(temperature=0.0, min_tokens=2), 1, tokens=[5, 5, 5, 5], prompt_len=2)
    assert sampler.sample(LOGITS.expand(1, -1).clone(), late).token_ids == [0]
    ignore = rows(SamplingParams(temperature=0.0, min_tokens=5, ignore_eos=True), 1, tokens=[5], prompt_len=1)
    assert sampler.sample(LOGITS.expand(1, -1).clone(), ignore).token_ids == [0]  # eos not a stop: not masked


def test_logprobs_are_the_raw_distribution():
    params = SamplingParams(temperature=0.0, logprobs=3, repetition_penalty=2.0)
    out = Sampler(8, "cpu").sample(LOGITS.expand(1, -1).clone(), rows(params, 1, tokens=[0], prompt_len=1))
    raw = LOGITS.log_softmax(-1)
    assert out.token_ids == [1]  # the penalty moved the choice ...
    assert out.logprobs[0] == pytest.approx(raw[1].item(), abs=1e-6)  # ... the logprob is the model's
    assert [t for t, _ in out.top_logprobs[0]] == [0, 1, 2]
    assert out.top_logprobs[0][0][1] == pytest.approx(raw[0].item(), abs=1e-6)


def test_engine_seeded_requests_repeat(make_engine, prompts):
    def run(seed):
        engine = make_engine()
        engine.add_request("s", prompts["text"], SamplingParams(temperature=1.0, top_k=50, max_tokens=16,
                                                                ignore_eos=True, seed=seed))
        return tokens_of(run_to_completion(engine), "s")

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_engine_logprobs(make_engine, prompts):
    engine = make_engine()
    engine.add_request("lp", prompts["text"], SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True,
                                                             logprobs=2))
    done = run_to_completion(engine)
    lps = done["lp"][0].logprobs
    assert len(lps) == 6
    for tok, lp in zip(done["lp"][0].token_ids, lps, strict=True):
        assert lp.token_id == tok and lp.logprob <= 0
        assert len(lp.top) == 2 and lp.top[0][0] == tok  # greedy: the chosen token is the most likely
        assert lp.top[0][2] == pytest.approx(lp.logprob) and lp.top[0][2] >= lp.top[1][2]
