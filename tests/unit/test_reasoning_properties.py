"""Property tests: for any text and any cut into deltas, the streamed split equals the whole-text split, and it
equals an independent regex-based oracle; no delta ever holds a tag, part of a tag, or a box marker."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glmv.reasoning.parser import HIDDEN_MARKERS, STRUCTURE_TAGS, ThinkSplitter, split_reasoning

FRAGMENTS = [
    *HIDDEN_MARKERS,
    # partial tags and tails of tags, so tags get spelled across fragments and around removed markers
    "<", "</", "<t", "<thi", "<think", "</thi", "</think", "<ans", "<answer", "</answer", "<|", "<|begin_of",
    "<|end_of_box|", "nk>", "ink>", "swer>", "_box|>", ">", "think>", "answer>", "|>", "<<", "<>",
    # text the model writes
    "Let me think.", "The answer is", " 42", "a < b", "x > y", "[[120,340,560,780]]", "[[1, 2, 3, 4], [5, 6, 7, 8]]",
    "<tag>", "<thinking>", '"<think>" in quotes', "猫", "é", "🙂", "答案", "\u200b",
    # whitespace the model writes around tags
    "\n", "\n\n", " ", "\t", "\u3000", " \n ",
]

texts = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)
raw_texts = st.text(alphabet=st.sampled_from(list("<>/|_thinkaswerbgofx \n")), max_size=80)

_STRUCTURE_RE = re.compile("|".join(re.escape(t) for t in STRUCTURE_TAGS))
_MARKER_RE = re.compile("|".join(re.escape(t) for t in HIDDEN_MARKERS))


def oracle(text: str, in_think: bool) -> tuple[str, str]:
    """An independent whole-text implementation of docs/THINKING.md's rules."""
    state = "think" if in_think else "start"
    reasoning, answer = [], []
    pos = 0
    for m in [*_STRUCTURE_RE.finditer(text), None]:
        piece = text[pos : m.start() if m else len(text)]
        if state == "think":
            reasoning.append(piece)
        elif state != "done":
            answer.append(piece)
        if m is None:
            break
        pos = m.end()
        tag = m.group(0)
        if tag == "</answer>":
            state = "done"
        elif state == "start":
            state = {"<think>": "think", "</think>": "after", "<answer>": "answer"}[tag]
        elif state == "think" and tag in ("</think>", "<answer>"):
            state = "after" if tag == "</think>" else "answer"
        elif state == "after" and tag in ("<think>", "<answer>"):
            state = "think" if tag == "<think>" else "answer"

    def clean(s: str) -> str:
        while True:
            t = _MARKER_RE.sub("", s)
            if t == s:
                return s.strip()
            s = t

    return clean("".join(reasoning)), clean("".join(answer))


def cut(text: str, points: list[int]) -> list[str]:
    bounds = sorted({0, len(text), *(p % (len(text) + 1) for p in points)})
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def stream(deltas: list[str], in_think: bool) -> list[tuple[str, str]]:
    splitter = ThinkSplitter(in_think)
    return [splitter.feed(d) for d in deltas] + [splitter.finish()]


def joined(pieces: list[tuple[str, str]]) -> tuple[str, str]:
    return "".join(r for r, _ in pieces), "".join(c for _, c in pieces)


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(texts, st.lists(st.integers(min_value=0, max_value=10_000), max_size=30), st.booleans())
def test_streamed_pieces_join_to_the_whole_split(text, points, in_think):
    pieces = stream(cut(text, points), in_think)
    assert joined(pieces) == split_reasoning(text, in_think)


@SETTINGS
@given(texts, st.booleans())
def test_whole_split_matches_the_oracle(text, in_think):
    assert split_reasoning(text, in_think) == oracle(text, in_think)


@SETTINGS
@given(raw_texts, st.lists(st.integers(min_value=0, max_value=10_000), max_size=30), st.booleans())
def test_random_characters_character_by_character(text, points, in_think):
    """Text over the tags' own alphabet, streamed in random cuts and one character at a time."""
    whole = split_reasoning(text, in_think)
    assert whole == oracle(text, in_think)
    assert joined(stream(cut(text, points), in_think)) == whole
    assert joined(stream(list(text), in_think)) == whole


@SETTINGS
@given(texts, st.lists(st.integers(min_value=0, max_value=10_000), max_size=30), st.booleans())
def test_no_delta_and_no_joined_channel_holds_a_tag(text, points, in_think):
    pieces = stream(cut(text, points), in_think)
    for r, c in pieces:
        for marker in HIDDEN_MARKERS:
            assert marker not in r and marker not in c
    for channel in joined(pieces):
        for marker in HIDDEN_MARKERS:
            assert marker not in channel


@SETTINGS
@given(
    st.lists(st.sampled_from(["Let me see", " step", "猫", "\n", " ", "[[1,2,3,4]]", "a=b", "x"]), max_size=8).map("".join),
    st.lists(st.sampled_from(["The answer", " is", " 42", "\n", "🙂", "[[1,2,3,4]]", "."]), max_size=8).map("".join),
    st.sampled_from(["<think>{r}</think><answer>{a}</answer>", "<think>\n{r}\n</think>\n<answer>\n{a}\n</answer>",
                     "<think>{r}</think>{a}", "{r}</think><answer>{a}", "<think>{r}</think><answer>{a}"]),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    st.booleans(),
)
def test_well_formed_outputs_never_leak_a_tag_character(reasoning, answer, shape, points, box):
    """Real-shaped outputs whose bodies have no '<' or '>': no delta holds either character, whatever the cuts,
    so no half tag can reach a client; and the split gives back the bodies."""
    if box:
        answer = f"<|begin_of_box|>{answer}<|end_of_box|>"
    text = shape.format(r=reasoning, a=answer)
    in_think = shape.startswith("{r}")
    pieces = stream(cut(text, points), in_think)
    for r, c in pieces:
        assert "<" not in r + c and ">" not in r + c
    expected_answer = answer.replace("<|begin_of_box|>", "").replace("<|end_of_box|>", "")
    assert joined(pieces) == (reasoning.strip(), expected_answer.strip())
