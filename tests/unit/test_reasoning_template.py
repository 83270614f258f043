"""The chat template and the thinking rules agree: history turns keep only the answer, and
chat_template_kwargs {"enable_thinking": false} reaches the template through PromptBuilder."""

from __future__ import annotations

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from glmv.inputs.processor import PromptBuilder
from glmv.models.constants import CHAT_TEMPLATE_PATH
from glmv.reasoning import answer_only, prompt_opens_thought, strip_reasoning_from_history


def render(messages, **kw):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(CHAT_TEMPLATE_PATH.read_text()).render(messages=messages, **kw)


ASSISTANT_TEXTS = [
    "<think>easy</think><answer>4</answer>",
    "<think>\nstep\n</think>\n<answer>\nThe answer is 4.\n</answer>",
    "<think>r</think>no answer tags",
    "<think>r</think><answer>at <|begin_of_box|>[[1,2,3,4]]<|end_of_box|></answer>",
    "<think>cut off",
    "plain answer",
    "<answer>only an answer</answer>",
    "<think>r</think><answer>a</answer> trailing",
]


@pytest.mark.parametrize("text", ASSISTANT_TEXTS)
def test_template_history_rule_matches_the_splitter(text):
    """The template on raw assistant text gives what the doors send after strip_reasoning_from_history."""
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}]
    expected = "[gMASK]<sop><|user|>\nq<|assistant|>\n" + answer_only(text)
    assert render(messages) == expected
    assert render(strip_reasoning_from_history(messages)) == expected


def test_template_drops_reasoning_fields(tiny_model_dir):
    builder = PromptBuilder(tiny_model_dir)
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>add</think><answer>4</answer>", "reasoning_content": "SECRET"},
        {"role": "user", "content": "3+3?"},
    ]
    text = builder.render(strip_reasoning_from_history(messages))
    assert "SECRET" not in text and "add" not in text and "<think>" not in text
    assert text == "[gMASK]<sop><|user|>\n2+2?<|assistant|>\n4<|user|>\n3+3?<|assistant|>\n"


def test_enable_thinking_passes_through_prompt_builder(tiny_model_dir):
    builder = PromptBuilder(tiny_model_dir)
    messages = [{"role": "user", "content": "Hi"}]
    on = builder.render(messages, True)
    off = builder.render(messages, True, enable_thinking=False)
    explicit_on = builder.render(messages, True, enable_thinking=True)
    assert on == explicit_on == "[gMASK]<sop><|user|>\nHi<|assistant|>\n"
    assert off == on + "<think></think>\n"
    assert not prompt_opens_thought(off) and not prompt_opens_thought(on)
    # the pre-filled empty thought is two single tokens in the prompt
    tok = builder.tokenizer
    tail = builder.from_text(off).token_ids[-3:]
    assert tail[:2] == tok.convert_tokens_to_ids(["<think>", "</think>"])
