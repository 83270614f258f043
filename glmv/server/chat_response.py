"""Chat responses: engine outputs -> one `chat.completion` object, or `chat.completion.chunk` server-sent events.

Both roads split the text with the same ThinkSplitter (glmv/reasoning), so the streamed deltas joined equal the
non-streamed message: reasoning goes to `reasoning_content` and `reasoning` (the same text, two names clients
read), the answer to `content`, and no `<think>`/`<answer>` tag ever reaches either.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.requests import Request

from glmv.reasoning import SplitState, ThinkSplitter, count_reasoning_tokens, prompt_split_state, split_reasoning
from glmv.sampling import FinishReason
from glmv.server.generation import TrackedGeneration, guarded_stream, sse
from glmv.server.logprobs import chat_logprobs, prompt_logprobs_json
from glmv.server.protocol import ChatCompletionRequest
from glmv.server.state import ServingState
from glmv.server.structured import ToolCallPlan
from glmv.server.tool_calls import AutoToolPlan, AutoToolStream


def usage_of(gen: TrackedGeneration, state: ServingState, in_think: bool) -> dict:
    """OpenAI's usage object: prompt tokens once, completion tokens of all choices, reasoning and cached details."""
    completion = sum(gen.num_tokens)
    reasoning = sum(count_reasoning_tokens(ids, state.think_end_ids, in_think=in_think,
                                           think_start_ids=state.think_start_ids) for ids in gen.token_ids)
    prompt = len(gen.prompt)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": gen.num_cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": reasoning}}


def _finish(reason: FinishReason | None) -> str:
    return (reason or FinishReason.LENGTH).openai


def _call_id(gen: TrackedGeneration, index: int) -> str:
    return f"call_{gen.request_id.rsplit('-', 1)[-1][:24]}_{index}"


async def collect_chat(req: ChatCompletionRequest, gen: TrackedGeneration, state: ServingState, model: str,
                       tool_plan: ToolCallPlan | None = None, auto_plan: AutoToolPlan | None = None) -> dict:
    """Run the generation to its end and build the `chat.completion` body (a forced call's answer becomes
    `tool_calls`, with finish_reason "tool_calls")."""
    n = gen.params.n
    texts: list[list[str]] = [[] for _ in range(n)]
    logprobs: list[list] = [[] for _ in range(n)]
    stop_reasons: list[int | str | None] = [None] * n
    status = 200
    try:
        async for out in gen.outputs():
            for c in out.outputs:
                texts[c.index].append(c.text)
                if c.logprobs:
                    logprobs[c.index].extend(c.logprobs)
                if c.finish_reason is not None:
                    stop_reasons[c.index] = c.stop_reason
    except BaseException:
        status = 499
        raise
    finally:
        await gen.close(status)
    start = prompt_split_state(gen.prompt.text)  # a prefill (continue_final_message) may have opened either part
    in_think = start is SplitState.THINK
    choices = []
    for i in range(n):
        reasoning, content = split_reasoning("".join(texts[i]), start)
        message: dict = {"role": "assistant", "content": content}
        if req.include_reasoning:
            message["reasoning_content"] = message["reasoning"] = reasoning or None
        finish = _finish(gen.finish[i])
        message["tool_calls"] = []
        if tool_plan is not None:
            message["tool_calls"] = tool_plan.tool_calls(content or "", _call_id(gen, i))
            if message["tool_calls"]:
                message["content"] = None
                finish = "tool_calls" if finish == "stop" else finish
        elif auto_plan is not None:
            message["content"], message["tool_calls"] = auto_plan.message(content or "", _call_id(gen, i))
            if message["tool_calls"]:
                finish = "tool_calls" if finish == "stop" else finish
        choices.append({
            "index": i,
            "message": message,
            "logprobs": chat_logprobs(logprobs[i], gen.params.logprobs or 0) if gen.params.logprobs is not None
            else None,
            "finish_reason": finish,
            "stop_reason": stop_reasons[i],
        })
    body = {"id": gen.request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage_of(gen, state, in_think), "system_fingerprint": None,
            "prompt_logprobs": prompt_logprobs_json(gen.prompt_logprobs)}
    if gen.prompt.info:
        body["prompt_info"] = dict(gen.prompt.info)
    return body


def stream_chat(req: ChatCompletionRequest, raw: Request, gen: TrackedGeneration, state: ServingState,
                model: str, tool_plan: ToolCallPlan | None = None,
                auto_plan: AutoToolPlan | None = None) -> AsyncIterator[str]:
    """Server-sent events: per choice a first chunk with the role, content/reasoning deltas, a chunk with the
    finish_reason; then (if asked) a usage chunk with no choices; then `data: [DONE]`. A forced call's answer goes
    out as `tool_calls` deltas instead of content (ToolCallStream)."""
    return guarded_stream(raw, [gen], _chat_events(req, gen, state, model, tool_plan, auto_plan))


