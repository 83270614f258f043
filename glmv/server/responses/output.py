"""Engine outputs -> Responses output items, and the event sequence that streams them.

One `OutputBuilder` turns the splitter's (reasoning, answer) deltas into items and the events announcing them; the
non-streamed response is the items of the same builder, so the streamed events always add up to the returned
object. Items in output order: a `reasoning` item for the thought (its text as one `reasoning_text` part), then a
`message` with one `output_text` part for the answer, or a `function_call` when a forced call was asked for. A
channel that comes back (a second thought after the answer) opens a new item, so nothing is reordered or lost.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from glmv.server.structured import ToolCallPlan

Event = dict[str, Any]


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class _Open:
    kind: str  # "reasoning", "message" or "function_call"
    index: int
    item: dict[str, Any]
    text: list[str] = field(default_factory=list)


class OutputBuilder:
    def __init__(self, tool_plan: ToolCallPlan | None):
        self.plan = tool_plan
        self.items: list[dict[str, Any]] = []
        self._open: _Open | None = None
        self._call_buffer: list[str] = []  # the answer of a forced call whose function the model picks

    # ---- feeding ----

    def feed(self, reasoning: str, answer: str) -> list[Event]:
        events: list[Event] = []
        if reasoning:
            events += self._write("reasoning", reasoning)
        if answer:
            if self.plan is not None and self.plan.function is None:
                self._call_buffer.append(answer)  # the name is inside the JSON: sent whole at the end
            else:
                events += self._write("function_call" if self.plan is not None else "message", answer)
        return events

    def finish(self, incomplete: bool) -> list[Event]:
        events = self._close("incomplete" if incomplete else "completed")
        if self._call_buffer:
            text = "".join(self._call_buffer)
            calls = self.plan.tool_calls(text, "") if self.plan is not None else []
            if calls:
                fn = calls[0]["function"]
                events += self._start("function_call", fn["name"])
                events += self._write("function_call", fn["arguments"])
            else:  # not a whole call (the length ran out): the text is still returned, as a message
                events += self._write("message", text)
            events += self._close("incomplete" if incomplete else "completed")
        return events

    # ---- items ----

    def _write(self, kind: str, text: str) -> list[Event]:
        events: list[Event] = []
        if self._open is None or self._open.kind != kind:
            events += self._close("completed")
            events += self._start(kind, self.plan.function if kind == "function_call" and self.plan else None)
        o = self._open
        assert o is not None
        o.text.append(text)
        if kind == "function_call":
            events.append({"type": "response.function_call_arguments.delta", "item_id": o.item["id"],
                           "output_index": o.index, "delta": text})
        elif kind == "reasoning":
            events.append({"type": "response.reasoning_text.delta", "item_id": o.item["id"], "output_index": o.index,
                           "content_index": 0, "delta": text})
        else:
            events.append({"type": "response.output_text.delta", "item_id": o.item["id"], "output_index": o.index,
                           "content_index": 0, "delta": text, "logprobs": []})
        return events

    def _start(self, kind: str, name: str | None) -> list[Event]:
        index = len(self.items)
        if kind == "reasoning":
            item = {"id": item_id("rs"), "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
            part = {"type": "reasoning_text", "text": ""}
        elif kind == "message":
            item = {"id": item_id("msg"), "type": "message", "role": "assistant", "status": "in_progress",
                    "content": []}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        else:
            item = {"id": item_id("fc"), "type": "function_call", "call_id": item_id("call"), "name": name or "",
                    "arguments": "", "status": "in_progress"}
            part = None
        self.items.append(item)
        self._open = _Open(kind, index, item)
        events: list[Event] = [{"type": "response.output_item.added", "output_index": index, "item": dict(item)}]
        if part is not None:
            events.append({"type": "response.content_part.added", "item_id": item["id"], "output_index": index,
                           "content_index": 0, "part": part})
        return events

    def _close(self, status: str) -> list[Event]:
        o, self._open = self._open, None
        if o is None:
            return []
        text = "".join(o.text)
        item = o.item
        item["status"] = status
        base = {"item_id": item["id"], "output_index": o.index}
        events: list[Event] = []
        if o.kind == "function_call":
            item["arguments"] = text
            events.append({"type": "response.function_call_arguments.done", **base, "name": item["name"],
                           "arguments": text})
        elif o.kind == "reasoning":
            part = {"type": "reasoning_text", "text": text}
            item["content"] = [part]
            events.append({"type": "response.reasoning_text.done", **base, "content_index": 0, "text": text})
            events.append({"type": "response.content_part.done", **base, "content_index": 0, "part": part})
        else:
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item["content"] = [part]
            events.append({"type": "response.output_text.done", **base, "content_index": 0, "text": text,
                           "logprobs": []})
            events.append({"type": "response.content_part.done", **base, "content_index": 0, "part": part})
        events.append({"type": "response.output_item.done", "output_index": o.index, "item": dict(item)})
        return events
