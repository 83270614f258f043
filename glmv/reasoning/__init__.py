"""Splits GLM-4.1V output into reasoning (<think>) and answer (<answer>), whole or streamed."""

from glmv.reasoning.parser import ThinkSplitter, split_reasoning

__all__ = ["ThinkSplitter", "split_reasoning"]
