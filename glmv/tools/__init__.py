"""Tool calls in the model's own words: which call format a chat template teaches, and a streaming parser for it."""

from glmv.tools.format import ToolFormat, detect_tool_format
from glmv.tools.glm45 import ArgumentsDelta, CallStart, ContentDelta, GlmToolCallParser, ParsedCall, parse_tool_calls

__all__ = ["ArgumentsDelta", "CallStart", "ContentDelta", "GlmToolCallParser", "ParsedCall", "ToolFormat",
           "detect_tool_format", "parse_tool_calls"]
