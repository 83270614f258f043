"""Constraint: one sequence's structured-output state. The thought is free; the grammar starts once `<answer>` opens.

Phases, advanced with every output token (sampled or forced by the thinking budget):
START (only `<think>`: GLM-4.1V always opens its thought, and the reasoning splitter needs the tag to tell the
thought from the answer) -> THINKING (no mask) -> after `</think>`: OPENING (only `<answer>` may follow) -> after `<answer>`: ANSWER (the
grammar's mask; every token advances its matcher) -> once the grammar is complete: only the answer's end
(`</answer>` or another stop id) is allowed, which the engine's stop rule turns into the end of the sequence.
A thinking budget forces `</think><answer>`, which walks the same path, so a cut-short thought still yields a valid
answer. A prompt that already opened the answer (a prefilled `<think></think><answer>`) starts in ANSWER.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import torch
import xgrammar as xgr

from glmv.structured.compiler import CompiledStructure


class Phase(enum.Enum):
    START = "start"
    THINKING = "thinking"
    OPENING = "opening"
    ANSWER = "answer"


class Constraint:
    def __init__(self, compiled: CompiledStructure, prompt_token_ids: Sequence[int], assistant_id: int | None):
        self.compiled = compiled
        self.matcher = xgr.GrammarMatcher(compiled.grammar, override_stop_tokens=list(compiled.stop_token_ids))
        self.phase = _phase_after_prompt(compiled, prompt_token_ids, assistant_id)
        self.rejected = 0  # tokens the grammar did not accept (forced ones: the mask keeps sampled ones valid)

    @property
    def terminated(self) -> bool:
        return self.phase is Phase.ANSWER and self.matcher.is_terminated()

    @property
    def masks_next(self) -> bool:
        """Whether the next token is constrained (the sampler masks this row)."""
        return self.phase is not Phase.THINKING and not self.terminated

    def accept(self, token: int) -> None:
        """Advance by one output token (a refusal by the grammar counts in `rejected`)."""
        if self._takes(token) and not self.matcher.accept_token(token):
            self.rejected += 1

    def _takes(self, token: int) -> bool:
        """Advance the phase by `token`; whether the grammar must take it too (the answer is open and its matcher
        not terminated)."""
        c = self.compiled
        if self.phase in (Phase.START, Phase.THINKING):
            if token == c.think_start_id:
                self.phase = Phase.THINKING
            elif token == c.think_end_id:
                self.phase = Phase.OPENING
            elif token == c.answer_open_id:
                self.phase = Phase.ANSWER
            return False
        if self.phase is Phase.OPENING:
            if token == c.answer_open_id:
                self.phase = Phase.ANSWER
            return False
        return not self.matcher.is_terminated()

    @property
    def only_token(self) -> int | None:
        """The one token the phase allows next (`<think>` at the start, `<answer>` after the thought), or None
        when the matcher decides."""
        if self.phase is Phase.START:
            return self.compiled.think_start_id
        if self.phase is Phase.OPENING:
            return self.compiled.answer_open_id
        return None

    def fill_mask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write this sequence's allowed tokens into row `row` of an xgrammar bitmask (int32, CPU), alone
        (GrammarBatch.fill_masks fills a step's rows together)."""
        only = self.only_token
        if only is not None:
            bitmask[row].zero_()
            word, bit = divmod(only, 32)
            bitmask[row, word] = bit_value(bit)
        else:
            self.matcher.fill_next_token_bitmask(bitmask, row)
            if self.compiled.json_safe is not None:
                bitmask[row] &= self.compiled.json_safe


def bit_value(bit: int) -> int:
    """The int32 value with only `bit` set (bit 31 is the sign bit)."""
    return (1 << bit) - (1 << 32 if bit == 31 else 0)


def _phase_after_prompt(c: CompiledStructure, ids: Sequence[int], assistant_id: int | None) -> Phase:
    """Where the prompt's last assistant turn leaves the output: in the thought, between the tags, or in the answer."""
    tail = list(ids)
    if assistant_id is not None and assistant_id in tail:
        tail = tail[len(tail) - tail[::-1].index(assistant_id):]
    phase = Phase.START
    for token in tail:
        if token == c.think_start_id and phase is Phase.START:
            phase = Phase.THINKING
        elif token == c.answer_open_id:
            phase = Phase.ANSWER
        elif token == c.think_end_id and phase in (Phase.START, Phase.THINKING):
            phase = Phase.OPENING
    return phase
