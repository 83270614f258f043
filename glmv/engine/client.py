"""EngineClient: the one interface every door drives, whichever engine sits behind it.

Implemented by glmv's own AsyncEngine, by the transformers reference engine and by the vLLM backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from glmv.engine.outputs import RequestOutput
from glmv.inputs.prompt import Prompt
from glmv.sampling import SamplingParams


class EngineOverloadedError(RuntimeError):
    """The engine's queue is full; doors answer 503 with Retry-After."""


class PromptTooLongError(ValueError):
    """The prompt plus the generation budget does not fit the context; doors answer 400 with the counts."""

    def __init__(self, prompt_tokens: int, max_model_len: int, max_tokens: int | None = None):
        self.prompt_tokens = prompt_tokens
        self.max_model_len = max_model_len
        self.max_tokens = max_tokens
        wanted = f" plus max_tokens {max_tokens}" if max_tokens else ""
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens, but the request has "
            f"{prompt_tokens} prompt tokens{wanted}. Shorten the prompt or lower max_tokens."
        )


@runtime_checkable
class EngineClient(Protocol):
    """Async interface: one stream of RequestOutput deltas per request; abort frees its resources at once."""

    max_model_len: int

    def generate(self, prompt: Prompt, params: SamplingParams, request_id: str) -> AsyncIterator[RequestOutput]: ...

    async def abort(self, request_id: str) -> None: ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    def stats(self) -> dict[str, float]:
        """Gauges for /metrics: running, waiting, kv_usage (0-1), prefix_cache_hit_rate (0-1)."""
        ...
