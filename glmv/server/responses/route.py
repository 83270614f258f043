"""POST /v1/responses, GET and DELETE /v1/responses/{id}: OpenAI's Responses API on the chat route's road.

A request becomes the chat request it means (items.py), whose prompt, sampling params, grammar and forced-call plan
are built exactly as /v1/chat/completions builds them; the answer comes back as output items (output.py), whole or
as the Responses event stream: response.created, response.in_progress, then per item output_item.added,
content_part.added, the deltas, their done events, output_item.done, and last response.completed (or
response.incomplete when max_output_tokens ran out; an error event and response.failed on a mid-stream error).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from glmv.reasoning import SplitState, ThinkSplitter, prompt_split_state
from glmv.sampling import FinishReason
from glmv.server.chat import prompt_for
from glmv.server.chat_response import usage_of
from glmv.server.errors import OPENAPI_ERRORS, APIError
from glmv.server.generation import ClientDisconnected, TrackedGeneration, guarded_stream, respond, unless_disconnected
from glmv.server.params import chat_sampling_params, resolve_model_name
from glmv.server.responses.items import chat_request, input_messages, output_messages, tool_choice_echo, tool_echo
from glmv.server.responses.output import Event, OutputBuilder
from glmv.server.responses.protocol import ResponsesRequest
from glmv.server.responses.store import StoredResponse
from glmv.server.state import ServingState
from glmv.server.structured import requested_spec, tool_call_plan, with_structured

router = APIRouter()


class _Run:
    """One response being made: the request, its generation and what is returned about it."""

    def __init__(self, req: ResponsesRequest, state: ServingState, gen: TrackedGeneration, model: str,
                 conversation: list[dict[str, Any]], builder: OutputBuilder):
        self.req, self.state, self.gen, self.model = req, state, gen, model
        self.conversation = conversation  # history + this input, as chat messages
        self.builder = builder
        self.created_at = int(time.time())
        self.start = prompt_split_state(gen.prompt.text)
        self.splitter = ThinkSplitter(self.start)

    def body(self, status: str, error: dict | None = None) -> dict[str, Any]:
        req = self.req
        fmt = req.text.format.model_dump(by_alias=True, exclude_none=True) if req.text and req.text.format \
            else {"type": "text"}
        done = status in ("completed", "incomplete", "failed")
        body: dict[str, Any] = {
            "id": self.gen.request_id, "object": "response", "created_at": self.created_at, "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "model": self.model, "output": list(self.builder.items) if done else [],
            "instructions": req.instructions, "previous_response_id": req.previous_response_id,
            "max_output_tokens": req.max_output_tokens, "temperature": self.gen.params.temperature,
            "top_p": self.gen.params.top_p, "parallel_tool_calls": bool(req.parallel_tool_calls),
            "tool_choice": tool_choice_echo(req), "tools": tool_echo(req), "text": {"format": fmt},
            "store": req.store, "metadata": req.metadata or {}, "user": req.user, "truncation": "disabled",
            "reasoning": None, "error": error, "incomplete_details":
                {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "usage": self.usage() if done else None,
        }
        return body

    def usage(self) -> dict[str, Any]:
        u = usage_of(self.gen, self.state, self.start is SplitState.THINK)
        return {"input_tokens": u["prompt_tokens"], "output_tokens": u["completion_tokens"],
                "total_tokens": u["total_tokens"],
                "input_tokens_details": {"cached_tokens": u["prompt_tokens_details"]["cached_tokens"],
                                         "cache_write_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": u["completion_tokens_details"]["reasoning_tokens"]}}

    async def events(self) -> AsyncIterator[Event]:
        """The output events, ending with the builder's closing ones; `self.final_status` is set at the end."""
        self.final_status = "completed"
        async for out in self.gen.outputs():
            for c in out.outputs:
                reasoning, answer = self.splitter.feed(c.text)
                if c.finish_reason is not None:
                    r2, a2 = self.splitter.finish()
                    reasoning, answer = reasoning + r2, answer + a2
                for event in self.builder.feed(reasoning, answer):
                    yield event
                if c.finish_reason is FinishReason.LENGTH:
                    self.final_status = "incomplete"
        for event in self.builder.finish(self.final_status == "incomplete"):
            yield event

    def store(self, body: dict[str, Any]) -> None:
        if self.req.store:
            conversation = self.conversation + output_messages(body["output"])
            self.state.response_store.put(body["id"], StoredResponse(body, conversation))


