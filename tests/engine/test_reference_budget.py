"""The thinking budget in the reference engine (TransformersEngine) with the tiny model.

logit_bias on one filler token plus ignore_eos makes the tiny random model deterministic: it writes the filler
forever and never closes its thought, so every `</think><answer>` in these outputs was forced by the budget.
"""

from __future__ import annotations

import asyncio

import pytest

from glmv.config import EngineConfig, ModelConfig
from glmv.engine.reference import TransformersEngine
from glmv.inputs.processor import PromptBuilder
from glmv.reasoning import ThinkSplitter, count_reasoning_tokens, split_reasoning
from glmv.sampling import FinishReason, SamplingParams


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    builder = PromptBuilder(tiny_model_dir)
    engine = TransformersEngine(
        ModelConfig.from_dir(tiny_model_dir),
        EngineConfig(model=str(tiny_model_dir), engine="transformers", device="cpu", dtype="float32"),
        builder.tokenizer,
    )
    return builder, engine


@pytest.fixture(scope="module")
def ids(setup):
    tok = setup[0].tokenizer

    def one(text: str) -> int:
        (token,) = tok.encode(text, add_special_tokens=False)
        return token

    # a visible word that is one token: the filler the biased model repeats
    encoded = [tok.encode(w, add_special_tokens=False) for w in (" The", " the", "The", "A")]
    filler = next(e[0] for e in encoded if len(e) == 1)
    return {"filler": filler, "think": one("<think>"), "end": one("</think>"), "answer": one("<answer>")}


def chat_prompt(builder, suffix: str = "", **template_kwargs):
    text = builder.render([{"role": "user", "content": "What is in the image?"}], **template_kwargs) + suffix
    return builder.from_text(text)


def run(engine, prompt, params):
    """Collect a request's stream: the text deltas, all token ids and the last output."""

    async def go():
        deltas, token_ids, last = [], [], None
        async for out in engine.generate(prompt, params, "budget-test"):
            c = out.outputs[0]
            deltas.append(c.text)
            token_ids += c.token_ids
            last = c
        return deltas, token_ids, last

    return asyncio.run(go())


def filler_params(ids, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, ignore_eos=True, logit_bias={ids["filler"]: 100.0}, **kw)


@pytest.mark.parametrize("budget", [1, 4, 9])
def test_budget_caps_reasoning_and_an_answer_follows(setup, ids, budget):
    builder, engine = setup
    prompt = chat_prompt(builder, "<think>")  # the prompt opens the thought, as in the tutorial's completions flow
    deltas, out_ids, last = run(engine, prompt, filler_params(ids, max_tokens=budget + 8, thinking_budget=budget))
    # token level: at most N thought tokens, then the forced close, then the model answers
    assert out_ids.index(ids["end"]) == budget
    assert out_ids[budget : budget + 2] == [ids["end"], ids["answer"]]
    assert out_ids[budget + 2 :] == [ids["filler"]] * 6
    assert len(out_ids) == budget + 8 and last.num_tokens == budget + 8 and last.forced_tokens == 2
    assert last.finish_reason == FinishReason.LENGTH
    assert count_reasoning_tokens(out_ids, [ids["end"]]) == budget + 1
    # text level: forced tokens are in the text, the split gives a non-empty answer
    text = "".join(deltas)
    tok = builder.tokenizer
    assert text == tok.decode(out_ids, skip_special_tokens=True)
    reasoning, content = split_reasoning(text, True)
    filler_text = tok.decode([ids["filler"]]).strip()
    assert content and content.replace(filler_text, "").strip() == ""
    assert len(tok.encode(reasoning, add_special_tokens=False)) <= budget
    # streaming: the splitter over the engine's deltas gives the same split
    splitter = ThinkSplitter(True)
    pieces = [splitter.feed(d) for d in deltas] + [splitter.finish()]
    assert ("".join(r for r, _ in pieces), "".join(c for _, c in pieces)) == (reasoning, content)


def test_without_a_budget_the_thought_never_ends(setup, ids):
    builder, engine = setup
    _, out_ids, last = run(engine, chat_prompt(builder, "<think>"), filler_params(ids, max_tokens=12))
    assert ids["end"] not in out_ids and last.forced_tokens == 0
    text = builder.tokenizer.decode(out_ids, skip_special_tokens=True)
    reasoning, content = split_reasoning(text, True)
    assert reasoning and content == ""  # all reasoning: this is what the budget fixes


def test_model_that_closes_by_itself_is_not_forced(setup, ids):
    builder, engine = setup
    params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=6, thinking_budget=4,
                            logit_bias={ids["end"]: 100.0})
    _, out_ids, last = run(engine, chat_prompt(builder, "<think>"), params)
    assert out_ids[0] == ids["end"] and ids["answer"] not in out_ids and last.forced_tokens == 0


def test_reserved_answer_tokens_close_the_thought_in_time(setup, ids):
    builder, engine = setup
    max_tokens, reserved = 14, 5
    _, out_ids, last = run(engine, chat_prompt(builder, "<think>"),
                           filler_params(ids, max_tokens=max_tokens, reserved_answer_tokens=reserved))
    close = out_ids.index(ids["end"])
    assert close == max_tokens - reserved - 2
    assert out_ids[close + 1] == ids["answer"] and len(out_ids[close + 2 :]) == reserved
    assert last.forced_tokens == 2


def test_budget_zero_and_a_model_that_opens_its_own_thought(setup, ids):
    """Budget 0 closes the thought before the model writes anything; with a sampled (seeded) request too."""
    builder, engine = setup
    params = SamplingParams(temperature=0.8, seed=3, max_tokens=8, ignore_eos=True, thinking_budget=0)
    deltas, out_ids, _ = run(engine, chat_prompt(builder), params)
    assert out_ids[:2] == [ids["end"], ids["answer"]]
    assert split_reasoning("".join(deltas))[0] == ""


def test_thinking_disabled_in_the_prompt_means_no_budget(setup, ids):
    """enable_thinking=false pre-fills `<think></think>`: the output is all answer and nothing is forced."""
    builder, engine = setup
    prompt = chat_prompt(builder, enable_thinking=False)
    assert prompt.text.endswith("<think></think>\n")
    deltas, out_ids, last = run(engine, prompt, filler_params(ids, max_tokens=8, thinking_budget=2))
    assert ids["end"] not in out_ids and last.forced_tokens == 0
    reasoning, content = split_reasoning("".join(deltas))
    assert reasoning == "" and content


def test_budget_applies_to_each_of_n(setup, ids):
    builder, engine = setup

    async def go():
        seqs: dict[int, list[int]] = {}
        async for out in engine.generate(chat_prompt(builder, "<think>"),
                                         filler_params(ids, n=2, max_tokens=7, thinking_budget=3), "n2"):
            for c in out.outputs:
                seqs.setdefault(c.index, []).extend(c.token_ids)
        return seqs

    seqs = asyncio.run(go())
    assert sorted(seqs) == [0, 1]
    for seq in seqs.values():
        assert seq[3:5] == [ids["end"], ids["answer"]]
