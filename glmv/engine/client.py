"""EngineClient: the one interface every door drives, whichever engine sits behind it.

Implemented by glmv's own AsyncEngine, by the transformers reference engine, by the vLLM backend and by the
data-parallel engine over several AsyncEngine replicas (ReplicatedEngine).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

from glmv.engine.outputs import RequestOutput
from glmv.inputs.prompt import Prompt
from glmv.sampling import SamplingParams


class EngineOverloadedError(RuntimeError):
    """The engine's queue is full; doors answer 503 with Retry-After."""


class ReplicaFailedError(EngineOverloadedError):
    """The engine replica running the request died (or none is up now); doors answer 503 with Retry-After and code
    replica_failed. Only with several replicas (glmv/backends/replicas/)."""


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
    computes_logprobs: bool  # False: doors answer a logprobs request with 400 rather than empty logprobs
    # An engine may also set `computes_prompt_logprobs = True` (prompt_logprobs on its first output); doors refuse
    # prompt_logprobs (400) for one that does not. Not a member here, so that engines predating it still match.

    def stage_prompt(self, prompt: Prompt) -> Prompt:
        """The prompt made ready for this engine where doors build prompts (a worker thread, off the engine loop):
        glmv's engine converts the pixels to the model dtype there; engines that need nothing return it as is."""
        ...

    def generate(self, prompt: Prompt, params: SamplingParams, request_id: str) -> AsyncIterator[RequestOutput]: ...

    async def abort(self, request_id: str) -> None: ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    def stats(self) -> dict[str, float]:
        """Gauges for /metrics: running, waiting, kv_usage (0-1), prefix_cache_hit_rate (0-1)."""
        ...


@dataclass(frozen=True)
class ReplicaHealth:
    index: int
    state: str  # starting | up | down | stopped
    pid: int | None
    restarts: int


@dataclass(frozen=True)
class EngineHealth:
    """What /health says about an engine made of replicas: "ok" (all up), "degraded" (some down: the server
    serves on the rest, answering 200), "down" (none up: 503)."""

    status: str
    replicas: tuple[ReplicaHealth, ...]

    @property
    def serving(self) -> bool:
        return self.status != "down"

    def as_json(self) -> dict:
        return {"status": self.status, "replicas": [asdict(r) for r in self.replicas]}


@runtime_checkable
class ReplicatedEngine(EngineClient, Protocol):
    """An EngineClient made of several engine replicas (`--data-parallel-size`): /health and /metrics show each."""

    def health(self) -> EngineHealth: ...

    def replica_stats(self) -> list[dict[str, float]]:
        """Per replica: its engine's gauges plus up (0/1), restarts, in_flight, routed_total, prefix_routed_total."""
        ...
