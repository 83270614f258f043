"""loadgen: one async load generator for every engine the CPU benchmark compares (same client, same prompts).

A target runs one request and reports when its first token came and how many tokens it produced:
- `CompletionsTarget` speaks OpenAI's `/v1/completions` with prompt token ids, streaming; `stream_options.include_usage`
  gives the exact token count. It drives `vllm serve` and `glmv serve` alike, so both pay the same HTTP, JSON and
  detokenization costs. TTFT is the first chunk with text: vLLM also streams chunks with empty text (a token whose
  bytes do not yet make a character, frequent with random weights), glmv does not, so "first chunk" would compare
  different things; the first chunk of any kind is kept too (`first_chunk_s`).
- `EngineTarget` drives an in-process glmv EngineClient (the HF reference, or glmv's engine when asked to skip HTTP).
`run_level` keeps `concurrency` requests in flight (closed loop) until the level's prompts are used up, and turns the
per-request results into output tokens per second over the level's wall time plus TTFT percentiles.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import httpx


@dataclass
class RequestResult:
    ttft_s: float | None  # first text; None when none came back
    latency_s: float
    output_tokens: int
    error: str | None = None
    first_chunk_s: float | None = None  # first chunk with a choice, empty text or not


@dataclass
class LevelResult:
    """One concurrency level of one engine."""

    concurrency: int
    num_requests: int
    wall_s: float
    output_tokens: int
    errors: int
    ttft_ms: list[float] = field(default_factory=list, repr=False)
    first_error: str | None = None
    first_chunk_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def tok_per_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def ttft_median_ms(self) -> float | None:
        return statistics.median(self.ttft_ms) if self.ttft_ms else None

    @property
    def ttft_p90_ms(self) -> float | None:
        if not self.ttft_ms:
            return None
        ordered = sorted(self.ttft_ms)
        return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(tok_per_s=round(self.tok_per_s, 2), ttft_median_ms=self.ttft_median_ms,
                   ttft_p90_ms=self.ttft_p90_ms)
        out["ttft_ms"] = [round(t, 2) for t in self.ttft_ms]
        out["first_chunk_ms"] = [round(t, 2) for t in self.first_chunk_ms]
        return out


class Target(Protocol):
    async def run_one(self, prompt_ids: list[int], max_tokens: int) -> RequestResult: ...

    async def close(self) -> None: ...


class CompletionsTarget:
    """Streams `/v1/completions` of an OpenAI-compatible server with token-id prompts, greedy, ignore_eos."""

    def __init__(self, base_url: str, model: str, timeout_s: float = 600.0):
        self.url = base_url.rstrip("/") + "/v1/completions"
        self.model = model
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0), limits=limits)

    async def run_one(self, prompt_ids: list[int], max_tokens: int) -> RequestResult:
        body = {
            "model": self.model, "prompt": prompt_ids, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
        }
        start = time.perf_counter()
        ttft: float | None = None
        first_chunk: float | None = None
        chunks = 0
        usage_tokens: int | None = None
        try:
            async with self.client.stream("POST", self.url, json=body) as resp:
                if resp.status_code != 200:
                    text = (await resp.aread()).decode(errors="replace")[:300]
                    return RequestResult(None, time.perf_counter() - start, 0, f"HTTP {resp.status_code}: {text}")
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        return RequestResult(ttft, time.perf_counter() - start, 0, str(event["error"])[:300])
                    if event.get("choices"):
                        chunks += 1
                        now = time.perf_counter() - start
                        first_chunk = now if first_chunk is None else first_chunk
                        if ttft is None and any(c.get("text") for c in event["choices"]):
                            ttft = now
                    if event.get("usage"):
                        usage_tokens = int(event["usage"].get("completion_tokens") or 0)
        except httpx.HTTPError as exc:
            return RequestResult(ttft, time.perf_counter() - start, 0, f"{type(exc).__name__}: {exc}")
        tokens = usage_tokens if usage_tokens is not None else chunks
        return RequestResult(ttft, time.perf_counter() - start, tokens, first_chunk_s=first_chunk)

    async def close(self) -> None:
        await self.client.aclose()


class EngineTarget:
    """Drives an in-process glmv EngineClient (glmv/engine/client.py) with the same requests."""

    def __init__(self, engine: Any):
        self.engine = engine
        self._ids = itertools.count()

    async def run_one(self, prompt_ids: list[int], max_tokens: int) -> RequestResult:
        from glmv.inputs.prompt import Prompt
        from glmv.sampling import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        start = time.perf_counter()
        ttft: float | None = None
        first_token: float | None = None
        tokens = 0
        try:
            async for out in self.engine.generate(Prompt(token_ids=list(prompt_ids)), params, f"bench-{next(self._ids)}"):
                for c in out.outputs:
                    now = time.perf_counter() - start
                    if c.num_tokens and first_token is None:
                        first_token = now
                    if c.text and ttft is None:
                        ttft = now
                    tokens = max(tokens, c.num_tokens)
        except Exception as exc:  # noqa: BLE001 - a failed request is a result, not a crash of the benchmark
            return RequestResult(ttft, time.perf_counter() - start, tokens, f"{type(exc).__name__}: {exc}",
                                 first_token)
        return RequestResult(ttft, time.perf_counter() - start, tokens, first_chunk_s=first_token)

    async def close(self) -> None:
        return None


async def probe_ttft(target: Target, prompts: Sequence[list[int]]) -> list[float]:
    """TTFT on an otherwise idle server, in ms: one-token requests one after another, timed to their first chunk
    (with one token to make, glmv's first chunk is its last, so it streams even when the token has no text yet)."""
    out = []
    for ids in prompts:
        result = await target.run_one(ids, 1)
        if result.error is None and result.first_chunk_s is not None:
            out.append(result.first_chunk_s * 1000)
    return out


async def run_level(target: Target, prompts: Sequence[list[int]], concurrency: int, max_tokens: int,
                    progress: Any = None) -> LevelResult:
    """Keep `concurrency` requests in flight until every prompt ran; `progress` is a tqdm bar (or None)."""
    todo = iter(prompts)
    results: list[RequestResult] = []
    tokens_so_far = 0
    start = time.perf_counter()

    async def client() -> None:
        nonlocal tokens_so_far
        for ids in todo:
            result = await target.run_one(ids, max_tokens)
            results.append(result)
            tokens_so_far += result.output_tokens
            if progress is not None:
                progress.update(1)
                elapsed = time.perf_counter() - start
                progress.set_postfix_str(f"{tokens_so_far / elapsed:.1f} tok/s")

    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    errors = [r.error for r in results if r.error]
    return LevelResult(
        concurrency=concurrency, num_requests=len(results), wall_s=wall,
        output_tokens=sum(r.output_tokens for r in results), errors=len(errors),
        ttft_ms=[r.ttft_s * 1000 for r in results if r.ttft_s is not None], first_error=errors[0] if errors else None,
        first_chunk_ms=[r.first_chunk_s * 1000 for r in results if r.first_chunk_s is not None],
    )


@dataclass(frozen=True)
class ChatRequest:
    """One chat turn for the served benchmark: user text and, optionally, one picture (JPEG bytes)."""

    text: str
    image_jpeg: bytes | None = None

    def messages(self) -> list[dict[str, Any]]:
        if self.image_jpeg is None:
            return [{"role": "user", "content": self.text}]
        import base64

        url = "data:image/jpeg;base64," + base64.b64encode(self.image_jpeg).decode()
        return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": self.text}]}]


class ChatTarget:
    """Streams `/v1/chat/completions`, greedy, ignore_eos, `include_usage` for the token count. TTFT is the first
    chunk after the role chunk, whatever its text: with random weights a token is often part of a UTF-8 character
    (glmv streams an empty delta for the first token, and the finish chunk always comes), so waiting for text would
    measure the tokenizer, not the server."""

    def __init__(self, base_url: str, model: str, timeout_s: float = 600.0):
        self.url = base_url.rstrip("/") + "/v1/chat/completions"
        self.model = model
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=30.0), limits=limits)

    async def run_chat(self, chat: ChatRequest, max_tokens: int) -> RequestResult:
        body = {
            "model": self.model, "messages": chat.messages(), "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
        }
        start = time.perf_counter()
        first: float | None = None
        text_at: float | None = None
        usage_tokens: int | None = None
        try:
            async with self.client.stream("POST", self.url, json=body) as resp:
                if resp.status_code != 200:
                    text = (await resp.aread()).decode(errors="replace")[:300]
                    return RequestResult(None, time.perf_counter() - start, 0, f"HTTP {resp.status_code}: {text}")
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        return RequestResult(first, time.perf_counter() - start, 0, str(event["error"])[:300])
                    for c in event.get("choices") or ():
                        delta = c.get("delta") or {}
                        if "role" in delta and first is None:
                            continue  # sent before any token
                        now = time.perf_counter() - start
                        first = now if first is None else first
                        if text_at is None and (delta.get("content") or delta.get("reasoning_content")):
                            text_at = now
                    if event.get("usage"):
                        usage_tokens = int(event["usage"].get("completion_tokens") or 0)
        except httpx.HTTPError as exc:
            return RequestResult(first, time.perf_counter() - start, 0, f"{type(exc).__name__}: {exc}")
        return RequestResult(first, time.perf_counter() - start, usage_tokens or 0, first_chunk_s=text_at)

    async def close(self) -> None:
        await self.client.aclose()
