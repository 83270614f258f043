"""ThinkSplitter: GLM-4.1V output text, whole or as arbitrary deltas -> (reasoning, answer), tags removed.

The model writes `<think>reasoning</think><answer>answer</answer>`. Three small stages run per request, in order:

1. Routing (`ThinkSplitter`): the four structural tags move a state machine and are dropped; text goes to the
   reasoning channel inside a thought and to the answer channel elsewhere. A suffix that may still become a
   structural tag is held back until the next delta decides it.
2. Marker purge (`_MarkerPurge`, one per channel): every remaining `<think>`-family tag and the grounding markers
   `<|begin_of_box|>` / `<|end_of_box|>` are deleted, repeatedly, so no tag survives even one spelled around a
   removed tag; the `[[x1,y1,x2,y2]]` text between box markers stays (see boxes.py for structured boxes).
3. Whitespace (`_Trim`, one per channel): leading and trailing whitespace of the whole channel is dropped; trailing
   whitespace is held back until later text shows it is interior.

Each stage decides from the text alone, never from where the delta boundaries fall, so the streamed pieces joined
equal the whole-text split for every way of cutting the text (tests/unit/test_reasoning_properties.py checks this).
The rules for odd outputs are listed in docs/THINKING.md.
"""

from __future__ import annotations

import enum

THINK_START = "<think>"
THINK_END = "</think>"
ANSWER_START = "<answer>"
ANSWER_END = "</answer>"
BOX_START = "<|begin_of_box|>"
BOX_END = "<|end_of_box|>"

STRUCTURE_TAGS: tuple[str, ...] = (THINK_START, THINK_END, ANSWER_START, ANSWER_END)
BOX_MARKERS: tuple[str, ...] = (BOX_START, BOX_END)
# Every string that never appears in reasoning or content.
HIDDEN_MARKERS: tuple[str, ...] = STRUCTURE_TAGS + BOX_MARKERS

_STRUCTURE_PREFIXES = frozenset(t[:k] for t in STRUCTURE_TAGS for k in range(1, len(t)))
_MARKER_PREFIXES = frozenset(t[:k] for t in HIDDEN_MARKERS for k in range(1, len(t)))
_LONGEST_MARKER = max(len(t) for t in HIDDEN_MARKERS)
_LONGEST_TAG = max(len(t) for t in STRUCTURE_TAGS)


class SplitState(enum.StrEnum):
    """Where the splitter is in `<think>..</think><answer>..</answer>`."""

    START = "start"  # nothing structural seen yet: text is answer (a model or template without thinking)
    THINK = "think"  # inside the thought: text is reasoning
    AFTER_THINK = "after_think"  # after </think>, before <answer>: text is answer (some outputs omit <answer>)
    ANSWER = "answer"  # inside <answer>: text is answer
    DONE = "done"  # after </answer>: text is dropped (the answer is closed; what follows is not part of it)


# Transitions for each structural tag; a tag not listed for a state is dropped and the state kept.
_TRANSITIONS: dict[tuple[SplitState, str], SplitState] = {
    (SplitState.START, THINK_START): SplitState.THINK,
    (SplitState.START, THINK_END): SplitState.AFTER_THINK,
    (SplitState.START, ANSWER_START): SplitState.ANSWER,
    (SplitState.THINK, THINK_END): SplitState.AFTER_THINK,
    (SplitState.THINK, ANSWER_START): SplitState.ANSWER,  # the model skipped </think>: the thought is over
    (SplitState.AFTER_THINK, THINK_START): SplitState.THINK,  # a second thought goes to reasoning too
    (SplitState.AFTER_THINK, ANSWER_START): SplitState.ANSWER,
}


def _next_state(state: SplitState, tag: str) -> SplitState:
    if tag == ANSWER_END:
        return SplitState.DONE
    return _TRANSITIONS.get((state, tag), state)


class _MarkerPurge:
    """Deletes hidden markers from one channel's text, repeatedly, as a stream.

    Works like the stack algorithm for removing a pattern until none is left: characters are pushed, and a marker
    completed at the top is popped. A suffix that a later completion could still pop (a run of proper marker
    prefixes, e.g. `<thi` or `<th<thi`) is held; everything before it is final and released.
    """

    def __init__(self) -> None:
        self._stack: list[str] = []

    def push(self, text: str) -> str:
        stack = self._stack
        for ch in text:
            stack.append(ch)
            if ch == ">":
                for marker in HIDDEN_MARKERS:
                    n = len(marker)
                    if len(stack) >= n and "".join(stack[-n:]) == marker:
                        del stack[-n:]
                        break
        keep = _live_suffix_start(stack)
        released = "".join(stack[:keep])
        del stack[:keep]
        return released

    def flush(self) -> str:
        rest = "".join(self._stack)
        self._stack.clear()
        return rest


def _live_suffix_start(chars: list[str]) -> int:
    """Index where the longest suffix made of proper marker prefixes begins (len(chars) if there is none).

    Only such a suffix can still lose characters to a marker completed later. Each piece starts with "<" and is
    shorter than the longest marker, so the scan stops at the first gap that long.
    """
    n = len(chars)
    live = [False] * (n + 1)
    live[n] = True
    best = n
    j = n - 1
    while j >= 0 and best - j < _LONGEST_MARKER:
        if chars[j] == "<":
            for length in range(1, min(_LONGEST_MARKER - 1, n - j) + 1):
                if live[j + length] and "".join(chars[j : j + length]) in _MARKER_PREFIXES:
                    live[j] = True
                    best = j
                    break
        j -= 1
    return best


