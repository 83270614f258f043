"""GrammarBatch's batched fill against Constraint's one-row fill: the same random token stream through two copies of
the sequences gives equal masks, phases, rejections and terminations at every step, over every phase, a forced
`</think><answer>`, forced tokens the grammar refuses, two tokens of one sequence in one step, and matchers that
terminate while tokens keep coming."""

from __future__ import annotations

import random

import pytest
import torch
import xgrammar as xgr

from glmv.config import ModelConfig
from glmv.inputs.processor import PromptBuilder
from glmv.structured.batch import GrammarBatch, and_safety_masks
from glmv.structured.compiler import GrammarCompiler
from glmv.structured.constraint import Constraint, Phase
from glmv.structured.spec import StructuredSpec

SPECS = [
    StructuredSpec.json_schema({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}, True,
                               "t"),
    StructuredSpec("json_object", "", False, "t"),
    StructuredSpec("regex", "[0-9]{2}", False, "t"),  # terminates within a few tokens
    StructuredSpec.choice(["yes", "no"], "t"),
]
PREFIXES = ["<|assistant|>\n", "<|assistant|>\n<think>", "<|assistant|>\n<think></think>",
            "<|assistant|>\n<think></think><answer>"]  # START, THINKING, OPENING, ANSWER


def _allowed(bitmask: torch.Tensor, row: int, vocab: int) -> list[int]:
    bits = (bitmask[row].unsqueeze(1) >> torch.arange(32, dtype=torch.int32)) & 1
    return torch.nonzero(bits.flatten()[:vocab]).flatten().tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_fill_matches_one_row_at_a_time(tiny_model_dir, seed):
    cfg = ModelConfig.from_dir(tiny_model_dir, "auto")
    vocab = cfg.text.vocab_size
    tok = PromptBuilder(tiny_model_dir).tokenizer
    compiler = GrammarCompiler(tok, vocab, cfg.eos_token_ids)
    assistant = tok.convert_tokens_to_ids("<|assistant|>")
    forced_close = [compiler.think_end_id, compiler.answer_open_id]  # what a thinking budget forces
    rng = random.Random(seed)
    one, many = [], []  # the same sequences twice: masks filled one row at a time, and by GrammarBatch
    for i in range(24):
        compiled = compiler.compile(SPECS[i % len(SPECS)])
        prompt = tok.encode(PREFIXES[(i // len(SPECS)) % len(PREFIXES)], add_special_tokens=False)
        one.append(Constraint(compiled, prompt, assistant))
        many.append(Constraint(compiled, prompt, assistant))
    assert {c.phase for c in one} == set(Phase)
    batch = GrammarBatch()
    forced_refused = 0
    for _ in range(40):
        rows = [i for i, c in enumerate(one) if c.masks_next]
        assert rows == [i for i, c in enumerate(many) if c.masks_next]
        expected = xgr.allocate_token_bitmask(len(one), vocab)
        got = xgr.allocate_token_bitmask(len(one), vocab)
        for i in rows:
            one[i].fill_mask(expected, i)
        and_safety_masks(got, batch.fill_masks(got, [many[i] for i in rows], rows))
        assert torch.equal(got, expected)
        stream: list[tuple[int, int]] = []  # (sequence, token), in the order the engine takes them in
        for i, c in enumerate(one):
            if c.phase is Phase.THINKING and rng.random() < 0.3:
                tokens = forced_close  # the budget closes the thought
            elif i in rows and rng.random() < 0.9:
                tokens = [rng.choice(_allowed(expected, i, vocab))]  # a sampled token: the mask holds
            else:
                tokens = [rng.randrange(vocab)]  # a forced token the grammar may refuse, or one after its end
            if c.phase is Phase.ANSWER and rng.random() < 0.2:
                tokens = tokens + [rng.randrange(vocab)]  # a second token of this sequence in the same step
            stream += [(i, t) for t in tokens]
        rng.shuffle(stream)
        stream.sort(key=lambda item: item[0])  # a sequence's own tokens keep their order
        for i, t in stream:
            was = one[i].rejected
            one[i].accept(t)
            forced_refused += one[i].rejected - was
        for i, t in stream:
            many[i].accept(t)
        for a, b in zip(one, many, strict=True):
            assert (a.phase, a.rejected, a.terminated) == (b.phase, b.rejected, b.terminated)
    assert forced_refused > 0  # the stream did reach the rejection path
    assert any(c.terminated for c in one)  # and matchers that end while tokens keep coming
    assert all(c.phase is not Phase.START for c in one)


def test_fill_masks_checks_its_rows(tiny_model_dir):
    cfg = ModelConfig.from_dir(tiny_model_dir, "auto")
    tok = PromptBuilder(tiny_model_dir).tokenizer
    compiled = GrammarCompiler(tok, cfg.text.vocab_size, cfg.eos_token_ids).compile(SPECS[2])
    constraint = Constraint(compiled, tok.encode("<think></think><answer>", add_special_tokens=False), None)
    with pytest.raises(ValueError, match="1 constraints for 2 bitmask rows"):
        GrammarBatch().fill_masks(xgr.allocate_token_bitmask(2, cfg.text.vocab_size), [constraint], [0, 1])
