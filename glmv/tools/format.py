"""Which tool-call format a checkpoint's chat template teaches its model, read off the template text once at load.

A template that renders the request's `tools` and writes earlier calls as `<tool_call>NAME` with
`<arg_key>`/`<arg_value>` pairs (GLM-4.5, GLM-4.6, GLM-4.6V-Flash) teaches the GLM-4.5 format, and the model was
trained to write it on its own (`tool_choice: "auto"`). GLM-4.1V's template renders no tools: there is no format to
parse, and only forced calls (constrained decoding) work there.
"""

from __future__ import annotations

import enum
import re


class ToolFormat(enum.StrEnum):
    GLM45 = "glm45"  # <tool_call>NAME\n<arg_key>K</arg_key>\n<arg_value>V</arg_value>...</tool_call>


# The template must read the request's tools (as `tools`, in an expression or a test) ...
_READS_TOOLS = re.compile(r"(\{\{|\{%)[^}]*\btools\b")
# ... and write calls in the GLM-4.5 shape.
_GLM45_MARKERS = ("<tool_call>", "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>", "</tool_call>")


def detect_tool_format(template_text: str) -> ToolFormat | None:
    """The call format `template_text` renders, or None when it renders no tools."""
    if not _READS_TOOLS.search(template_text):
        return None
    if all(marker in template_text for marker in _GLM45_MARKERS):
        return ToolFormat.GLM45
    return None