async def _chat_events(req: ChatCompletionRequest, gen: TrackedGeneration, state: ServingState, model: str,
                       tool_plan: ToolCallPlan | None, auto_plan: AutoToolPlan | None) -> AsyncIterator[str]:
    created = int(time.time())
    n = gen.params.n
    start = prompt_split_state(gen.prompt.text)
    in_think = start is SplitState.THINK
    splitters = [ThinkSplitter(start) for _ in range(n)]
    calls = [ToolCallStream(tool_plan, _call_id(gen, i)) for i in range(n)] if tool_plan is not None else None
    autos = [AutoToolStream(auto_plan, _call_id(gen, i)) for i in range(n)] if auto_plan is not None else None
    opts = req.stream_options
    include_usage = bool(opts and opts.include_usage)
    continuous = bool(opts and opts.continuous_usage_stats)
    top_n = gen.params.logprobs or 0
    # prompt_logprobs (a glmv extension when streaming: vLLM refuses it) ride top-level on the first chunk after
    # they arrive
    scores: list[list | None] = []  # the JSON waiting for a chunk (at most one)
    scored = False

    def chunk(choices: list[dict], usage: dict | None = None) -> str:
        body = {"id": gen.request_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": choices}
        if scores:
            body["prompt_logprobs"] = scores.pop()
        if usage is not None:
            body["usage"] = usage
        elif continuous:
            body["usage"] = usage_of(gen, state, in_think)
        if gen.prompt.info and not choices:
            body["prompt_info"] = dict(gen.prompt.info)
        return sse(body)

    def choice(index: int, delta: dict, logprobs: dict | None = None, finish: str | None = None,
               stop_reason: int | str | None = None) -> dict:
        out = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        if finish is not None:
            out["stop_reason"] = stop_reason
        return out

    # A choice's first token gets a chunk even when it has no text yet (part of a UTF-8 character, or a tag the
    # splitter holds back): that chunk is the client's time to first token, as vLLM streams it.
    heard = [False] * n
    for i in range(n):
        yield chunk([choice(i, {"role": "assistant", "content": ""})])
    async for out in gen.outputs():
        if out.prompt_logprobs is not None and not scored:
            scores.append(prompt_logprobs_json(out.prompt_logprobs))
            scored = True
        for c in out.outputs:
            reasoning, content = splitters[c.index].feed(c.text)
            if c.finish_reason is not None:
                r2, c2 = splitters[c.index].finish()
                reasoning, content = reasoning + r2, content + c2
            delta: dict = {}
            if reasoning and req.include_reasoning:
                delta["reasoning_content"] = delta["reasoning"] = reasoning
            if calls is not None:
                tool_delta = calls[c.index].feed(content, c.finish_reason is not None)
                if tool_delta:
                    delta["tool_calls"] = tool_delta
            elif autos is not None:
                content, tool_delta = autos[c.index].feed(content, c.finish_reason is not None)
                if content:
                    delta["content"] = content
                if tool_delta:
                    delta["tool_calls"] = tool_delta
            elif content:
                delta["content"] = content
            logprobs = chat_logprobs(c.logprobs, top_n) if gen.params.logprobs is not None and c.logprobs \
                else None
            if not delta and not heard[c.index] and c.num_tokens and c.finish_reason is None:
                delta["content"] = ""
            if delta or logprobs:
                heard[c.index] = True
                yield chunk([choice(c.index, delta, logprobs)])
            if c.finish_reason is not None:
                finish = c.finish_reason.openai
                if finish == "stop" and (calls is not None and calls[c.index].sent
                                         or autos is not None and autos[c.index].sent):
                    finish = "tool_calls"
                yield chunk([choice(c.index, {}, None, finish, c.stop_reason)])
        if scores:  # no choice had a chunk to carry them
            yield chunk([])
    if include_usage:
        yield chunk([], usage_of(gen, state, in_think))
    yield sse("[DONE]")


class ToolCallStream:
    """One choice's forced call as OpenAI streams it: a first delta with id, type and name, then fragments of
    `arguments` that join to the non-streamed arguments. A named call streams its arguments as they are written;
    one where the model picks the function is sent whole at the end (its name is inside the JSON)."""

    def __init__(self, plan: ToolCallPlan, call_id: str):
        self.plan = plan
        self.call_id = call_id
        self.buffer = ""
        self.sent = False

    def feed(self, text: str, final: bool) -> list[dict]:
        self.buffer += text
        if self.plan.function is not None:
            out = []
            if not self.sent and text:
                out.append({"index": 0, "id": self.call_id, "type": "function",
                            "function": {"name": self.plan.function, "arguments": ""}})
                self.sent = True
            if text:
                out.append({"index": 0, "function": {"arguments": text}})
            return out
        if not final:
            return []
        calls = self.plan.tool_calls(self.buffer, self.call_id)
        self.sent = bool(calls)
        return [{"index": 0, **call} for call in calls]
