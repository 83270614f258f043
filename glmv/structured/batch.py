"""GrammarBatch: a step's constrained rows' token masks filled together, by xgrammar's BatchGrammarMatcher.

Why: per row, a fill is a few microseconds of xgrammar, but it also costs Python calls and a tensor op per row;
with 64 constrained rows that host time is what is left of a decode step on a fast GPU. Here one step makes one
batched fill (xgrammar spreads the rows over its thread pool, with the GIL released) into a host bitmask kept from
step to step, and one vectorized AND per safety mask of the compiler, which the caller runs where the bitmask is
used (`and_safety_masks`; on the device, so the engine thread runs no host tensor op whose PyTorch thread pool would
spin against xgrammar's). The matchers still advance one token at a time (`Constraint.accept`, as each token is
taken in): xgrammar's batched accept is a serial loop behind an FFI conversion that cost more than it saved (0.0104
against 0.0077 ms a token in the CPU bench). The per-sequence state and its rules stay in Constraint;
`Constraint.fill_mask` is the same fill one row at a time, its safety mask included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import xgrammar as xgr

from glmv.structured.constraint import Constraint, bit_value


@dataclass(frozen=True)
class SafetyRows:
    """A compiler's safety mask (int32 bitmask row, CPU) and the bitmask rows it is ANDed into."""

    mask: torch.Tensor
    rows: list[int]


def and_safety_masks(bitmask: torch.Tensor, groups: Sequence[SafetyRows]) -> None:
    """AND each group's mask into its rows of `bitmask`, on whatever device the bitmask is."""
    for group in groups:
        index = torch.tensor(group.rows, dtype=torch.long).to(bitmask.device, non_blocking=True)
        bitmask[index] &= group.mask.to(bitmask.device, non_blocking=True)


class GrammarBatch:
    """Owns one xgrammar BatchGrammarMatcher (its thread pool) and the host bitmask a step fills, made once by
    whoever owns the step's sampling."""

    def __init__(self, max_threads: int | Literal["auto"] = "auto"):
        # "auto": half the machine's hardware threads (xgrammar's choice).
        self._matcher = xgr.BatchGrammarMatcher(max_threads)
        self._host = torch.empty(0, 0, dtype=torch.int32)

    def host_bitmask(self, rows: int, vocab: int) -> torch.Tensor:
        """A [rows, ceil(vocab / 32)] int32 bitmask on the host, reused from step to step (its rows hold whatever
        an earlier step left: fill_masks writes every row it is given, and only those rows are applied)."""
        words = -(-vocab // 32)
        if self._host.shape[0] < rows or self._host.shape[1] != words:
            with torch.inference_mode(False):  # a normal tensor: steps run in and out of inference mode
                self._host = torch.empty(max(rows, self._host.shape[0]), words, dtype=torch.int32)
        return self._host[:rows]

    def fill_masks(self, bitmask: torch.Tensor, constraints: Sequence[Constraint],
                   rows: Sequence[int]) -> list[SafetyRows]:
        """Write each constraint's grammar mask into its row of `bitmask` (int32, CPU, xgrammar's layout). Returns
        the safety masks still to AND in (and_safety_masks); with them the rows are what
        `constraints[i].fill_mask(bitmask, rows[i])` writes."""
        if len(constraints) != len(rows):
            raise ValueError(f"{len(constraints)} constraints for {len(rows)} bitmask rows")
        single_rows: list[int] = []
        single_words: list[int] = []
        single_values: list[int] = []
        matchers: list[xgr.GrammarMatcher] = []
        matcher_rows: list[int] = []
        safe_rows: dict[int, SafetyRows] = {}  # by id of the safety mask
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
                safe_rows.setdefault(id(safe), SafetyRows(safe, [])).rows.append(row)
        if single_rows:
            index = torch.tensor(single_rows, dtype=torch.long)
            bitmask.index_fill_(0, index, 0)
            bitmask.index_put_((index, torch.tensor(single_words, dtype=torch.long)),
                               torch.tensor(single_values, dtype=torch.int32))
        if matchers:
            self._matcher.batch_fill_next_token_bitmask(matchers, bitmask, matcher_rows)
        return list(safe_rows.values())  # one AND per distinct mask (a compiler has two)
