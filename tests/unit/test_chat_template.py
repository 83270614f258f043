"""glmv's own chat template reproduces GLM-4.1V's prompt format (FACTS.md)."""

from __future__ import annotations

import jinja2
import pytest

from glmv.models.constants import CHAT_TEMPLATE_PATH


def render(messages, **kw):
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(CHAT_TEMPLATE_PATH.read_text()).render(messages=messages, **kw)


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([{"role": "user", "content": "Hi"}], "[gMASK]<sop><|user|>\nHi<|assistant|>\n"),
        (
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "[gMASK]<sop><|system|>\nBe brief.<|user|>\nHi<|assistant|>\n",
        ),
        (
            [{"role": "user", "content": [{"type": "image_url"}, {"type": "text", "text": "What?"}]}],
            "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>What?<|assistant|>\n",
        ),
        (
            [{"role": "user", "content": [{"type": "video_url"}, {"type": "text", "text": "Describe."}]}],
            "[gMASK]<sop><|user|>\n<|begin_of_video|><|video|><|end_of_video|>Describe.<|assistant|>\n",
        ),
        (
            [
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "<think>easy</think><answer>4</answer>"},
                {"role": "user", "content": "3+3?"},
            ],
            "[gMASK]<sop><|user|>\n2+2?<|assistant|>\n4<|user|>\n3+3?<|assistant|>\n",
        ),
    ],
)
def test_prompt_format(messages, expected):
    assert render(messages, add_generation_prompt=True) == expected


def test_enable_thinking_false_prefills_an_empty_thought():
    out = render([{"role": "user", "content": "Hi"}], add_generation_prompt=True, enable_thinking=False)
    assert out.endswith("<|assistant|>\n<think></think>\n")


def test_tiny_model_ships_the_same_template(tiny_model_dir):
    assert (tiny_model_dir / "chat_template.jinja").read_text() == CHAT_TEMPLATE_PATH.read_text()
