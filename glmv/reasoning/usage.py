"""Reasoning token counts for usage.completion_tokens_details.reasoning_tokens, from the generated token ids."""

from __future__ import annotations

from collections.abc import Sequence


def _find(haystack: Sequence[int], needle: Sequence[int]) -> int:
    """Index of the first occurrence of `needle` in `haystack`, or -1."""
    n = len(needle)
    if n == 0:
        return -1
    first = needle[0]
    for i in range(len(haystack) - n + 1):
        if haystack[i] == first and list(haystack[i : i + n]) == list(needle):
            return i
    return -1


def count_reasoning_tokens(
    output_token_ids: Sequence[int],
    think_end_ids: Sequence[int],
    *,
    in_think: bool = True,
    think_start_ids: Sequence[int] | None = None,
) -> int:
    """Generated tokens spent thinking: those before and including the first `</think>`.

    Without `</think>` the output is all thought (cut off by max_tokens) and every token counts, when the output
    was inside a thought: the prompt opened it (`in_think`, the default) or the output itself holds `<think>`
    (pass `think_start_ids`). An output that never thought (e.g. `enable_thinking: false`, which closes the thought
    in the prompt; pass `in_think=False`) counts 0, matching the splitter, which puts such text in the answer.
    Forced `</think><answer>` tokens from a thinking budget are generated tokens like any other.
    """
    end = _find(output_token_ids, think_end_ids)
    if end != -1:
        return end + len(think_end_ids)
    if in_think:
        return len(output_token_ids)
    if think_start_ids and _find(output_token_ids, think_start_ids) != -1:
        return len(output_token_ids)
    return 0
