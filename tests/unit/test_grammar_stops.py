"""The model's stop ids other than the answer's end are never allowed inside a constrained answer: a JSON string
admits the text `<|user|>`, and the engine's stop rule would end the answer on that token half-written."""

from __future__ import annotations

import pytest
import xgrammar as xgr

from glmv.config import ModelConfig
from glmv.inputs.processor import PromptBuilder
from glmv.structured.compiler import GrammarCompiler
from glmv.structured.constraint import Constraint
from glmv.structured.spec import StructuredSpec


def _allowed(bitmask, token: int) -> bool:
    word, bit = divmod(token, 32)
    return bool((int(bitmask[0, word]) >> bit) & 1)


@pytest.mark.parametrize("spec", [StructuredSpec.json_schema({"type": "string"}, True, "t"),
                                  StructuredSpec("regex", "[^x]{0,50}", False, "t")])
def test_foreign_stop_ids_are_masked_inside_the_answer(tiny_model_dir, spec):
    cfg = ModelConfig.from_dir(tiny_model_dir, "auto")
    tok = PromptBuilder(tiny_model_dir).tokenizer
    compiler = GrammarCompiler(tok, cfg.text.vocab_size, cfg.eos_token_ids)
    compiled = compiler.compile(spec)
    opened = tok.encode("<|assistant|>\n<think></think><answer>", add_special_tokens=False)
    constraint = Constraint(compiled, opened, tok.convert_tokens_to_ids("<|assistant|>"))
    if spec.kind == "json_schema":
        constraint.accept(tok.encode('"', add_special_tokens=False)[0])  # inside the string now
    bitmask = xgr.allocate_token_bitmask(1, cfg.text.vocab_size)
    constraint.fill_mask(bitmask, 0)
    foreign = [t for t in cfg.eos_token_ids if t not in compiled.stop_token_ids]
    assert foreign, "the tiny model has stop ids besides </answer>"
    assert not any(_allowed(bitmask, t) for t in foreign)
    assert _allowed(bitmask, tok.encode("a", add_special_tokens=False)[0])
