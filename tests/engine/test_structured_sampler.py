"""The sampler with structured-output rows: only constrained rows are masked, on the logits' device (CPU, and CUDA
when present), and a free row in the same batch keeps its own argmax."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from glmv.engine.sampler import Sampler
from glmv.sampling import SamplingParams
from glmv.structured.compiler import GrammarCompiler
from glmv.structured.constraint import Constraint, Phase
from glmv.structured.spec import StructuredSpec

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_masked_rows_follow_the_grammar(tiny_model_dir, device):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    vocab = json.loads((tiny_model_dir / "config.json").read_text())["text_config"]["vocab_size"]
    compiler = GrammarCompiler(tok, vocab, [compiler_stop(tok)])
    compiled = compiler.compile(StructuredSpec("regex", "[0-9]{2}", False, "structured_outputs"))
    prompt = tok.encode("<think></think><answer>", add_special_tokens=False)
    constraint = Constraint(compiled, prompt, None)
    assert constraint.phase is Phase.ANSWER
    params = SamplingParams(temperature=0.0, structured=compiled)
    free = SimpleNamespace(params=SamplingParams(temperature=0.0), seed=0, token_ids=[1], num_prompt_tokens=1,
                           constraint=None)
    row = SimpleNamespace(params=params, seed=0, token_ids=list(prompt), num_prompt_tokens=len(prompt),
                          constraint=constraint)
    sampler = Sampler(vocab, device)
    digits = ""
    for _ in range(4):
        logits = torch.randn(2, vocab, device=device)
        out = sampler.sample(logits, [free, row])
        assert out.token_ids[0] == int(logits[0].argmax())
        constraint.accept(out.token_ids[1])
        if out.token_ids[1] == compiler.answer_close_id:
            break
        digits += tok.decode([out.token_ids[1]])
    assert constraint.terminated
    assert len(digits) == 2 and digits.isdigit()


def compiler_stop(tok) -> int:
    return tok.encode("</answer>", add_special_tokens=False)[0]
