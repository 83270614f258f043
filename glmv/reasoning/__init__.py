"""Thinking: split GLM-4.1V output into reasoning and answer and clean histories (docs/THINKING.md); the engines
budget the thought (glmv/engine/budget.py)."""

from glmv.reasoning.boxes import Box, extract_boxes
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
    "answer_only",
    "count_reasoning_tokens",
    "extract_boxes",
    "prompt_opens_thought",
    "prompt_split_state",
    "split_reasoning",
    "strip_reasoning_from_history",
]
