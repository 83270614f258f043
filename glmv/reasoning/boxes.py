"""Grounding boxes in GLM-4.1V answers: `[[x1,y1,x2,y2]]` in 0-1000 coordinates -> typed Box values.

The model writes boxes as `<|begin_of_box|>[[x1,y1,x2,y2], ...]<|end_of_box|>`. The box markers are special tokens,
so with the default `skip_special_tokens` they never reach the text, and the splitter removes them when they do;
what the user reads is the bracketed coordinates. The model also boxes plain final answers
(`<|begin_of_box|>42<|end_of_box|>`), which hold no coordinates and yield no Box.

`extract_boxes` therefore reads boxes from either form: inside box markers when the text has them (any `[a,b,c,d]`
there), otherwise from GLM's double-bracket lists (`[[a,b,c,d]]`, `[[a,b,c,d],[e,f,g,h]]`) anywhere in the text.
A lone `[1, 2, 3, 4]` outside markers is not a box: answers quote lists too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from glmv.reasoning.parser import BOX_END, BOX_START

COORD_MAX = 1000  # GLM's grounding coordinates are normalized to 0..1000 of the image's width and height

_NUM = r"\s*(\d{1,4})\s*"
_QUAD = re.compile(r"\[" + ",".join([_NUM] * 4) + r"\]")
# A double-bracket list of quads: "[[a,b,c,d]]" or "[[a,b,c,d], [e,f,g,h]]".
_QUAD_LIST = re.compile(r"\[\s*" + _QUAD.pattern + r"(?:\s*,\s*" + _QUAD.pattern + r")*\s*\]")
# A box region ends at its end marker, or at the end of a truncated output.
_BOXED = re.compile(re.escape(BOX_START) + r"(.*?)(?:" + re.escape(BOX_END) + r"|\Z)", re.DOTALL)


@dataclass(frozen=True)
class Box:
    """One box in the model's 0-1000 coordinates: (x1, y1) top-left, (x2, y2) bottom-right, as written."""

    x1: int
    y1: int
    x2: int
    y2: int

    def to_pixels(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The box in pixels of an image of this size (the coordinates are fractions of 1000)."""
        return (self.x1 * width / COORD_MAX, self.y1 * height / COORD_MAX,
                self.x2 * width / COORD_MAX, self.y2 * height / COORD_MAX)

    def as_list(self) -> list[int]:
        return [self.x1, self.y1, self.x2, self.y2]


def _quads(text: str) -> list[Box]:
    boxes = []
    for m in _QUAD.finditer(text):
        values = [int(v) for v in m.groups()]
        if all(0 <= v <= COORD_MAX for v in values):
            boxes.append(Box(*values))
    return boxes


def extract_boxes(text: str) -> list[Box]:
    """All grounding boxes in `text` (raw model output or the answer content), in order of appearance."""
    if BOX_START in text:
        return [box for m in _BOXED.finditer(text) for box in _quads(m.group(1))]
    return [box for m in _QUAD_LIST.finditer(text) for box in _quads(m.group(0))]
