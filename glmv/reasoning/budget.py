"""ThinkingBudget: after N reasoning tokens, force `</think><answer>` so the model still answers.

Engines call `on_token(token_id)` for every generated token (sampled or forced) and append the returned ids as
forced tokens before sampling again. Pure state machine, no I/O; shared by glmv's engine and the reference engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ThinkingBudget:
    budget: int  # most reasoning tokens before the thought is closed
    think_end_ids: list[int]  # token ids of "</think>" (usually one added token)
    forced_ids: list[int]  # token ids of "</think><answer>" appended when the budget runs out
    reasoning_tokens: int = 0
    closed: bool = False  # </think> seen (generated or forced): the budget no longer applies
    _tail: list[int] = field(default_factory=list)

    def on_token(self, token_id: int) -> list[int]:
        """Record one generated token; return ids the engine must force next (empty if none)."""
        if self.closed:
            return []
        self._tail = (self._tail + [token_id])[-len(self.think_end_ids) :]
        if self._tail == self.think_end_ids:
            self.closed = True
            return []
        self.reasoning_tokens += 1
        if self.reasoning_tokens >= self.budget:
            self.closed = True
            return list(self.forced_ids)
        return []

    def remaining(self) -> int | None:
        return None if self.closed else self.budget - self.reasoning_tokens


def make_budget(tokenizer, budget: int | None) -> ThinkingBudget | None:
    """Build a ThinkingBudget for a tokenizer, or None when no budget applies."""
    if budget is None:
        return None
    end = tokenizer.encode("</think>", add_special_tokens=False)
    forced = tokenizer.encode("</think><answer>", add_special_tokens=False)
    return ThinkingBudget(budget=budget, think_end_ids=list(end), forced_ids=list(forced))
