"""Thinking: split GLM-4.1V output into reasoning and answer, budget the thought, clean histories (docs/THINKING.md)."""

from glmv.reasoning.boxes import Box, extract_boxes
from glmv.reasoning.budget import ThinkingBudget, make_budget, thought_closed_in_prompt
from glmv.reasoning.history import answer_only, strip_reasoning_from_history
from glmv.reasoning.parser import (
    HIDDEN_MARKERS,
    SplitState,
    ThinkSplitter,
    prompt_opens_thought,
    prompt_split_state,
    split_reasoning,
)
from glmv.reasoning.usage import count_reasoning_tokens

__all__ = [
    "HIDDEN_MARKERS",
    "Box",
    "SplitState",
    "ThinkSplitter",
    "ThinkingBudget",
    "answer_only",
    "count_reasoning_tokens",
    "extract_boxes",
    "make_budget",
    "prompt_opens_thought",
    "prompt_split_state",
    "split_reasoning",
    "strip_reasoning_from_history",
    "thought_closed_in_prompt",
]