@router.post("/v1/responses", responses=OPENAPI_ERRORS,
             summary="Create a response (OpenAI Responses API; stream: text/event-stream of response events)")
async def create_response(req: ResponsesRequest, raw: Request) -> Response:
    state: ServingState = raw.app.state.serving
    arrival = time.monotonic()
    model = resolve_model_name(state, req.model)
    history: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        previous = state.response_store.get(req.previous_response_id)
        if previous is None:
            raise APIError(400, f"Previous response with id '{req.previous_response_id}' not found (never stored, "
                           f"or evicted: the server keeps the last {state.server_config.max_stored_responses}).",
                           "previous_response_id", "previous_response_not_found")
        history = previous.conversation
    new = input_messages(req.input)
    chat = chat_request(req, history, new)
    params = chat_sampling_params(chat, state)
    tool_plan = tool_call_plan(chat)
    params = await with_structured(params, tool_plan.spec if tool_plan is not None else requested_spec(chat), state)
    try:
        prompt = await unless_disconnected(raw, prompt_for(chat, state), [])
    except ClientDisconnected:
        return Response(status_code=499)
    gen = TrackedGeneration(state, prompt, params, f"resp_{uuid.uuid4().hex}", model, arrival)
    run = _Run(req, state, gen, model, history + new, OutputBuilder(tool_plan))
    return await respond(raw, [gen], gen.start(), (lambda: _stream(run, raw)) if req.stream else None,
                         lambda: _collect(run))


async def _collect(run: _Run) -> dict[str, Any]:
    status = 200
    try:
        async for _ in run.events():
            pass
    except BaseException:
        status = 499
        raise
    finally:
        await run.gen.close(status)
    body = run.body(run.final_status)
    run.store(body)
    return body


def _sse(event: Event) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"


def _stream(run: _Run, raw: Request) -> AsyncIterator[str]:
    seq = 0

    def emit(event: Event) -> str:
        nonlocal seq
        event["sequence_number"] = seq
        seq += 1
        return _sse(event)

    async def events() -> AsyncIterator[str]:
        yield emit({"type": "response.created", "response": run.body("in_progress")})
        yield emit({"type": "response.in_progress", "response": run.body("in_progress")})
        async for event in run.events():
            yield emit(event)
        body = run.body(run.final_status)
        run.store(body)
        yield emit({"type": f"response.{run.final_status}", "response": body})

    def failed(err: APIError) -> list[str]:
        code = err.code if isinstance(err.code, str) else None
        return [emit({"type": "error", "code": code, "message": err.message, "param": err.param}),
                emit({"type": "response.failed", "response": run.body(
                    "failed", {"code": "server_error" if err.status >= 500 else "invalid_prompt",
                               "message": err.message})})]

    return guarded_stream(raw, [run.gen], events(), failed)


@router.get("/v1/responses/{response_id}", responses=OPENAPI_ERRORS, summary="A stored response")
async def get_response(response_id: str, raw: Request) -> JSONResponse:
    stored = raw.app.state.serving.response_store.get(response_id)
    if stored is None:
        raise APIError(404, f"No response with id '{response_id}' is stored (not stored, or evicted).",
                       "response_id", "response_not_found")
    return JSONResponse(stored.body)


@router.delete("/v1/responses/{response_id}", responses=OPENAPI_ERRORS, summary="Delete a stored response")
async def delete_response(response_id: str, raw: Request) -> JSONResponse:
    if not raw.app.state.serving.response_store.delete(response_id):
        raise APIError(404, f"No response with id '{response_id}' is stored.", "response_id", "response_not_found")
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})
