"""SamplingParams: what a request asks of the sampler and the stop logic, validated once at the door."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from glmv.structured.compiler import CompiledStructure
    from glmv.structured.spec import StructuredSpec


class FinishReason(enum.StrEnum):
    """Why a sequence ended. Mapped once to OpenAI's finish_reason strings by `.openai`."""

    STOP = "stop"  # a stop token id (EOS, </answer>, ...) or a stop string
    LENGTH = "length"  # max_tokens or the context length
    ABORT = "abort"  # the client went away or the request was cancelled
    ERROR = "error"

    @property
    def openai(self) -> str:
        return "length" if self is FinishReason.LENGTH else "stop"


@dataclass
class SamplingParams:
    """Per-request generation settings (OpenAI fields plus vLLM's extras).

    Raises ValueError from `validate()` with a message that names the field, so doors map it to HTTP 400.
    """

    n: int = 1
    max_tokens: int | None = None  # None: up to the context length
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: int | None = None  # number of top logprobs per output token; None: off
    prompt_logprobs: int | None = None  # top logprobs per prompt token (vLLM's extra); None: the prompt is not scored
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    # Thinking control (see glmv/reasoning): after this many generated tokens inside <think>, the engine
    # forces `</think><answer>` so the model still answers. None: no budget.
    thinking_budget: int | None = None
    # Reserved answer budget: if the thought is still open when only this many tokens (plus the forced
    # `</think><answer>`) are left of max_tokens, the engine closes it so the answer gets these tokens. None: off.
    reserved_answer_tokens: int | None = None
    # Structured output (glmv/structured): the compiled grammar the answer must follow; the thought stays free.
    structured: CompiledStructure | None = None
    # The same constraint as asked, for an engine that compiles it itself (--engine vllm).
    guided: StructuredSpec | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.validate()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 1e-5 or self.top_k == 1

    def validate(self) -> None:
        if self.n < 1 or self.n > 128:
            raise ValueError(f"n must be between 1 and 128, got {self.n}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if not 0.0 <= self.temperature <= 2.0:  # OpenAI's (and the server's) range: one limit for every door
            raise ValueError(f"temperature must be between 0 and 2, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < -1:
            raise ValueError(f"top_k must be -1 (off), 0 (off) or positive, got {self.top_k}.")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}.")
        if not 0.0 < self.repetition_penalty <= 10.0:
            raise ValueError(f"repetition_penalty must be in (0, 10], got {self.repetition_penalty}.")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise ValueError(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}.")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise ValueError(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}.")
        for token, bias in self.logit_bias.items():
            if not -100.0 <= float(bias) <= 100.0:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {bias} for token {token}.")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens}.")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens}).")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError(f"top_logprobs must be between 0 and 20, got {self.logprobs}.")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= 20:
            raise ValueError(f"prompt_logprobs must be between 0 and 20, got {self.prompt_logprobs}.")
        if self.thinking_budget is not None and self.thinking_budget < 0:
            raise ValueError(f"thinking_budget must be >= 0, got {self.thinking_budget}.")
        if self.reserved_answer_tokens is not None:
            if self.reserved_answer_tokens < 1:
                raise ValueError(f"reserved_answer_tokens must be >= 1, got {self.reserved_answer_tokens}.")
            if self.max_tokens is not None and self.reserved_answer_tokens >= self.max_tokens:
                raise ValueError(
                    f"reserved_answer_tokens ({self.reserved_answer_tokens}) must be smaller than max_tokens "
                    f"({self.max_tokens}): raise max_tokens or reserve fewer tokens for the answer."
                )
        if len(self.stop) > 16:
            raise ValueError("stop accepts at most 16 strings.")
