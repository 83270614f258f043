"""POST /v1/completions: raw prompts (text or token ids, one or many) -> text_completion, streamed or not.

The legacy endpoint returns the model's raw text (thinking tags included, as vLLM does): clients that use it want
the continuation of their prompt as the model wrote it. Several prompts run as several engine requests at once;
choice `index` is prompt_index * n + choice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import Response

from glmv.engine.outputs import RequestOutput
from glmv.inputs.build import build_raw_prompt
from glmv.inputs.prompt import Prompt
from glmv.reasoning import count_reasoning_tokens, prompt_opens_thought
from glmv.sampling import FinishReason
from glmv.server.errors import OPENAPI_ERRORS, APIError, to_api_error
from glmv.server.generation import TrackedGeneration, guarded_stream, respond, sse
from glmv.server.logprobs import LegacyLogprobs, prompt_logprobs_json
from glmv.server.params import check_token_ids, completion_sampling_params, resolve_model_name
from glmv.server.protocol import CompletionRequest, CompletionResponse, random_id
from glmv.server.state import ServingState
from glmv.server.structured import requested_spec, with_structured

router = APIRouter()


def completion_prompts(req: CompletionRequest, state: ServingState) -> list[Prompt]:
    """The request's prompt field as one Prompt per prompt (a string, a list of strings, token ids, or lists)."""
    p = req.prompt
    items: list = [p] if isinstance(p, str) or (p and all(isinstance(x, int) for x in p)) else list(p)
    if not items:
        raise APIError(400, "prompt must not be empty.", "prompt", "invalid_request")
    prompts = []
    for item in items:
        if isinstance(item, str):
            if not item:
                raise APIError(400, "prompt must not be an empty string.", "prompt", "invalid_request")
            prompts.append(build_raw_prompt(state.builder, item, req.add_special_tokens))
        else:
            if not item:
                raise APIError(400, "prompt must not be an empty token list.", "prompt", "invalid_request")
            check_token_ids(state, item, "prompt")
            prompts.append(build_raw_prompt(state.builder, item))
    return prompts


@dataclass
class _Choice:
    """What one choice has accumulated."""

    text: list[str] = field(default_factory=list)
    logprobs: LegacyLogprobs | None = None
    stop_reason: int | str | None = None