class _Trim:
    """Strips leading and trailing whitespace of one channel's whole text, as a stream."""

    def __init__(self) -> None:
        self._started = False
        self._pending_ws = ""

    def push(self, text: str) -> str:
        if not text:
            return ""
        if not self._started:
            text = text.lstrip()
            if not text:
                return ""
            self._started = True
        body = text.rstrip()
        if not body:  # whitespace only: may be interior, may be trailing
            self._pending_ws += text
            return ""
        out = self._pending_ws + body
        self._pending_ws = text[len(body) :]
        return out

    def flush(self) -> str:
        self._pending_ws = ""  # trailing whitespace of the channel
        return ""


class _Channel:
    """One output channel (reasoning or answer): marker purge, then whitespace trim."""

    def __init__(self) -> None:
        self._purge = _MarkerPurge()
        self._trim = _Trim()

    def push(self, text: str) -> str:
        return self._trim.push(self._purge.push(text)) if text else ""

    def flush(self) -> str:
        out = self._trim.push(self._purge.flush())
        return out + self._trim.flush()


class ThinkSplitter:
    """Streams generated text into (reasoning delta, answer delta).

    start: where the prompt left the output: True (or SplitState.THINK) when the prompt already opened the thought
    (it ends with `<think>`), so text starts as reasoning; a SplitState from `prompt_split_state` for any prefill.
    Call `feed(delta)` for each text delta and `finish()` once at the end; the pieces joined equal
    `split_reasoning(whole_text)`. No piece ever holds a tag, part of a tag, or a box marker.
    """

    def __init__(self, start: bool | SplitState = False):
        if isinstance(start, SplitState):
            self.state = start
        else:
            self.state = SplitState.THINK if start else SplitState.START
        self._buf = ""
        self._reasoning = _Channel()
        self._answer = _Channel()

    @property
    def in_reasoning(self) -> bool:
        return self.state is SplitState.THINK

    def feed(self, delta: str) -> tuple[str, str]:
        """Route one delta; return the (reasoning, answer) text that is final now."""
        reasoning: list[str] = []
        answer: list[str] = []
        buf = self._buf + delta
        pos = 0
        while pos < len(buf):
            lt = buf.find("<", pos)
            end = len(buf) if lt == -1 else lt
            if end > pos:
                self._route(buf[pos:end], reasoning, answer)
                pos = end
            if lt == -1:
                break
            tag = next((t for t in STRUCTURE_TAGS if buf.startswith(t, lt)), None)
            if tag is not None:
                self.state = _next_state(self.state, tag)
                pos = lt + len(tag)
            elif len(buf) - lt < _LONGEST_TAG and buf[lt:] in _STRUCTURE_PREFIXES:
                break  # may become a tag: wait for the next delta
            else:
                self._route("<", reasoning, answer)
                pos = lt + 1
        self._buf = buf[pos:]
        return "".join(reasoning), "".join(answer)

    def finish(self) -> tuple[str, str]:
        """End of the output: release held text. An unfinished tag at the very end is plain text."""
        reasoning: list[str] = []
        answer: list[str] = []
        rest, self._buf = self._buf, ""
        self._route(rest, reasoning, answer)
        reasoning.append(self._reasoning.flush())
        answer.append(self._answer.flush())
        return "".join(reasoning), "".join(answer)

    def _route(self, text: str, reasoning: list[str], answer: list[str]) -> None:
        if not text or self.state is SplitState.DONE:
            return
        if self.state is SplitState.THINK:
            reasoning.append(self._reasoning.push(text))
        else:
            answer.append(self._answer.push(text))


def split_reasoning(text: str, start: bool | SplitState = False) -> tuple[str, str]:
    """Whole-text split: (reasoning, answer), exactly what ThinkSplitter streams for the same text."""
    splitter = ThinkSplitter(start)
    r1, c1 = splitter.feed(text)
    r2, c2 = splitter.finish()
    return r1 + r2, c1 + c2


def prompt_opens_thought(prompt_text: str | None) -> bool:
    """True when the rendered prompt leaves a thought open (e.g. it ends with `<think>` or `<think>\\n`), so the
    output starts inside the reasoning. Looks only after the last `<|assistant|>` when there is one."""
    if not prompt_text:
        return False
    tail = prompt_text.rsplit("<|assistant|>", 1)[-1]
    return tail.rfind(THINK_START) > tail.rfind(THINK_END)


def prompt_split_state(prompt_text: str | None) -> SplitState:
    """The state the prompt's last assistant turn leaves the output in, so the splitter starts where a prefill
    (`continue_final_message`) stopped: a prefilled `<think>...` continues as reasoning, `<think></think><answer>`
    (how thinking is skipped on GLM-4.1V) as answer. A prefill that already closed the answer (`</answer>`) is
    continued as answer rather than dropped: the client asked for more of it."""
    if not prompt_text:
        return SplitState.START
    splitter = ThinkSplitter()
    splitter.feed(prompt_text.rsplit("<|assistant|>", 1)[-1])
    return SplitState.ANSWER if splitter.state is SplitState.DONE else splitter.state
