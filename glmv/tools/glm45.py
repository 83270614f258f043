"""The GLM-4.5 call format as a streaming parser: answer text in, content and OpenAI-shaped call pieces out.

The model writes, inside its answer,

    some text<tool_call>get_weather
    <arg_key>city</arg_key>
    <arg_value>Paris</arg_value>
    </tool_call>

and stops (`<|observation|>` is an end token). Each call becomes a function name and a JSON `arguments` string;
text outside calls is content. A value is kept as written when the function's schema types that parameter as a
string (so "007" stays a string), and is otherwise read as JSON when it parses, else kept as a string.

One state machine serves both roads: the whole-text parse is the stream parse fed at once, so streamed content
joined equals the non-streamed content, and each call's streamed `arguments` pieces joined equal its whole
arguments, built with the same json.dumps spelling the whole string uses. A value the schema types as a string is
streamed as the model writes it (`{"city": "`, then `Par`, `is`, then `"`; JSON escaping is per character, so
escaped pieces join to the escaped whole); other values a pair at a time, once they are complete (`, "days": 3`),
since only the whole text says whether it parses as JSON. A call cut short inside a string value keeps what came of
it; inside any other pair, that pair is dropped. Whitespace before a call, and after one when nothing came
before it, is dropped (content never ends or starts with it); text after a call keeps its leading whitespace.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CALL_START = "<tool_call>"
CALL_END = "</tool_call>"
KEY_START = "<arg_key>"
VALUE_END = "</arg_value>"

_PAIR = re.compile(r"\s*<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)
_VALUE_OPEN = re.compile(r"\s*<arg_key>(.*?)</arg_key>\s*<arg_value>", re.DOTALL)
_END = re.compile(r"\s*</tool_call>")
_WAITABLE = ("<arg_key>", "</tool_call>")  # what may follow inside a call


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    name: str


@dataclass(frozen=True)
class ArgumentsDelta:
    index: int
    text: str


Event = ContentDelta | CallStart | ArgumentsDelta


@dataclass
class ParsedCall:
    name: str
    arguments: str


def _partial_overlap(text: str, tag: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of tag (text that may still become tag)."""
    for k in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-k:]):
            return k
    return 0


