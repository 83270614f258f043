"""History rule: assistant turns sent back to the model keep only their answer.

GLM-4.1V's official demo resends each earlier assistant turn as its answer text alone: the thought is removed and
the `<answer>` tags unwrapped (its cleanup drops every tag). glmv applies exactly the split it uses for responses:
an assistant turn becomes what glmv would have returned as its `content`. `reasoning_content` / `reasoning` fields
that clients echo back are dropped, so the thinking never re-enters the prompt.
"""

from __future__ import annotations

import copy
from typing import Any

from glmv.reasoning.parser import ThinkSplitter

REASONING_FIELDS = ("reasoning_content", "reasoning")


def answer_only(text: str) -> str:
    """The answer part of an assistant text, as the splitter returns it as content."""
    splitter = ThinkSplitter()
    _, c1 = splitter.feed(text)
    _, c2 = splitter.finish()
    return c1 + c2


def _strip_parts(parts: list[Any]) -> list[Any]:
    """Text parts of one assistant message go through one splitter, in order, so a thought that spans parts is
    removed whole; parts whose answer text is empty are dropped; other parts are kept as they are."""
    splitter = ThinkSplitter()
    out: list[Any] = []
    last_text: dict | None = None
    for part in parts:
        if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            _, content = splitter.feed(part["text"])
            new = {**part, "text": content}
            out.append(new)
            last_text = new
        else:
            out.append(part)
    _, tail = splitter.finish()
    if tail:
        if last_text is None:
            last_text = {"type": "text", "text": ""}
            out.append(last_text)
        last_text["text"] += tail
    return [p for p in out if not (isinstance(p, dict) and p.get("type") == "text" and p.get("text") == "")]


def strip_reasoning_from_history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy of `messages` in which every assistant turn keeps only its answer (see the module docstring).

    Other roles are returned unchanged; the input is not modified.
    """
    out = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "assistant":
            out.append(message)
            continue
        m = {k: v for k, v in message.items() if k not in REASONING_FIELDS}
        content = m.get("content")
        if isinstance(content, str):
            m["content"] = answer_only(content)
        elif isinstance(content, list):
            m["content"] = _strip_parts(copy.deepcopy(content))
        out.append(m)
    return out
