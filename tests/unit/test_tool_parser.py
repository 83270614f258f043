"""The GLM-4.5 call parser (glmv/tools): whole-text parse, and streamed pieces joined equal it for every cut."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from glmv.models.constants import CHAT_TEMPLATE_PATH, GLM46V_CHAT_TEMPLATE_PATH
from glmv.tools import ArgumentsDelta, CallStart, ContentDelta, GlmToolCallParser, detect_tool_format, parse_tool_calls

TOOLS = {"get_weather": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
         "now": None}
TEXT = ("Let me check.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>007</arg_value>\n"
        "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n<arg_key>opts</arg_key>\n<arg_value>{\"a\": [1]}"
        "</arg_value>\n<arg_key>note</arg_key><arg_value>not json</arg_value>\n</tool_call>\n"
        "<tool_call>now\n</tool_call> done")


def test_whole_text():
    content, calls = parse_tool_calls(TEXT, TOOLS)
    assert content == "Let me check. done"
    assert [c.name for c in calls] == ["get_weather", "now"]
    # a string-typed parameter keeps its text ("007"), others are JSON when they parse, else strings
    assert json.loads(calls[0].arguments) == {"city": "007", "days": 3, "opts": {"a": [1]}, "note": "not json"}
    assert calls[1].arguments == "{}"


def test_text_without_calls_and_half_tags():
    assert parse_tool_calls("a <tool_ b", TOOLS) == ("a <tool_ b", [])
    # cut by the length: inside a string value, what came of it; inside another value, the pair is dropped
    content, calls = parse_tool_calls("x<tool_call>get_weather\n<arg_key>city</arg_key><arg_value>Par", TOOLS)
    assert content == "x" and calls[0].name == "get_weather" and calls[0].arguments == '{"city": "Par"}'
    _, calls = parse_tool_calls("<tool_call>get_weather\n<arg_key>days</arg_key><arg_value>3", TOOLS)
    assert calls[0].arguments == "{}"


def test_a_string_value_streams_before_it_closes():
    """The pieces of a string-typed value reach the client as they are written, JSON-escaped piece by piece
    (quotes, backslashes, newlines, non-ASCII), and join to the whole call's arguments."""
    value = 'Pa"ri\\s\nZürich </arg x'
    text = f"<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>{value}</arg_value>\n</tool_call>"
    parser = GlmToolCallParser(TOOLS)
    opened = text.index("<arg_value>") + len("<arg_value>")
    head = parser.feed(text[:opened + 4])  # the value's first characters, its end not yet written
    pieces = [e.text for e in head if isinstance(e, ArgumentsDelta)]
    assert pieces == ['{"city": "', 'Pa\\"r']
    events = head + [e for i in range(opened + 4, len(text)) for e in parser.feed(text[i])] + parser.finish()
    streamed = "".join(e.text for e in events if isinstance(e, ArgumentsDelta))
    assert streamed == parse_tool_calls(text, TOOLS)[1][0].arguments
    assert json.loads(streamed) == {"city": value}
    assert sum(isinstance(e, ArgumentsDelta) for e in events) > 10  # character by character, not one pair


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(TEXT)), max_size=40))
def test_streamed_pieces_join_to_the_whole(cuts):
    parser = GlmToolCallParser(TOOLS)
    events = []
    prev = 0
    for cut in sorted(set(cuts)):
        events += parser.feed(TEXT[prev:cut])
        prev = cut
    events += parser.feed(TEXT[prev:]) + parser.finish()
    content, calls = parse_tool_calls(TEXT, TOOLS)
    assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == content
    assert [e.name for e in events if isinstance(e, CallStart)] == [c.name for c in calls]
    for i, call in enumerate(calls):
        assert "".join(e.text for e in events if isinstance(e, ArgumentsDelta) and e.index == i) == call.arguments


def test_format_is_read_off_the_template():
    assert detect_tool_format(GLM46V_CHAT_TEMPLATE_PATH.read_text()) == "glm45"
    assert detect_tool_format(CHAT_TEMPLATE_PATH.read_text()) is None
    assert detect_tool_format("<tool_call><arg_key></arg_key><arg_value></arg_value></tool_call>") is None  # no tools
