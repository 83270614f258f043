"""Responses input items -> chat messages, and a Responses request -> the ChatCompletionRequest it means.

The Responses door takes the chat route's road from here on (sampling params, structured outputs, forced tool calls,
the one prompt builder), so both doors hold a request to the same rules. Items map to what a chat client would send:
a message to a message (`input_text` -> text part, `input_image` -> image_url part, `input_file` -> file part), a
`function_call` to an assistant turn with `tool_calls`, a `function_call_output` to a `tool` message, and a
`reasoning` item to nothing (history keeps answers only, as on the chat route).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from glmv.server.errors import APIError, validation_message
from glmv.server.protocol import ChatCompletionRequest
from glmv.server.responses.protocol import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionToolChoice,
    InputFile,
    InputImage,
    InputText,
    MessageItem,
    ReasoningItem,
    ResponsesRequest,
)


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, param, "invalid_request")


def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if isinstance(part, InputText):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, InputImage):
            if part.image_url is None:
                raise _bad(f"{at}: input_image needs image_url (a URL or a data: URI); file_id needs a Files API, "
                           "which this server does not have.", at)
            parts.append({"type": "image_url", "image_url": {"url": part.image_url}})
        elif isinstance(part, InputFile):
            if part.file_data is None and part.file_url is None:
                raise _bad(f"{at}: input_file needs file_data (a data: URI) or file_url.", at)
            file = {"file_data": part.file_data, "file_url": part.file_url, "filename": part.filename}
            parts.append({"type": "file", "file": {k: v for k, v in file.items() if v is not None}})
        else:
            raise _bad(f"{at}: content of type {part.type!r} is not read here; use input_text, input_image or "
                       "input_file.", at)
    return parts


def _text_only(content: Any, where: str) -> str:
    value = _content(content, where)
    if isinstance(value, str):
        return value
    if any(p["type"] != "text" for p in value):
        raise _bad(f"{where}: only text parts are allowed here.", where)
    return "".join(p["text"] for p in value)


def input_messages(items: str | list[Any]) -> list[dict[str, Any]]:
    """The chat messages of a request's `input`."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if isinstance(item, MessageItem):
            role = "system" if item.role == "developer" else item.role
            content = _text_only(item.content, f"{where}.content") if role == "assistant" \
                else _content(item.content, f"{where}.content")
            messages.append({"role": role, "content": content})
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"):
                messages[-1]["tool_calls"].append(call)  # parallel calls of one turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id,
                             "content": _text_only(item.output, f"{where}.output")})
        elif isinstance(item, ReasoningItem):
            continue  # the thought never re-enters the prompt
        else:
            raise _bad(f"{where}: input items of type {item.type!r} are not supported; send message, function_call, "
                       "function_call_output or reasoning items.", where)
    return messages


def output_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output items as the history messages a following response sees (answers and calls)."""
    messages: list[dict[str, Any]] = []
    for item in output:
        if item["type"] == "message":
            text = "".join(p["text"] for p in item["content"] if p["type"] == "output_text")
            messages.append({"role": "assistant", "content": text})
        elif item["type"] == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    return messages


def chat_request(req: ResponsesRequest, history: list[dict[str, Any]], new: list[dict[str, Any]]
                 ) -> ChatCompletionRequest:
    """The chat request this Responses request means: instructions, then the stored history, then the new input."""
    messages = ([{"role": "system", "content": req.instructions}] if req.instructions else []) + history + new
    if not messages:
        raise _bad("input is empty: send a message.", "input")
    fields: dict[str, Any] = dict(
        model=req.model, messages=messages, max_completion_tokens=req.max_output_tokens,
        temperature=req.temperature, top_p=req.top_p, stream=req.stream, seed=req.seed, top_k=req.top_k,
        min_p=req.min_p, repetition_penalty=req.repetition_penalty, logit_bias=req.logit_bias,
        thinking_budget=req.thinking_budget, reserved_answer_tokens=req.reserved_answer_tokens,
        chat_template_kwargs=req.chat_template_kwargs, mm_processor_kwargs=req.mm_processor_kwargs,
        media_io_kwargs=req.media_io_kwargs, parallel_tool_calls=req.parallel_tool_calls,
    )
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type == "json_schema":
        if fmt.schema_ is None:
            raise APIError(400, "text.format: type json_schema needs schema.", "text.format",
                           "invalid_structured_output")
        fields["response_format"] = {"type": "json_schema", "json_schema": {
            "name": fmt.name, "schema": fmt.schema_, "strict": bool(fmt.strict)}}
    elif fmt is not None and fmt.type == "json_object":
        fields["response_format"] = {"type": "json_object"}
    if req.tools:
        tools = []
        for i, tool in enumerate(req.tools):
            if tool.type != "function" or tool.name is None:
                raise APIError(400, f"tools[{i}]: only function tools (type function, with a name) run here, got "
                               f"{tool.type!r}.", f"tools[{i}]", "unsupported_tool")
            tools.append({"type": "function", "function": {
                "name": tool.name, "description": tool.description, "parameters": tool.parameters,
                "strict": tool.strict}})
        fields["tools"] = tools
    choice = req.tool_choice
    if isinstance(choice, FunctionToolChoice):
        fields["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice is not None:
        fields["tool_choice"] = choice
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        message, param = validation_message(list(exc.errors()))
        raise _bad(message, param or "input") from None


def tool_echo(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's tools as the response object lists them."""
    return [{"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters,
             "strict": t.strict} for t in req.tools or []]


def tool_choice_echo(req: ResponsesRequest) -> str | dict[str, str]:
    choice = req.tool_choice
    if isinstance(choice, FunctionToolChoice):
        return {"type": "function", "name": choice.name}
    return choice or "auto"