def _string_params(tools: Mapping[str, Mapping[str, Any] | None]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, schema in tools.items():
        props = (schema or {}).get("properties") or {}
        out[name] = {k for k, v in props.items() if isinstance(v, Mapping) and v.get("type") == "string"}
    return out


@dataclass
class GlmToolCallParser:
    """Feed answer text as it comes (`feed`), then `finish()` once; both return events in order."""

    tools: Mapping[str, Mapping[str, Any] | None]  # function name -> its parameters schema
    _buf: str = ""
    _mode: str = "text"  # text | name | args | value (inside a string-typed value, streaming it)
    _index: int = -1
    _name: str = ""
    _pairs: int = 0
    _pending_ws: str = ""  # trailing whitespace of content, sent only if more content follows
    _after_call: bool = False  # drop whitespace that directly follows a call when no content came before it
    _emitted: bool = False
    _strings: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._strings = _string_params(self.tools)

    @property
    def calls(self) -> int:
        return self._index + 1

    def feed(self, text: str) -> list[Event]:
        self._buf += text
        out: list[Event] = []
        while self._step(out, final=False):
            pass
        return out

    def finish(self) -> list[Event]:
        out: list[Event] = []
        while self._step(out, final=True):
            pass
        if self._mode == "name":  # the length ran out inside the name: a call with what there is of it
            name, self._buf = self._buf.strip(), ""
            if name:
                self._start_call(name, out)
                self._close_call(out)
            self._mode = "text"
        elif self._mode == "value":  # cut inside a string value: what came of it, closed
            self._string_piece(self._buf, out)
            self._buf = ""
            out.append(ArgumentsDelta(self._index, '"'))
            self._close_call(out)
            self._mode = "text"
        elif self._mode == "args":  # an unfinished pair is dropped; the arguments are closed
            self._buf = ""
            self._close_call(out)
            self._mode = "text"
        return out

    # -- one step of the state machine; False when it must wait for more text ----------------------------------
    def _step(self, out: list[Event], final: bool) -> bool:
        if self._mode == "text":
            start = self._buf.find(CALL_START)
            if start == -1:
                keep = 0 if final else _partial_overlap(self._buf, CALL_START)
                self._content(self._buf[:len(self._buf) - keep], out)
                self._buf = self._buf[len(self._buf) - keep:]
                if final:
                    self._buf = ""
                return False
            self._content(self._buf[:start], out)
            self._pending_ws = ""
            self._buf = self._buf[start + len(CALL_START):]
            self._mode = "name"
            return True
        if self._mode == "name":
            stripped = self._buf.lstrip()
            cuts = [i for i in (stripped.find("\n"), stripped.find(KEY_START), stripped.find(CALL_END)) if i != -1]
            if not cuts:
                self._buf = stripped
                return False
            cut = min(cuts)
            self._start_call(stripped[:cut].strip(), out)
            self._buf = stripped[cut:]
            self._mode = "args"
            return True
        if self._mode == "value":
            end = self._buf.find(VALUE_END)
            if end == -1:
                keep = _partial_overlap(self._buf, VALUE_END)
                self._string_piece(self._buf[:len(self._buf) - keep], out)
                self._buf = self._buf[len(self._buf) - keep:]
                return False
            self._string_piece(self._buf[:end], out)
            out.append(ArgumentsDelta(self._index, '"'))
            self._buf = self._buf[end + len(VALUE_END):]
            self._mode = "args"
            return True
        # args
        opened = _VALUE_OPEN.match(self._buf)
        if opened is not None and opened.group(1).strip() in self._strings.get(self._name, ()):
            key = json.dumps(opened.group(1).strip(), ensure_ascii=False)
            out.append(ArgumentsDelta(self._index, ("{" if self._pairs == 0 else ", ") + key + ': "'))
            self._pairs += 1
            self._buf = self._buf[opened.end():]
            self._mode = "value"
            return True
        pair = _PAIR.match(self._buf)
        if pair is not None:
            self._pair(pair.group(1).strip(), pair.group(2), out)
            self._buf = self._buf[pair.end():]
            return True
        end = _END.match(self._buf)
        if end is not None:
            self._close_call(out)
            self._buf = self._buf[end.end():]
            self._mode = "text"
            self._after_call = True
            return True
        rest = self._buf.lstrip()
        if not rest or rest.startswith(KEY_START) or any(t.startswith(rest) for t in _WAITABLE):
            return False  # a pair or the end still coming
        nxt = rest.find("<", 1)  # stray text inside a call: skip to the next tag
        self._buf = "" if nxt == -1 else rest[nxt:]
        return bool(self._buf)

    # -- pieces ------------------------------------------------------------------------------------------------
    def _content(self, text: str, out: list[Event]) -> None:
        if self._after_call and not self._emitted:  # a call first: the answer's content starts after it
            text = text.lstrip()
            if not text:
                return
            self._after_call = False
        body = text.rstrip()
        if body:
            self._emitted = True
            out.append(ContentDelta(self._pending_ws + body))
            self._pending_ws = text[len(body):]
        else:
            self._pending_ws += text

    def _start_call(self, name: str, out: list[Event]) -> None:
        self._index += 1
        self._name = name
        self._pairs = 0
        out.append(CallStart(self._index, name))

    def _string_piece(self, text: str, out: list[Event]) -> None:
        if text:
            out.append(ArgumentsDelta(self._index, json.dumps(text, ensure_ascii=False)[1:-1]))

    def _pair(self, key: str, raw: str, out: list[Event]) -> None:
        """A whole pair whose value is not string-typed (those stream through the value mode)."""
        value: Any
        try:
            value = json.loads(raw.strip())
        except ValueError:
            value = raw.strip()
        piece = f"{json.dumps(key, ensure_ascii=False)}: {json.dumps(value, ensure_ascii=False)}"
        out.append(ArgumentsDelta(self._index, ("{" if self._pairs == 0 else ", ") + piece))
        self._pairs += 1

    def _close_call(self, out: list[Event]) -> None:
        out.append(ArgumentsDelta(self._index, "{}" if self._pairs == 0 else "}"))


def parse_tool_calls(text: str, tools: Mapping[str, Mapping[str, Any] | None]) -> tuple[str, list[ParsedCall]]:
    """The whole answer text -> (content outside calls, calls in order)."""
    parser = GlmToolCallParser(tools)
    content: list[str] = []
    calls: list[ParsedCall] = []
    for event in [*parser.feed(text), *parser.finish()]:
        if isinstance(event, ContentDelta):
            content.append(event.text)
        elif isinstance(event, CallStart):
            calls.append(ParsedCall(event.name, ""))
        else:
            calls[event.index].arguments += event.text
    return "".join(content), calls
