"""ThinkingBudget: close an overlong thought with `</think><answer>` so the model still writes an answer.

Two limits, either or both per request:
- a thinking budget N: the thought (every token generated before `</think>`, a generated `<think>` included) gets at
  most N tokens; then the engine appends `</think><answer>` itself (the official recipe, at 8192 tokens);
- a reserved answer budget R with max_tokens M: if the thought is still open when only `R + len(forced)` tokens of
  M are left, it is closed the same way, so the answer always has R tokens to be written in.

Engines drive it: `on_start()` once before the first token, then `on_token(id)` for every token that becomes part of
the output (sampled or forced); each returns the ids the engine must append next, in order, instead of sampling.
Forced tokens are ordinary output tokens: they count toward max_tokens and appear in the text. Pure state machine,
no I/O; shared by glmv's engine and the reference engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ThinkingBudget:
    budget: int | None  # most thought tokens before the engine closes the thought; None: no such limit
    think_end_ids: list[int]  # token ids of "</think>" (one added token in GLM's tokenizer)
    forced_ids: list[int]  # token ids of "</think><answer>", appended when a limit is reached
    max_tokens: int | None = None  # the request's effective max_tokens (needed for the reserved answer budget)
    reserved_answer_tokens: int | None = None  # tokens kept for the answer after the forced ids
    answer_start_ids: list[int] = field(default_factory=list)  # "<answer>": also ends the thought if generated
    reasoning_tokens: int = 0  # thought tokens generated so far (the closing tag not included)
    closed: bool = False  # the thought ended (generated or forced): nothing more is forced
    forced: bool = False  # the engine closed the thought (as opposed to the model)
    _tail: list[int] = field(default_factory=list)

    @property
    def limit(self) -> int | None:
        """Thought tokens after which the thought is closed: the smaller of the two limits (None: no limit)."""
        limits = []
        if self.budget is not None:
            limits.append(self.budget)
        if self.reserved_answer_tokens is not None and self.max_tokens is not None:
            limits.append(self.max_tokens - self.reserved_answer_tokens - len(self.forced_ids))
        return min(limits) if limits else None

    def on_start(self) -> list[int]:
        """Before the first token: ids to force at once (a limit of 0 or less closes the thought immediately)."""
        limit = self.limit
        if self.closed or limit is None or limit > 0:
            return []
        return self._force()

    def on_token(self, token_id: int) -> list[int]:
        """Record one output token; return the ids the engine must force next (empty if none)."""
        if self.closed:
            return []
        keep = max(len(self.think_end_ids), len(self.answer_start_ids), 1)
        self._tail = (self._tail + [token_id])[-keep:]
        if self._ends_with(self.think_end_ids) or self._ends_with(self.answer_start_ids):
            self.closed = True
            return []
        self.reasoning_tokens += 1
        limit = self.limit
        if limit is not None and self.reasoning_tokens >= limit:
            return self._force()
        return []

    def remaining(self) -> int | None:
        """Thought tokens left before the engine closes the thought (None: closed, or no limit)."""
        limit = self.limit
        return None if self.closed or limit is None else max(0, limit - self.reasoning_tokens)

    def _ends_with(self, ids: list[int]) -> bool:
        return bool(ids) and self._tail[-len(ids) :] == ids

    def _force(self) -> list[int]:
        self.closed = True
        self.forced = True
        return list(self.forced_ids)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def thought_closed_in_prompt(tokenizer: Any, prompt_token_ids: Sequence[int]) -> bool:
    """True when the prompt's last assistant turn already closed the thought (`enable_thinking: false` renders
    `<think></think>`): then the output is all answer and no budget applies."""
    think_start = _ids(tokenizer, "<think>")
    think_end = _ids(tokenizer, "</think>")
    if len(think_start) != 1 or len(think_end) != 1:
        return False  # a tokenizer without the tags as single tokens: nothing to detect reliably
    ids = list(prompt_token_ids)
    assistant = tokenizer.convert_tokens_to_ids("<|assistant|>")
    if isinstance(assistant, int) and assistant in ids:
        ids = ids[len(ids) - ids[::-1].index(assistant) :]
    last_start = max((i for i, t in enumerate(ids) if t == think_start[0]), default=-1)
    last_end = max((i for i, t in enumerate(ids) if t == think_end[0]), default=-1)
    return last_end > last_start


def make_budget(
    tokenizer: Any,
    budget: int | None,
    *,
    max_tokens: int | None = None,
    reserved_answer_tokens: int | None = None,
    prompt_token_ids: Sequence[int] | None = None,
) -> ThinkingBudget | None:
    """Build a ThinkingBudget for one sequence, or None when no limit applies.

    max_tokens: the effective max_tokens of the request (the engine's, after filling in the context room);
    needed for `reserved_answer_tokens`. prompt_token_ids: when given and the prompt already closed the thought,
    no budget applies.
    """
    reserved = reserved_answer_tokens if max_tokens is not None else None
    if budget is None and reserved is None:
        return None
    if prompt_token_ids is not None and thought_closed_in_prompt(tokenizer, prompt_token_ids):
        return None
    return ThinkingBudget(
        budget=budget,
        think_end_ids=_ids(tokenizer, "</think>"),
        forced_ids=_ids(tokenizer, "</think><answer>"),
        max_tokens=max_tokens,
        reserved_answer_tokens=reserved,
        answer_start_ids=_ids(tokenizer, "<answer>"),
    )
