"""A table of real-shaped GLM-4.1V outputs and the reasoning / content glmv returns for each (docs/THINKING.md)."""

from __future__ import annotations

import pytest

from glmv.reasoning import ThinkSplitter, prompt_opens_thought, split_reasoning

CASES = [
    # (id, generated text, prompt opened the thought, expected reasoning, expected content)
    ("complete", "<think>Two plus two is four.</think><answer>4</answer>", False, "Two plus two is four.", "4"),
    ("complete-newlines", "<think>\nLet me count.\nThere are 3 cats.\n</think>\n<answer>\nThere are **3** cats.\n</answer>",
     False, "Let me count.\nThere are 3 cats.", "There are **3** cats."),
    ("eos-stripped", "<think>short</think><answer>yes", False, "short", "yes"),  # </answer> is an EOS: not in text
    ("truncated-thinking", "<think>Let me think about the image. First, the", False,
     "Let me think about the image. First, the", ""),
    ("truncated-mid-tag", "<think>almost done</thi", False, "almost done</thi", ""),
    ("think-in-prompt", "The user asks 456*123.\n</think><answer>56088</answer>", True,
     "The user asks 456*123.", "56088"),
    ("think-in-prompt-truncated", "still thinking", True, "still thinking", ""),
    ("no-answer-tags", "<think>reasoning</think>\nThe answer is 7.", False, "reasoning", "The answer is 7."),
    ("only-close-tag", "reasoning without an opener</think>the answer", False, "", "reasoning without an openerthe answer"),
    ("answer-without-close", "<think>r</think><answer>partial answer", False, "r", "partial answer"),
    ("answer-skips-think-close", "<think>r<answer>a</answer>", False, "r", "a"),
    ("text-after-answer-dropped", "<think>r</think><answer>a</answer>\n<|user|> junk", False, "r", "a"),
    ("nested-looking", '<think>The user typed "<think>" in quotes.</think><answer>ok</answer>', False,
     'The user typed "" in quotes.', "ok"),
    ("tag-like-text", "<think>if a < b and c > d</think><answer>use <b>bold</b> and <thinking></answer>", False,
     "if a < b and c > d", "use <b>bold</b> and <thinking>"),
    ("box", "<think>The cat is on the left.</think><answer>The cat: <|begin_of_box|>[[102,340,455,890]]<|end_of_box|>"
     "</answer>", False, "The cat is on the left.", "The cat: [[102,340,455,890]]"),
    ("boxed-final-answer", "<think>456*123=56088</think><answer><|begin_of_box|>56088<|end_of_box|></answer>", False,
     "456*123=56088", "56088"),
    ("boxes-skip-special", "<think>two dogs</think><answer>[[1,2,3,4],[5,6,7,8]]</answer>", False,
     "two dogs", "[[1,2,3,4],[5,6,7,8]]"),
    ("plain-no-thinking", "Just an answer.", False, "", "Just an answer."),
    ("thinking-disabled", "<answer>direct</answer>", False, "", "direct"),
    ("empty", "", False, "", ""),
    ("empty-thought", "<think></think><answer>a</answer>", False, "", "a"),
    ("unicode", "<think>图片里有一只猫 🙂</think><answer>答案是：猫</answer>", False, "图片里有一只猫 🙂", "答案是：猫"),
    ("second-thought", "<think>one</think> <think> two</think><answer>a</answer>", False, "one two", "a"),
    ("budget-forced", "<think>I keep going and going</think><answer>Best guess: 7", False,
     "I keep going and going", "Best guess: 7"),
]


@pytest.mark.parametrize(("text", "in_think", "reasoning", "content"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_table(text, in_think, reasoning, content):
    assert split_reasoning(text, in_think) == (reasoning, content)
    # the same, streamed one character at a time
    splitter = ThinkSplitter(in_think)
    pieces = [splitter.feed(ch) for ch in text] + [splitter.finish()]
    assert ("".join(r for r, _ in pieces), "".join(c for _, c in pieces)) == (reasoning, content)


def test_reasoning_streams_before_the_thought_ends():
    """Reasoning is shown as it is written, not only at </think> (held back: only a possible tag or whitespace)."""
    splitter = ThinkSplitter()
    assert splitter.feed("<think>Looking at") == ("Looking at", "")
    assert splitter.feed(" the image\n") == (" the image", "")
    assert splitter.feed("</") == ("", "")
    assert splitter.feed("think><answer>A cat") == ("", "A cat")
    assert splitter.finish() == ("", "")


@pytest.mark.parametrize(
    ("prompt", "opens"),
    [
        ("[gMASK]<sop><|user|>\nHi<|assistant|>\n", False),
        ("[gMASK]<sop><|user|>\nHi<|assistant|>\n<think>", True),
        ("456*123等于多少？<think>\n", True),
        ("[gMASK]<sop><|user|>\nHi<|assistant|>\n<think></think>\n", False),
        ("<|user|>\nwhat is <think>?<|assistant|>\n", False),
        ("<|assistant|>\n<think>I started", True),
        (None, False),
    ],
)
def test_prompt_opens_thought(prompt, opens):
    assert prompt_opens_thought(prompt) is opens
