"""GrammarBatch: a step's constrained rows' token masks filled together, by xgrammar's BatchGrammarMatcher.

Why: per row, a fill is a few microseconds of xgrammar, but it also costs Python calls and a tensor op per row;
with 64 constrained rows that host time is what is left of a decode step on a fast GPU. Here one step makes one
batched fill (xgrammar spreads the rows over its thread pool, with the GIL released) and one vectorized AND with
the compiler's safety masks. The matchers still advance one token at a time (`Constraint.accept`, as each token is
taken in): xgrammar's batched accept is a serial loop behind an FFI conversion that cost more than it saved (0.0104
against 0.0077 ms a token in the CPU bench). The per-sequence state and its rules stay in Constraint;
`Constraint.fill_mask` is the same fill one row at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import xgrammar as xgr

from glmv.structured.constraint import Constraint, bit_value


class GrammarBatch:
    """Owns one xgrammar BatchGrammarMatcher (its thread pool), made once by whoever owns the step's bitmask."""

    def __init__(self, max_threads: int | Literal["auto"] = "auto"):
        # "auto": half the machine's hardware threads (xgrammar's choice).
        self._matcher = xgr.BatchGrammarMatcher(max_threads)

    def fill_masks(self, bitmask: torch.Tensor, constraints: Sequence[Constraint], rows: Sequence[int]) -> None:
        """Write each constraint's allowed tokens into its row of `bitmask` (int32, CPU, xgrammar's layout), as
        `constraints[i].fill_mask(bitmask, rows[i])` would."""
        if len(constraints) != len(rows):
            raise ValueError(f"{len(constraints)} constraints for {len(rows)} bitmask rows")
        single_rows: list[int] = []
        single_words: list[int] = []
        single_values: list[int] = []
        matchers: list[xgr.GrammarMatcher] = []
        matcher_rows: list[int] = []
        safe_rows: dict[int, tuple[torch.Tensor, list[int]]] = {}  # by id of the safety mask
        for constraint, row in zip(constraints, rows, strict=True):
            only = constraint.only_token
            if only is not None:
                word, bit = divmod(only, 32)
                single_rows.append(row)
                single_words.append(word)
                single_values.append(bit_value(bit))
                continue
            matchers.append(constraint.matcher)
            matcher_rows.append(row)
            safe = constraint.compiled.json_safe
            if safe is not None:
                safe_rows.setdefault(id(safe), (safe, []))[1].append(row)
        if single_rows:
            index = torch.tensor(single_rows, dtype=torch.long)
            bitmask.index_fill_(0, index, 0)
            bitmask.index_put_((index, torch.tensor(single_words, dtype=torch.long)),
                               torch.tensor(single_values, dtype=torch.int32))
        if matchers:
            self._matcher.batch_fill_next_token_bitmask(matchers, bitmask, matcher_rows)
        for safe, safe_at in safe_rows.values():  # one AND per distinct mask (a compiler has two)
            index = torch.tensor(safe_at, dtype=torch.long)
            bitmask.index_copy_(0, index, bitmask.index_select(0, index) & safe)
