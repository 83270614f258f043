"""What engines stream back to the doors: one RequestOutput per step per request."""

from __future__ import annotations

from dataclasses import dataclass, field

from glmv.sampling import FinishReason


@dataclass
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)  # (token_id, token text, logprob)


@dataclass
class PromptTokenLogprob:
    """vLLM's Logprob, as `prompt_logprobs` entries carry it (the JSON object {logprob, rank, decoded_token})."""

    logprob: float
    rank: int  # 1-based rank in the whole vocabulary
    decoded_token: str


# vLLM's prompt_logprobs: None for the first prompt token, then per token {token id: its logprob and the top-k's}.
PromptLogprobs = list[dict[int, PromptTokenLogprob] | None]


@dataclass
class CompletionOutput:
    """One of the n sequences of a request. `text`/`token_ids` are the new part since the last output
    (delta mode); the engine keeps totals in `num_tokens` / `cumulative_text_len`."""

    index: int
    text: str  # detokenized delta (stop strings already cut)
    token_ids: list[int]
    num_tokens: int  # generated tokens so far for this sequence
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None  # the token id or stop string that ended it
    logprobs: list[TokenLogprob] | None = None
    # Tokens the engine inserted itself (thinking budget: `</think><answer>`), counted in num_tokens.
    forced_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @classmethod
    def empty(cls, index: int) -> CompletionOutput:
        """A running total to `absorb` deltas into."""
        return cls(index=index, text="", token_ids=[], num_tokens=0)

    def absorb(self, delta: CompletionOutput) -> None:
        """Add a later delta of the same sequence to this running total (offline callers collect whole outputs)."""
        self.text += delta.text
        self.token_ids += delta.token_ids
        self.num_tokens = delta.num_tokens
        self.forced_tokens = delta.forced_tokens
        if delta.logprobs is not None:
            self.logprobs = (self.logprobs or []) + delta.logprobs
        if delta.finish_reason is not None:
            self.finish_reason, self.stop_reason = delta.finish_reason, delta.stop_reason


@dataclass
class RequestOutput:
    request_id: str
    outputs: list[CompletionOutput]
    prompt_token_ids: list[int]
    finished: bool
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    # Asked with SamplingParams.prompt_logprobs: set on one output of the request (the first that has them).
    prompt_logprobs: PromptLogprobs | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)
