"""POST /v1/chat/completions: messages -> Prompt -> engine -> a chat.completion or a stream of chunks.

The prompt is built by glmv/inputs/build.py (the builder every door shares); the route and the response
formatting (glmv/server/chat_response.py) belong to the server.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from glmv.inputs.build import ChatPromptRequest, build_chat_prompt
from glmv.inputs.prompt import Prompt
from glmv.server.chat_response import collect_chat, stream_chat
from glmv.server.errors import OPENAPI_ERRORS, APIError
from glmv.server.generation import ClientDisconnected, TrackedGeneration, respond, unless_disconnected
from glmv.server.params import chat_sampling_params, resolve_model_name
from glmv.server.protocol import ChatCompletionRequest, ChatCompletionResponse, random_id
from glmv.server.state import ServingState
from glmv.server.structured import requested_spec, tool_call_plan, with_structured
from glmv.server.tool_calls import auto_tool_plan

router = APIRouter()


async def prompt_for(req: ChatCompletionRequest, state: ServingState) -> Prompt:
    """The request's Prompt, built by the one builder every door uses (glmv/inputs/build.py)."""
    request = ChatPromptRequest(
        messages=[m.model_dump(exclude_none=True) for m in req.messages],
        add_generation_prompt=req.add_generation_prompt, chat_template_kwargs=req.chat_template_kwargs or {},
        mm_processor_kwargs=req.mm_processor_kwargs, media_io_kwargs=req.media_io_kwargs,
        max_tokens=req.max_completion_tokens or req.max_tokens, continue_final_message=req.continue_final_message,
        tools=[t.model_dump(exclude_none=True) for t in req.tools] if req.tools and req.tool_choice != "none" else None)
    return await build_chat_prompt(request, state.builder, state.server_config.media_policy, state.max_model_len,
                                   state.engine.stage_prompt)


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=OPENAPI_ERRORS,
             summary="Create a chat completion (stream: text/event-stream of chat.completion.chunk)")
async def create_chat_completion(req: ChatCompletionRequest, raw: Request) -> Response:
    return await chat_completions(req, raw, raw.app.state.serving)


async def chat_completions(req: ChatCompletionRequest, raw: Request, state: ServingState) -> Response:
    arrival = time.monotonic()
    model = resolve_model_name(state, req.model)
    params = chat_sampling_params(req, state)
    auto_plan = auto_tool_plan(req, state)
    tool_plan = None if auto_plan is not None else tool_call_plan(req)
    params = await with_structured(params, tool_plan.spec if tool_plan is not None else requested_spec(req), state)
    if req.continue_final_message and (req.add_generation_prompt or req.messages[-1].role != "assistant"):
        raise APIError(400, "continue_final_message needs add_generation_prompt: false and a last assistant message.",
                       "continue_final_message", "invalid_request")
    try:  # media downloads can be slow: stop them too if the client leaves
        prompt = await unless_disconnected(raw, prompt_for(req, state), [])
    except ClientDisconnected:
        return Response(status_code=499)
    gen = TrackedGeneration(state, prompt, params, random_id("chatcmpl"), model, arrival)
    # A client may leave while its request waits for the first token (queued, long prefill), or, without
    # streaming, at any point before the answer: either way the engine request is aborted.
    stream = (lambda: stream_chat(req, raw, gen, state, model, tool_plan, auto_plan)) if req.stream else None
    return await respond(raw, [gen], gen.start(), stream,
                         lambda: collect_chat(req, gen, state, model, tool_plan, auto_plan))
