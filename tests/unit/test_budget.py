"""ThinkingBudget: the thought gets at most N tokens, then `</think><answer>` is forced; the reserved answer budget
closes the thought early enough that the answer still has its tokens."""

from __future__ import annotations

import pytest

from glmv.engine.budget import ThinkingBudget, make_budget, thought_closed_in_prompt
from glmv.sampling import SamplingParams


class FakeTokenizer:
    """Tags as single added tokens, like GLM's tokenizer; any other character is its own token (100 + ord)."""

    vocab = {"<think>": 1, "</think>": 2, "<answer>": 3, "</answer>": 4, "<|assistant|>": 5, "<|user|>": 6}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            tag = next((t for t in self.vocab if text.startswith(t, i)), None)
            if tag:
                ids.append(self.vocab[tag])
                i += len(tag)
            else:
                ids.append(100 + ord(text[i]))
                i += 1
        return ids

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.vocab.get(token, 0)


TOK = FakeTokenizer()
THINK, END, ANSWER = 1, 2, 3
FORCED = [END, ANSWER]
WORD = 200


def drive(budget: ThinkingBudget, sampled: list[int], max_tokens: int) -> list[int]:
    """A minimal engine loop: force what the budget asks, otherwise take the next 'sampled' token."""
    out: list[int] = []
    queue = list(budget.on_start())
    stream = iter(sampled)
    while len(out) < max_tokens:
        token = queue.pop(0) if queue else next(stream)
        out.append(token)
        queue += budget.on_token(token)
    return out


def test_no_budget_means_none():
    assert make_budget(TOK, None) is None
    assert make_budget(TOK, None, reserved_answer_tokens=5) is None  # no max_tokens known: nothing to reserve from


def test_make_budget_reads_the_tag_ids():
    b = make_budget(TOK, 7)
    assert (b.budget, b.think_end_ids, b.forced_ids, b.answer_start_ids) == (7, [END], FORCED, [ANSWER])


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_budget_forces_close_after_n_thought_tokens(n):
    b = make_budget(TOK, n)
    out = drive(b, [THINK] + [WORD] * 100, max_tokens=n + 6)
    assert out[:n] == [THINK] + [WORD] * (n - 1)
    assert out[n : n + 2] == FORCED
    assert out[n + 2 :] == [WORD] * 4  # the answer follows
    assert b.closed and b.forced and b.reasoning_tokens == n


def test_model_closing_in_time_is_left_alone():
    b = make_budget(TOK, 5)
    out = drive(b, [THINK, WORD, END, ANSWER] + [WORD] * 20, max_tokens=12)
    assert out == [THINK, WORD, END, ANSWER] + [WORD] * 8
    assert b.closed and not b.forced and b.reasoning_tokens == 2


def test_generated_answer_tag_also_ends_the_thought():
    b = make_budget(TOK, 3)
    out = drive(b, [THINK, ANSWER] + [WORD] * 10, max_tokens=8)
    assert END not in out and b.closed and not b.forced


def test_budget_zero_closes_before_the_first_token():
    b = make_budget(TOK, 0)
    out = drive(b, [WORD] * 10, max_tokens=5)
    assert out == FORCED + [WORD] * 3


def test_reserved_answer_budget_leaves_the_answer_its_tokens():
    m, r = 20, 6
    b = make_budget(TOK, None, max_tokens=m, reserved_answer_tokens=r)
    out = drive(b, [THINK] + [WORD] * 100, max_tokens=m)
    close = out.index(END)
    assert out[close : close + 2] == FORCED
    assert len(out) - (close + 2) == r  # exactly r answer tokens remain
    assert close == m - r - len(FORCED)


def test_the_smaller_limit_wins():
    b = make_budget(TOK, 4, max_tokens=20, reserved_answer_tokens=6)
    assert b.limit == 4
    assert drive(b, [WORD] * 50, max_tokens=20).index(END) == 4
    b = make_budget(TOK, 15, max_tokens=20, reserved_answer_tokens=6)
    assert b.limit == 12
    assert drive(b, [WORD] * 50, max_tokens=20).index(END) == 12


def test_reserve_larger_than_room_closes_at_once():
    b = make_budget(TOK, None, max_tokens=5, reserved_answer_tokens=4)
    assert drive(b, [WORD] * 10, max_tokens=5)[:2] == FORCED


def test_remaining_counts_down():
    b = make_budget(TOK, 3)
    assert b.remaining() == 3
    b.on_token(THINK)
    assert b.remaining() == 2
    b.on_token(WORD)
    assert b.on_token(WORD) == FORCED
    assert b.remaining() is None
    assert b.on_token(END) == [] and b.on_token(WORD) == []  # forced ids fed back change nothing


@pytest.mark.parametrize(
    ("prompt", "closed"),
    [
        ("<|user|>hi<|assistant|>\n", False),
        ("<|user|>hi<|assistant|>\n<think>", False),
        ("<|user|>hi<|assistant|>\n<think></think>\n", True),  # enable_thinking: false
        ("<|assistant|>\n<think>a</think>old<|user|>hi<|assistant|>\n", False),  # an earlier turn does not count
        ("456*123<think>\n", False),
    ],
)
def test_thought_closed_in_prompt(prompt, closed):
    ids = TOK.encode(prompt)
    assert thought_closed_in_prompt(TOK, ids) is closed
    assert (make_budget(TOK, 3, prompt_token_ids=ids) is None) is closed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reserved_answer_tokens": 0}, "reserved_answer_tokens must be >= 1"),
        ({"reserved_answer_tokens": 10, "max_tokens": 10}, "must be smaller than max_tokens"),
        ({"thinking_budget": -1}, "thinking_budget must be >= 0"),
    ],
)
def test_sampling_params_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_sampling_params_accepts_a_reserve():
    p = SamplingParams(max_tokens=100, reserved_answer_tokens=20, thinking_budget=50)
    assert (p.reserved_answer_tokens, p.thinking_budget) == (20, 50)
    assert SamplingParams().reserved_answer_tokens is None
