"""Tool turns of a conversation made template-ready: OpenAI sends a call's `arguments` as a JSON string, chat
templates iterate them as a mapping (GLM's writes one `<arg_key>`/`<arg_value>` pair per argument).

Run on the messages before rendering; a call whose arguments are not a JSON object is a 400 naming it.
"""

from __future__ import annotations

import json
from typing import Any

from glmv.inputs.errors import InvalidInputError


def _arguments(raw: Any, where: str) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError:
            raise InvalidInputError(f"{where} is not JSON: {raw[:80]!r}.", param=where) from None
    if not isinstance(value, dict):
        raise InvalidInputError(f"{where} must be a JSON object.", param=where)
    return value


def with_parsed_tool_calls(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy of `messages` whose assistant tool calls carry their arguments as dicts (input left unchanged)."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if not calls:
            out.append(message)
            continue
        if message.get("role") != "assistant" or not isinstance(calls, list):
            raise InvalidInputError(f"messages[{i}].tool_calls: only assistant messages carry a list of tool calls.",
                                    param=f"messages[{i}].tool_calls")
        parsed = []
        for j, call in enumerate(calls):
            where = f"messages[{i}].tool_calls[{j}]"
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise InvalidInputError(f"{where}.function.name is missing.", param=where)
            args = _arguments(function.get("arguments"), f"{where}.function.arguments")
            parsed.append({**call, "function": {**function, "arguments": args}})
        out.append({**message, "tool_calls": parsed})
    return out
