"""prompt_split_state: the splitter starts where the prompt's last assistant turn (a prefill) left the output."""

from __future__ import annotations

import pytest

from glmv.reasoning import SplitState, ThinkSplitter, prompt_split_state, split_reasoning

HEAD = "[gMASK]<sop><|user|>\nHi<|assistant|>\n"


@pytest.mark.parametrize("tail, state", [
    ("", SplitState.START),
    ("<think>", SplitState.THINK),
    ("<think>I am thinking <thi", SplitState.THINK),  # a half tag in the prefill decides nothing
    ("<think></think>", SplitState.AFTER_THINK),
    ("<think></think>\n", SplitState.AFTER_THINK),
    ("<think></think><answer>", SplitState.ANSWER),
    ("<think>a</think><answer>b</answer>", SplitState.ANSWER),  # continued, not dropped
    ("The answer", SplitState.START),
])
def test_state_after_prefill(tail, state):
    assert prompt_split_state(HEAD + tail) is state


def test_only_the_last_assistant_turn_counts():
    text = "[gMASK]<sop><|user|>\nx<|assistant|>\n<think>old<|user|>\ny<|assistant|>\n<think></think><answer>"
    assert prompt_split_state(text) is SplitState.ANSWER
    assert prompt_split_state(None) is SplitState.START


def test_splitter_from_each_state():
    assert split_reasoning("more thought</think><answer>yes</answer>", SplitState.THINK) == ("more thought", "yes")
    assert split_reasoning("yes</answer>", SplitState.ANSWER) == ("", "yes")
    assert split_reasoning("<think>x</think>y", SplitState.ANSWER) == ("", "xy"), "inside the answer tags are dropped"
    s = ThinkSplitter(SplitState.THINK)
    parts = [s.feed(d) for d in ("a b", " c</th", "ink>d")] + [s.finish()]
    assert ("".join(p[0] for p in parts), "".join(p[1] for p in parts)) == ("a b c", "d")