class CompletionRun:
    """The generations of one /v1/completions request and how their choices are written."""

    def __init__(self, req: CompletionRequest, state: ServingState, model: str, request_id: str,
                 gens: list[TrackedGeneration]):
        self.req, self.state, self.model, self.request_id, self.gens = req, state, model, request_id, gens
        self.n = req.n
        self.created = int(time.time())
        self.top_n = req.logprobs or 0
        self.echo_texts = [self._prompt_text(g.prompt) if req.echo else "" for g in gens]

    def _prompt_text(self, prompt: Prompt) -> str:
        if prompt.text is not None:
            return prompt.text
        return self.state.tokenizer.decode(prompt.token_ids, skip_special_tokens=False)

    def new_choice(self, prompt_index: int) -> _Choice:
        choice = _Choice()
        if self.req.logprobs is not None:
            choice.logprobs = LegacyLogprobs()
            if self.req.echo:
                tok = self.state.tokenizer
                choice.logprobs.add_unscored([tok.decode([t]) for t in self.gens[prompt_index].prompt.token_ids])
        return choice

    def usage(self) -> dict:
        prompt = sum(len(g.prompt) for g in self.gens)
        completion = sum(sum(g.num_tokens) for g in self.gens)
        reasoning = 0
        for g in self.gens:
            in_think = prompt_opens_thought(g.prompt.text)
            reasoning += sum(count_reasoning_tokens(ids, self.state.think_end_ids, in_think=in_think,
                                                    think_start_ids=self.state.think_start_ids)
                             for ids in g.token_ids)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": sum(g.num_cached_tokens for g in self.gens)},
                "completion_tokens_details": {"reasoning_tokens": reasoning}}

    # ---- non-streaming ----

    async def collect(self) -> dict:
        choices = await asyncio.gather(*(self._collect_one(i, g) for i, g in enumerate(self.gens)))
        out = []
        for i, per_prompt in enumerate(choices):
            gen = self.gens[i]
            for j, c in enumerate(per_prompt):
                out.append({
                    "index": i * self.n + j,
                    "text": self.echo_texts[i] + "".join(c.text),
                    "logprobs": c.logprobs.as_dict() if c.logprobs is not None else None,
                    "finish_reason": (gen.finish[j] or FinishReason.LENGTH).openai,
                    "stop_reason": c.stop_reason,
                    "prompt_logprobs": prompt_logprobs_json(gen.prompt_logprobs),
                })
        return {"id": self.request_id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": out, "usage": self.usage(), "system_fingerprint": None}

    async def _collect_one(self, prompt_index: int, gen: TrackedGeneration) -> list[_Choice]:
        choices = [self.new_choice(prompt_index) for _ in range(self.n)]
        status = 200
        try:
            async for out in gen.outputs():
                for c in out.outputs:
                    ch = choices[c.index]
                    if ch.logprobs is not None and c.logprobs:
                        ch.logprobs.add(c.logprobs, self.top_n)
                    ch.text.append(c.text)
                    if c.finish_reason is not None:
                        ch.stop_reason = c.stop_reason
        except BaseException as exc:
            status = to_api_error(exc).status if isinstance(exc, Exception) else 499
            raise
        finally:
            await gen.close(status)
        return choices

    # ---- streaming ----

    def stream(self, raw: Request) -> AsyncIterator[str]:
        return guarded_stream(raw, self.gens, self._events())

    async def _events(self) -> AsyncIterator[str]:
        opts = self.req.stream_options
        include_usage = bool(opts and opts.include_usage)
        continuous = bool(opts and opts.continuous_usage_stats)
        queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()
        pumps = [asyncio.ensure_future(self._pump(i, g, queue)) for i, g in enumerate(self.gens)]
        choices = [[self.new_choice(i) for _ in range(self.n)] for i in range(len(self.gens))]

        def chunk(choice_list: list[dict], usage: dict | None = None) -> str:
            body = {"id": self.request_id, "object": "text_completion", "created": self.created,
                    "model": self.model, "choices": choice_list}
            if usage is not None or continuous:
                body["usage"] = usage if usage is not None else self.usage()
            return sse(body)

        try:
            if self.req.echo:
                for i in range(len(self.gens)):
                    for j in range(self.n):
                        lp = choices[i][j].logprobs
                        yield chunk([{"index": i * self.n + j, "text": self.echo_texts[i],
                                      "logprobs": lp.as_dict() if lp is not None else None, "finish_reason": None}])
            sent = [[len(c.logprobs) if c.logprobs is not None else 0 for c in row] for row in choices]
            # prompt_logprobs (a glmv extension when streaming: vLLM refuses it) ride on each choice's first chunk
            # after they arrive
            scored: list[list | None] = [None] * len(self.gens)
            unscored = [set(range(self.n)) for _ in self.gens]
            remaining = len(self.gens)
            while remaining:
                i, item = await queue.get()
                if item is None:
                    remaining -= 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                for c in item.outputs:
                    ch = choices[i][c.index]
                    logprobs = None
                    if ch.logprobs is not None:
                        ch.logprobs.add(c.logprobs or [], self.top_n)
                        logprobs = ch.logprobs.as_dict(sent[i][c.index])
                        sent[i][c.index] = len(ch.logprobs)
                    finish = c.finish_reason.openai if c.finish_reason is not None else None
                    if scored[i] is None and self.gens[i].prompt_logprobs is not None:
                        scored[i] = prompt_logprobs_json(self.gens[i].prompt_logprobs)
                    scores = scored[i] if scored[i] is not None and c.index in unscored[i] else None
                    if c.text or finish or (logprobs and logprobs["tokens"]) or scores is not None:
                        entry = {"index": i * self.n + c.index, "text": c.text, "logprobs": logprobs,
                                 "finish_reason": finish}
                        if finish is not None:
                            entry["stop_reason"] = c.stop_reason
                        if scores is not None:
                            entry["prompt_logprobs"] = scores
                            unscored[i].discard(c.index)
                        yield chunk([entry])
            if include_usage:
                yield chunk([], self.usage())
            yield sse("[DONE]")
        finally:
            for p in pumps:
                p.cancel()

    @staticmethod
    async def _pump(index: int, gen: TrackedGeneration, queue: asyncio.Queue) -> None:
        try:
            async for out in gen.outputs():
                await queue.put((index, out))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the stream, which reports it
            await queue.put((index, exc))
        await queue.put((index, None))


async def start_all(gens: list[TrackedGeneration]) -> None:
    """Start every generation; if one fails, close the others and raise its error."""
    results = await asyncio.gather(*(g.start() for g in gens), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        status = to_api_error(errors[0]).status if isinstance(errors[0], Exception) else 499
        for g in gens:
            await g.close(status)
        raise errors[0]


@router.post("/v1/completions", response_model=CompletionResponse, responses=OPENAPI_ERRORS,
             summary="Create a text completion (stream: text/event-stream of text_completion chunks)")
async def create_completion(req: CompletionRequest, raw: Request) -> Response:
    state: ServingState = raw.app.state.serving
    arrival = time.monotonic()
    model = resolve_model_name(state, req.model)
    params = await with_structured(completion_sampling_params(req, state), requested_spec(req), state)
    prompts = completion_prompts(req, state)
    request_id = random_id("cmpl")
    gens = [TrackedGeneration(state, p, params, request_id if len(prompts) == 1 else f"{request_id}-{i}", model,
                              arrival) for i, p in enumerate(prompts)]
    run = CompletionRun(req, state, model, request_id, gens)
    return await respond(raw, gens, start_all(gens), (lambda: run.stream(raw)) if req.stream else None, run.collect)
