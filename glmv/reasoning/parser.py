"""ThinkSplitter: a small state machine over text deltas -> (reasoning delta, answer delta).

Skeleton version (the thinking issue hardens it): tags are held back while they may be incomplete.
"""

from __future__ import annotations

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


class ThinkSplitter:
    def __init__(self, in_think: bool = False):
        self.state = "think" if in_think else "start"
        self.buf = ""

    def feed(self, delta: str) -> tuple[str, str]:
        self.buf += delta
        reasoning, content = [], []
        while self.buf:
            idx = self.buf.find("<")
            if idx == -1:
                (reasoning if self.state in ("think",) else content).append(self.buf)
                self.buf = ""
                break
            if idx > 0:
                (reasoning if self.state == "think" else content).append(self.buf[:idx])
                self.buf = self.buf[idx:]
            tag = next((t for t in _TAGS if self.buf.startswith(t)), None)
            if tag is None:
                if any(t.startswith(self.buf) for t in _TAGS):
                    break  # maybe a partial tag: wait for more text
                (reasoning if self.state == "think" else content).append("<")
                self.buf = self.buf[1:]
                continue
            self.buf = self.buf[len(tag) :]
            if tag == "<think>":
                self.state = "think"
            elif tag == "</think>":
                self.state = "after_think"
            elif tag == "<answer>":
                self.state = "answer"
            else:
                self.state = "done"
        return "".join(reasoning), "".join(content)

    def finish(self) -> tuple[str, str]:
        rest, self.buf = self.buf, ""
        return (rest, "") if self.state == "think" else ("", rest)


def split_reasoning(text: str, in_think: bool = False) -> tuple[str, str]:
    s = ThinkSplitter(in_think)
    r1, c1 = s.feed(text)
    r2, c2 = s.finish()
    return (r1 + r2).strip(), (c1 + c2).strip()
