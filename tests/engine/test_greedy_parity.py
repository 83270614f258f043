"""Greedy output of glmv's engine is token-identical to transformers' generate (the reference), float32."""

from __future__ import annotations

import pytest
import torch

from .conftest import greedy, run_to_completion, tokens_of

NAMES = ["text", "image", "two_images", "video"]
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def reference_tokens(prompts, hf_model) -> dict[str, list[int]]:
    from glmv.engine.reference import hf_inputs

    out = {}
    for name in NAMES:
        prompt = prompts[name]
        with torch.inference_mode():
            ids = hf_model.generate(**hf_inputs(prompt, "cpu", torch.float32), max_new_tokens=NEW_TOKENS,
                                    min_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None)
        out[name] = ids[0, len(prompt):].tolist()
        assert len(out[name]) == NEW_TOKENS
    return out


@pytest.mark.parametrize("budget", [256, 16], ids=["whole-prefill", "chunked-prefill"])
def test_greedy_matches_reference_all_modalities_batched(budget, make_engine, prompts, reference_tokens):
    """All four prompts in one engine at once; with budget 16 every prompt is prefilled in chunks that cut through
    image and video placeholder runs while the others decode."""
    engine = make_engine(max_num_batched_tokens=budget)
    for name in NAMES:
        engine.add_request(name, prompts[name], greedy(NEW_TOKENS))
    done = run_to_completion(engine)
    for name in NAMES:
        assert tokens_of(done, name) == reference_tokens[name], name
    assert engine.pool.all_free()


@pytest.mark.parametrize("name", NAMES)
def test_greedy_matches_reference_alone(name, make_engine, prompts, reference_tokens):
    engine = make_engine()
    engine.add_request(name, prompts[name], greedy(NEW_TOKENS))
    done = run_to_completion(engine)
    assert tokens_of(done, name) == reference_tokens[name]
    assert done[name][0].num_tokens == NEW_TOKENS
