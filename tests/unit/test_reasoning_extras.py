"""Boxes, reasoning-token counts and the history rule (glmv/reasoning/{boxes,usage,history}.py)."""

from __future__ import annotations

import copy

import pytest

from glmv.reasoning import Box, count_reasoning_tokens, extract_boxes, split_reasoning, strip_reasoning_from_history

# ---- boxes -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "boxes"),
    [
        ("<|begin_of_box|>[[102,340,455,890]]<|end_of_box|>", [Box(102, 340, 455, 890)]),
        ("Dogs: <|begin_of_box|>[[1, 2, 3, 4], [5,6,7,8]]<|end_of_box|> and a cat <|begin_of_box|>[0,0,1000,1000]"
         "<|end_of_box|>", [Box(1, 2, 3, 4), Box(5, 6, 7, 8), Box(0, 0, 1000, 1000)]),
        ("The cat is at [[120, 340, 560, 780]].", [Box(120, 340, 560, 780)]),  # markers already skipped
        ("two: [[1,2,3,4],[5,6,7,8]]", [Box(1, 2, 3, 4), Box(5, 6, 7, 8)]),
        ("<|begin_of_box|>56088<|end_of_box|>", []),  # a boxed final answer, not coordinates
        ("a list [1, 2, 3, 4] is not a box", []),
        ("out of range [[0, 0, 1001, 5]]", []),
        ("truncated <|begin_of_box|>[[10,20,30,40]]", [Box(10, 20, 30, 40)]),
        ("", []),
    ],
)
def test_extract_boxes(text, boxes):
    assert extract_boxes(text) == boxes


def test_boxes_survive_the_split_and_scale_to_pixels():
    _, content = split_reasoning("<think>left side</think><answer>Here: <|begin_of_box|>[[100,200,500,1000]]"
                                 "<|end_of_box|></answer>")
    assert content == "Here: [[100,200,500,1000]]"
    (box,) = extract_boxes(content)
    assert box.to_pixels(640, 480) == (64.0, 96.0, 320.0, 480.0)
    assert box.as_list() == [100, 200, 500, 1000]


# ---- reasoning token counts ------------------------------------------------------------------------------------

THINK, END, ANSWER = 10, 11, 12


@pytest.mark.parametrize(
    ("ids", "kwargs", "expected"),
    [
        ([THINK, 1, 2, END, ANSWER, 3], {}, 4),  # up to and including </think>
        ([THINK, 1, 2, 3], {}, 4),  # cut off while thinking: all of it
        ([1, 2, END, 3], {}, 3),  # the prompt opened the thought
        ([], {}, 0),
        ([ANSWER, 3, 4], {"in_think": False}, 0),  # thinking disabled: no thought at all
        ([THINK, 1, 2], {"in_think": False, "think_start_ids": [THINK]}, 3),
        ([5, 6], {"in_think": False, "think_start_ids": [THINK]}, 0),
    ],
)
def test_count_reasoning_tokens(ids, kwargs, expected):
    assert count_reasoning_tokens(ids, [END], **kwargs) == expected


def test_count_reasoning_tokens_multi_token_close():
    assert count_reasoning_tokens([1, 7, 2, 7, 8, 9], [7, 8]) == 5


# ---- history ---------------------------------------------------------------------------------------------------


def test_history_keeps_only_answers():
    messages = [
        {"role": "system", "content": "Be brief. <think> stays in system text"},
        {"role": "user", "content": "2+2? <answer>user text is never touched</answer>"},
        {"role": "assistant", "content": "<think>easy</think><answer>\n4\n</answer>", "reasoning_content": "easy",
         "reasoning": "easy"},
        {"role": "user", "content": [{"type": "text", "text": "and 3+3?"}, {"type": "image_url", "image_url": {}}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<think>add"}, {"type": "text", "text": "</think>"},
                                          {"type": "text", "text": "<answer>6 at <|begin_of_box|>[[1,2,3,4]]"
                                                                   "<|end_of_box|></answer>"}]},
        {"role": "assistant", "content": "plain answer"},
        {"role": "assistant", "content": None, "reasoning_content": "only thinking"},
    ]
    before = copy.deepcopy(messages)
    out = strip_reasoning_from_history(messages)
    assert messages == before  # the input is not modified
    assert out[0] == messages[0] and out[1] == messages[1] and out[3] == messages[3]
    assert out[2] == {"role": "assistant", "content": "4"}
    assert out[4] == {"role": "assistant", "content": [{"type": "text", "text": "6 at [[1,2,3,4]]"}]}
    assert out[5] == {"role": "assistant", "content": "plain answer"}
    assert out[6] == {"role": "assistant", "content": None}


def test_history_truncated_thought_leaves_an_empty_turn():
    out = strip_reasoning_from_history([{"role": "assistant", "content": "<think>never finished"}])
    assert out == [{"role": "assistant", "content": ""}]
