"""Structured outputs and forced tool calls at the door: request fields -> a compiled grammar on SamplingParams.

`response_format` (OpenAI) and `structured_outputs` (vLLM's extra) become one StructuredSpec; `tool_choice:
"required"` or a named function becomes a JSON schema of the call (the function's parameters) whose answer is
returned as OpenAI `tool_calls`. `tool_choice: "auto"` is parsed from the model's own call format where the chat
template has one (glmv/server/tool_calls.py); without one (GLM-4.1V was not trained to call tools on its own) it is
refused rather than answered with text the client would take for "no call".
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from glmv.sampling import SamplingParams
from glmv.server.errors import APIError
from glmv.server.protocol import ChatCompletionRequest, ChatTool, NamedToolChoice, SamplingFields
from glmv.server.state import ServingState
from glmv.structured.spec import StructuredOutputError, StructuredSpec


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, param, "invalid_structured_output")


def requested_spec(req: SamplingFields) -> StructuredSpec | None:
    """The constraint of `response_format` or `structured_outputs` (at most one of them), or None."""
    fmt, extra = req.response_format, req.structured_outputs
    spec = None
    if fmt is not None and fmt.type == "json_object":
        spec = StructuredSpec("json_object", "", False, "response_format")
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise _bad("response_format: type json_schema needs json_schema.schema.", "response_format")
        spec = StructuredSpec.json_schema(fmt.json_schema.schema_, bool(fmt.json_schema.strict), "response_format")
    if extra is None:
        return spec
    param = "structured_outputs"
    if spec is not None:
        raise _bad("Send either response_format or structured_outputs, not both.", param)
    given = [name for name, value in (("json", extra.json_), ("regex", extra.regex), ("choice", extra.choice),
                                       ("grammar", extra.grammar), ("json_object", extra.json_object or None))
             if value is not None]
    if len(given) != 1:
        raise _bad(f"structured_outputs takes exactly one of json, regex, choice, grammar, json_object; got "
                   f"{', '.join(given) or 'none'}.", param)
    if extra.json_ is not None:
        schema = extra.json_
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError:
                raise _bad("structured_outputs.json is a string that is not JSON.", param) from None
        return StructuredSpec.json_schema(schema, False, param)
    if extra.regex is not None:
        return StructuredSpec("regex", extra.regex, False, param)
    if extra.choice is not None:
        return StructuredSpec.choice(extra.choice, param)
    if extra.grammar is not None:
        return StructuredSpec("grammar", extra.grammar, False, param)
    return StructuredSpec("json_object", "", False, param)


@dataclass(frozen=True)
class ToolCallPlan:
    """A forced call: the answer is the arguments of `function` (named), or {"name", "arguments"} (required)."""

    spec: StructuredSpec
    function: str | None  # None: the model picks the function among the tools

    def tool_calls(self, answer: str, call_id: str) -> list[dict]:
        """The answer as OpenAI `tool_calls`; empty when it is not a complete call (the length ran out)."""
        try:
            value = json.loads(answer)
        except ValueError:
            return []
        if self.function is not None:  # the arguments as written, so that streamed fragments join to them
            name, arguments = self.function, answer
        elif isinstance(value, dict) and "name" in value and "arguments" in value:
            name, arguments = value["name"], json.dumps(value["arguments"], ensure_ascii=False)
        else:
            return []
        return [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]


def _parameters(tool: ChatTool) -> dict:
    return tool.function.parameters or {"type": "object", "properties": {}}


def tool_call_plan(req: ChatCompletionRequest) -> ToolCallPlan | None:
    """What `tools` with `tool_choice` ask for; a 400 for what GLM-4.1V cannot do."""
    tools, choice = req.tools or [], req.tool_choice
    if not tools:
        if choice not in (None, "none"):
            raise _bad("tool_choice needs tools.", "tool_choice")
        return None
    if choice == "none":
        return None
    if choice in (None, "auto"):
        raise _bad('tool_choice "auto" (also what tools without a tool_choice mean): this checkpoint\'s chat template '
                   "renders no tools, so the model (GLM-4.1V) was not trained to call them on its own and glmv cannot "
                   'tell a call from an answer; GLM-4.6V-Flash can. Send tool_choice: "required" or name a function '
                   '({"type": "function", "function": {"name": ...}}): the call is then constrained to the '
                   "function's parameters schema.", "tool_choice")
    if req.response_format is not None and req.response_format.type != "text" or req.structured_outputs is not None:
        raise _bad("A forced tool call already constrains the answer: leave out response_format and "
                   "structured_outputs.", "tool_choice")
    by_name = {t.function.name: t for t in tools}
    if isinstance(choice, NamedToolChoice):
        tool = by_name.get(choice.function.name)
        if tool is None:
            raise _bad(f"tool_choice names {choice.function.name!r}, which is not among the tools "
                       f"({', '.join(by_name)}).", "tool_choice")
        spec = StructuredSpec.json_schema(_parameters(tool), bool(tool.function.strict), "tools")
        return ToolCallPlan(spec, tool.function.name)
    calls = [{"type": "object", "properties": {"name": {"const": name}, "arguments": _parameters(tool)},
              "required": ["name", "arguments"], "additionalProperties": False} for name, tool in by_name.items()]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return ToolCallPlan(StructuredSpec.json_schema(schema, True, "tools"), None)


async def with_structured(params: SamplingParams, spec: StructuredSpec | None,
                          state: ServingState) -> SamplingParams:
    """`params` with the compiled grammar of `spec` (compiled off the event loop, cached); a 400 if it can't be."""
    if spec is None:
        return params
    if state.engine_config.engine not in ("glmv", "vllm"):
        raise _bad(f"Structured outputs and forced tool calls are not available with --engine "
                   f"{state.engine_config.engine}; serve with --engine glmv (or vllm).", spec.param)
    if params.ignore_eos or params.min_tokens:
        raise _bad("Structured outputs end the answer where the grammar ends: leave out ignore_eos and min_tokens.",
                   spec.param)
    if state.engine_config.engine == "vllm":  # vLLM compiles it (its xgrammar), after the thought (glm45 parser)
        return dataclasses.replace(params, guided=spec)
    try:
        compiled = await state.grammar_compiler.compile_async(spec)
    except StructuredOutputError as exc:
        raise _bad(str(exc), exc.param) from None
    return dataclasses.replace(params, structured=compiled)
