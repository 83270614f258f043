"""POST /v1/chat/completions: messages -> Prompt -> engine stream -> OpenAI chat response or SSE chunks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from glmv.engine.outputs import RequestOutput
from glmv.inputs.messages import load_messages
from glmv.inputs.prompt import Prompt
from glmv.reasoning import ThinkSplitter
from glmv.sampling import FinishReason, SamplingParams
from glmv.server.errors import APIError, error_body, to_api_error
from glmv.server.protocol import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatResponseMessage,
    DeltaMessage,
    UsageInfo,
    random_id,
)
from glmv.server.state import ServingState


def resolve_model_name(state: ServingState, requested: str | None) -> str:
    if requested is None or requested in state.model_names:
        return requested or state.default_name
    raise APIError(404, f"The model '{requested}' does not exist. Available: {', '.join(state.model_names)}.",
                   "model", "model_not_found")


def sampling_params(req: ChatCompletionRequest, state: ServingState) -> SamplingParams:
    defaults = state.model_config.generation_defaults
    max_tokens = req.max_completion_tokens or req.max_tokens
    try:
        return SamplingParams(
            n=req.n,
            max_tokens=max_tokens,
            temperature=req.temperature if req.temperature is not None else defaults.get("temperature", 1.0),
            top_p=req.top_p if req.top_p is not None else defaults.get("top_p", 1.0),
            top_k=req.top_k if req.top_k is not None else defaults.get("top_k", 0),
            min_p=req.min_p or 0.0,
            repetition_penalty=req.repetition_penalty if req.repetition_penalty is not None
            else defaults.get("repetition_penalty", 1.0),
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            logit_bias={int(k): float(v) for k, v in (req.logit_bias or {}).items()},
            seed=req.seed,
            stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []),
            stop_token_ids=list(req.stop_token_ids or []),
            include_stop_str_in_output=req.include_stop_str_in_output,
            ignore_eos=req.ignore_eos,
            min_tokens=req.min_tokens,
            logprobs=(req.top_logprobs or 0) if req.logprobs else None,
            skip_special_tokens=req.skip_special_tokens,
            thinking_budget=req.thinking_budget if req.thinking_budget is not None
            else state.engine_config.max_thinking_tokens,
        )
    except (ValueError, TypeError) as exc:
        raise APIError(400, str(exc), None, "invalid_request") from None


async def build_chat_prompt(req: ChatCompletionRequest, state: ServingState) -> Prompt:
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    for m in messages:  # history keeps only answers: reasoning sent back is never part of the prompt
        m.pop("reasoning_content", None)
        m.pop("reasoning", None)
    policy = state.server_config.media_policy

    def work() -> Prompt:
        normalized, media = load_messages(messages, policy)
        text = state.builder.render(normalized, req.add_generation_prompt, **(req.chat_template_kwargs or {}))
        return state.builder.build(text, media, req.mm_processor_kwargs)

    return await asyncio.to_thread(work)


async def chat_completions(req: ChatCompletionRequest, raw: Request, state: ServingState):
    model = resolve_model_name(state, req.model)
    params = sampling_params(req, state)
    prompt = await build_chat_prompt(req, state)
    request_id = random_id("chatcmpl")
    stream = state.engine.generate(prompt, params, request_id)
    # Pull the first output before answering so errors such as an overlong prompt become a proper status code.
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = None
    except Exception as exc:  # noqa: BLE001
        raise to_api_error(exc) from None
    in_think = prompt.text is not None and prompt.text.rstrip().endswith("<think>")
    if req.stream:
        return StreamingResponse(
            _stream(req, raw, state, model, request_id, first, stream, len(prompt), params.n, in_think),
            media_type="text/event-stream",
        )
    return await _collect(req, raw, state, model, request_id, first, stream, len(prompt), params.n, in_think)


async def _outputs(first: RequestOutput | None, stream: AsyncIterator[RequestOutput]) -> AsyncIterator[RequestOutput]:
    if first is not None:
        yield first
    async for out in stream:
        yield out


async def _collect(req, raw, state, model, request_id, first, stream, prompt_len, n, in_think) -> JSONResponse:
    texts = [""] * n
    tokens = [0] * n
    finish: list[FinishReason | None] = [None] * n
    stop_reason: list = [None] * n
    async for out in _outputs(first, stream):
        for c in out.outputs:
            texts[c.index] += c.text
            tokens[c.index] = c.num_tokens
            if c.finish_reason is not None:
                finish[c.index] = c.finish_reason
                stop_reason[c.index] = c.stop_reason
    choices = []
    for i in range(n):
        splitter = ThinkSplitter(in_think)
        r1, c1 = splitter.feed(texts[i])
        r2, c2 = splitter.finish()
        reasoning = (r1 + r2).strip() or None
        content = (c1 + c2).strip()
        if not req.include_reasoning:
            reasoning = None
        choices.append(ChatCompletionChoice(
            index=i,
            message=ChatResponseMessage(content=content, reasoning_content=reasoning, reasoning=reasoning),
            finish_reason=(finish[i] or FinishReason.LENGTH).openai,
            stop_reason=stop_reason[i],
        ))
    completion = sum(tokens)
    usage = UsageInfo(prompt_tokens=prompt_len, completion_tokens=completion, total_tokens=prompt_len + completion)
    body = ChatCompletionResponse(id=request_id, model=model, choices=choices, usage=usage)
    return JSONResponse(body.model_dump(exclude_none=False))


def _sse(obj) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n"


async def _stream(req, raw: Request, state: ServingState, model, request_id, first, stream, prompt_len, n, in_think):
    created = int(time.time())
    splitters = [ThinkSplitter(in_think) for _ in range(n)]
    tokens = [0] * n

    def chunk(i: int, delta: DeltaMessage, finish: str | None = None, stop_reason=None) -> str:
        c = ChatCompletionChunk(id=request_id, created=created, model=model, choices=[
            ChatCompletionStreamChoice(index=i, delta=delta, finish_reason=finish, stop_reason=stop_reason)])
        return _sse(c.model_dump(exclude_none=True) | {"choices": [
            {**c.choices[0].model_dump(exclude_none=True), "finish_reason": finish}]})

    try:
        for i in range(n):
            yield chunk(i, DeltaMessage(role="assistant", content=""))
        async for out in _outputs(first, stream):
            if await raw.is_disconnected():
                await state.engine.abort(request_id)
                return
            for c in out.outputs:
                tokens[c.index] = c.num_tokens
                r, t = splitters[c.index].feed(c.text)
                if c.finish_reason is not None:
                    r2, t2 = splitters[c.index].finish()
                    r, t = r + r2, t + t2
                if not req.include_reasoning:
                    r = ""
                if r or t:
                    yield chunk(c.index, DeltaMessage(reasoning_content=r or None, reasoning=r or None,
                                                      content=t or None))
                if c.finish_reason is not None:
                    yield chunk(c.index, DeltaMessage(), c.finish_reason.openai, c.stop_reason)
        if req.stream_options and req.stream_options.include_usage:
            completion = sum(tokens)
            usage = UsageInfo(prompt_tokens=prompt_len, completion_tokens=completion,
                              total_tokens=prompt_len + completion)
            yield _sse({"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": usage.model_dump(exclude_none=True)})
        yield _sse("[DONE]")
    except asyncio.CancelledError:
        await state.engine.abort(request_id)
        raise
    except Exception as exc:  # noqa: BLE001 - mid-stream errors become an error event, never a dropped socket
        err = to_api_error(exc)
        yield _sse(error_body(err.status, err.message, err.param, err.code))
        yield _sse("[DONE]")
