"""`tool_choice: "auto"` (or tools with no tool_choice): the model decides, in its own call format, and its calls
are parsed out of the answer into OpenAI `tool_calls` (glmv/tools), streamed as OpenAI streams them.

Only a checkpoint whose chat template renders tools can be asked this (ServingState.tool_format, read off the
template at load); for others `tool_call_plan` (glmv/server/structured.py) answers 400 and names
`tool_choice: "required"`, which works everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from glmv.server.protocol import ChatCompletionRequest
from glmv.server.state import ServingState
from glmv.tools import ArgumentsDelta, CallStart, ContentDelta, GlmToolCallParser, ToolFormat, parse_tool_calls


@dataclass(frozen=True)
class AutoToolPlan:
    """The request's functions (name -> parameters schema) for the parser."""

    tools: dict[str, dict[str, Any] | None]

    def message(self, content: str, call_id: str) -> tuple[str | None, list[dict]]:
        """A whole answer -> (content outside calls or None, OpenAI tool_calls)."""
        text, calls = parse_tool_calls(content, self.tools)
        tool_calls = [{"id": f"{call_id}_{k}", "type": "function",
                       "function": {"name": c.name, "arguments": c.arguments}} for k, c in enumerate(calls)]
        return (text or None) if tool_calls else text, tool_calls


def auto_tool_plan(req: ChatCompletionRequest, state: ServingState) -> AutoToolPlan | None:
    """A plan when the request leaves the choice to the model and the checkpoint has a call format; else None."""
    if not req.tools or req.tool_choice not in (None, "auto") or state.tool_format is not ToolFormat.GLM45:
        return None
    return AutoToolPlan({t.function.name: t.function.parameters for t in req.tools})


class AutoToolStream:
    """One choice's answer deltas -> (content delta, tool_calls deltas): a first delta per call with its index, id,
    type and name and empty arguments, then argument pieces that join to the whole arguments."""

    def __init__(self, plan: AutoToolPlan, call_id: str):
        self.parser = GlmToolCallParser(plan.tools)
        self.call_id = call_id

    @property
    def sent(self) -> bool:
        return self.parser.calls > 0

    def feed(self, text: str, final: bool) -> tuple[str, list[dict]]:
        events = self.parser.feed(text) if text else []
        if final:
            events += self.parser.finish()
        content: list[str] = []
        calls: list[dict] = []
        for event in events:
            if isinstance(event, ContentDelta):
                content.append(event.text)
            elif isinstance(event, CallStart):
                calls.append({"index": event.index, "id": f"{self.call_id}_{event.index}", "type": "function",
                              "function": {"name": event.name, "arguments": ""}})
            elif isinstance(event, ArgumentsDelta):
                calls.append({"index": event.index, "function": {"arguments": event.text}})
        return "".join(content), calls
