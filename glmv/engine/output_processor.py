"""OutputProcessor: the engine's output side, from a sampled token id to the text deltas a door streams.

It owns every rule between the sampler and a RequestOutput: the thinking budget's forced tokens, stop token ids,
max_tokens and the context length, incremental detokenization, stop strings, logprob entries, and the queue that
lets text work overlap the device. It runs in two halves:

- `take_in` when a step's tokens arrive: append the sampled token (with the ids the budget forces before and after
  it), apply the token-id rules in this order: a stop token id (generation_config's EOS list, which includes
  `</answer>`, unless ignore_eos; plus params.stop_token_ids; only once min_tokens are out), then max_tokens or the
  context length. A sequence that ends here is finished at once (its KV blocks freed) and its tokens queued.
- `emit` while the next step runs on the device: detokenize the queued tokens, apply stop strings and build one
  CompletionOutput per sequence that has news.

Outputs therefore leave one step after their tokens were sampled, and a sequence ended by a stop string has
computed (and drops) one extra token.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from glmv.engine.budget import ThinkingBudget, make_budget
from glmv.engine.detokenizer import IncrementalDetokenizer
from glmv.engine.outputs import CompletionOutput, TokenLogprob
from glmv.engine.request import Request, RequestStatus
from glmv.sampling import SamplingParams
from glmv.structured.constraint import Constraint


class TokenEnd(enum.Enum):
    """Why a queued token ended its sequence (stop strings are found later, on the text)."""

    STOP_ID = "stop_id"
    LENGTH = "length"


@dataclass
class QueuedToken:
    """A token appended to a sequence whose text is not produced yet."""

    token: int
    forced: bool
    logprob: float | None
    top: list[tuple[int, float]] | None
    index: int  # its 1-based position among the sequence's output tokens
    end: TokenEnd | None  # set when this token ended the sequence


@dataclass
class SequenceOutputState:
    """What the output side keeps per sequence between steps."""

    detokenizer: IncrementalDetokenizer
    budget: ThinkingBudget | None
    stop_ids: frozenset[int]
    unreported: list[int] = field(default_factory=list)  # forced output ids not yet handed out
    queue: list[QueuedToken] = field(default_factory=list)  # appended tokens not detokenized yet


@dataclass(frozen=True)
class OutputRules:
    """What the output side needs to know of the model and the engine, fixed at construction."""

    eos_token_ids: tuple[int, ...]
    max_model_len: int
    default_thinking_budget: int | None  # --max-thinking-tokens, for requests that set none
    assistant_token_id: int | None  # where the prompt's last turn starts (the structured-output gate reads it)


class OutputProcessor:
    def __init__(self, tokenizer: Any, rules: OutputRules, finish: Callable[[Request, RequestStatus], None]):
        """`finish` ends a sequence in the scheduler (frees its blocks); it is called at most once per sequence."""
        self.tokenizer = tokenizer
        self.rules = rules
        self._finish = finish
        self._queued: list[Request] = []  # sequences with tokens awaiting detokenization, in order
        self.generation_tokens_total = 0

    # ---- a sequence starts ----
    def start(self, req: Request, append_forced: bool) -> None:
        """Detokenizer and thinking budget of a new sequence. Ids the budget forces before the first token (a limit
        of zero) become known tokens now, prefilled with the prompt, and are reported with the first output."""
        p = req.params
        detok = IncrementalDetokenizer(self.tokenizer, req.prompt.token_ids, p.stop, p.skip_special_tokens,
                                       p.include_stop_str_in_output, p.spaces_between_special_tokens)
        budget_limit = p.thinking_budget if p.thinking_budget is not None else self.rules.default_thinking_budget
        budget = make_budget(self.tokenizer, budget_limit, max_tokens=req.max_tokens,
                             reserved_answer_tokens=p.reserved_answer_tokens, prompt_token_ids=req.prompt.token_ids)
        forced = budget.on_start() if budget is not None else []
        if p.structured is not None:
            req.constraint = Constraint(p.structured, req.prompt.token_ids, self.rules.assistant_token_id)
            for tok in forced:  # before the first token is sampled, its mask must know them
                req.constraint.accept(tok)
        if append_forced:
            req.token_ids += forced
            req.num_forced_tokens += len(forced)
        req.output = SequenceOutputState(detok, budget, frozenset(self._stop_ids(p)), unreported=list(forced))

    def _stop_ids(self, params: SamplingParams) -> set[int]:
        ids = set() if params.ignore_eos else set(self.rules.eos_token_ids)
        return ids | set(params.stop_token_ids)

    # ---- first half: a step's tokens arrive ----
    def take_in(self, req: Request, token: int, logprob: float | None, top: list[tuple[int, float]] | None) -> None:
        """Append the sampled token (with the ids forced before and after it), apply the token-id rules and queue
        the tokens for `emit`."""
        params, state = req.params, req.output
        # (token, forced, already in token_ids): start-forced ids first, then the sampled one, then what it forces
        pending = [(t, True, True) for t in state.unreported] + [(token, False, False)]
        state.unreported = []
        if state.budget is not None:
            pending += [(t, True, False) for t in state.budget.on_token(token)]
        if not state.queue:
            self._queued.append(req)
        count = req.num_output_tokens - sum(1 for p in pending if p[2])  # output tokens handed out so far
        for tok, forced, appended in pending:
            if not appended:
                req.token_ids.append(tok)
                req.num_forced_tokens += forced
                if req.constraint is not None:
                    req.constraint.accept(tok)
            count += 1
            self.generation_tokens_total += 1
            status, end = None, None
            if not forced and tok in state.stop_ids and count >= params.min_tokens:
                status, end, req.stop_reason = RequestStatus.FINISHED_STOPPED, TokenEnd.STOP_ID, tok
            elif count >= req.max_tokens or req.num_prompt_tokens + count >= self.rules.max_model_len:
                status, end = RequestStatus.FINISHED_LENGTH, TokenEnd.LENGTH
            state.queue.append(QueuedToken(tok, forced, 0.0 if forced else logprob, [] if forced else top,
                                           count, end))
            if status is not None:
                del req.token_ids[req.num_prompt_tokens + count:]  # start-forced ids past the end are dropped
                self._finish(req, status)
                break

    # ---- second half: while the device runs the next step ----
    def emit(self) -> dict[str, list[CompletionOutput]]:
        """Detokenize the queued tokens, apply stop strings; the new CompletionOutputs by group id."""
        changed: dict[str, list[CompletionOutput]] = {}
        queued, self._queued = self._queued, []
        for req in queued:
            if req.output.queue:
                changed.setdefault(req.group_id, []).append(self.emit_sequence(req))
        return changed

    def emit_sequence(self, req: Request) -> CompletionOutput:
        state, params = req.output, req.params
        detok = state.detokenizer
        queue, state.queue = state.queue, []
        new_ids: list[int] = []
        logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        text = ""
        for qt in queue:
            new_ids.append(qt.token)
            if logprobs is not None:
                logprobs.append(self._token_logprob(qt.token, qt.logprob, qt.top))
            if qt.end is TokenEnd.STOP_ID:
                text += detok.flush()
                continue
            text += detok.step([qt.token])
            if detok.stop_string is not None:
                self._stop_by_string(req, qt.index, detok.stop_string)
                break
            if qt.end is TokenEnd.LENGTH:
                text += detok.flush()
        return self.completion(req, text, new_ids, logprobs)

    def _stop_by_string(self, req: Request, index: int, stop: str) -> None:
        """A stop string ended at output token `index`: drop later tokens (the sequence may have run on one step)."""
        keep = req.num_prompt_tokens + index
        self.generation_tokens_total -= max(0, len(req.token_ids) - keep)
        del req.token_ids[keep:]
        req.stop_reason = stop
        if req.finished:
            req.status = RequestStatus.FINISHED_STOPPED
        else:
            self._finish(req, RequestStatus.FINISHED_STOPPED)

    # ---- a sequence ends early ----
    def abort(self, req: Request) -> CompletionOutput | None:
        """The last output of a sequence that is being aborted: its queued text, then what the detokenizer held
        back. None when it has finished and handed everything out already."""
        state = req.output
        pre = self.emit_sequence(req) if state.queue else None
        if req.finished:
            return pre
        self._finish(req, RequestStatus.FINISHED_ABORTED)
        text = state.detokenizer.flush()
        if pre is None:
            return self.completion(req, text, [], None)
        return self.completion(req, pre.text + text, pre.token_ids, pre.logprobs)

    def drop_all(self) -> None:
        """After an unrecoverable step error: forget every queued token."""
        for req in self._queued:
            req.output.queue = []
        self._queued = []

    # ---- output objects ----
    @staticmethod
    def completion(req: Request, text: str, new_ids: list[int],
                   logprobs: list[TokenLogprob] | None) -> CompletionOutput:
        return CompletionOutput(index=req.index, text=text, token_ids=new_ids, num_tokens=req.num_output_tokens,
                                finish_reason=req.status.finish_reason, stop_reason=req.stop_reason,
                                logprobs=logprobs, forced_tokens=req.num_forced_tokens)

    def _token_logprob(self, token: int, logprob: float | None, top: list[tuple[int, float]] | None) -> TokenLogprob:
        decode = self.tokenizer.decode
        return TokenLogprob(token_id=token, token=decode([token]), logprob=logprob if logprob is not None else 0.0,
                            top=[(t, decode([t]), lp) for t, lp in (top or [])])
