"""IncrementalDetokenizer: token ids -> text deltas, UTF-8 safe, with stop strings cut out.

Decoding token by token breaks multi-byte characters (a CJK character can span two byte-level tokens), so each
step decodes a short window of recent tokens and only emits text once it no longer ends in U+FFFD. Stop strings
are matched on the accumulated text; text that could be the start of a stop string is held back until it is not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_REPLACEMENT = "\ufffd"


@dataclass
class DetokenizerState:
    output_ids: list[int] = field(default_factory=list)
    text: str = ""  # all text decoded so far (before stop-string truncation)
    emitted: int = 0  # characters of `text` already handed out
    prefix_offset: int = 0
    read_offset: int = 0
    stopped_by: str | None = None


class IncrementalDetokenizer:
    """One per sequence. `step(new_ids)` returns the text delta safe to show now; `.stop_string` is set when a
    stop string matched (the caller then finishes the sequence with reason STOP)."""

    def __init__(
        self,
        tokenizer: Any,
        prompt_ids: list[int],
        stop: list[str] | None = None,
        skip_special_tokens: bool = True,
        include_stop_str_in_output: bool = False,
        spaces_between_special_tokens: bool = True,
    ):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.skip_special_tokens = skip_special_tokens
        self.include_stop = include_stop_str_in_output
        self.state = DetokenizerState()
        # Seed the window with a few prompt tokens so the first output token decodes with its left context
        # (byte-level BPE decodes a leading space differently in isolation).
        tail = list(prompt_ids[-4:])
        self._context = tail
        self.state.prefix_offset = 0
        self.state.read_offset = len(tail)
        self._all_ids: list[int] = list(tail)
        self._hold = max((len(s) for s in self.stop), default=0) - 1
        self._fast_decode = _backend_decode(tokenizer)

    @property
    def stop_string(self) -> str | None:
        return self.state.stopped_by

    @property
    def output_text(self) -> str:
        return self.state.text

    def _decode(self, ids: list[int]) -> str:
        if self._fast_decode is not None:
            return self._fast_decode(ids, skip_special_tokens=self.skip_special_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens, clean_up_tokenization_spaces=False)

    def step(self, new_ids: list[int]) -> str:
        """Feed newly generated ids; return the text that may be shown now."""
        s = self.state
        for tid in new_ids:
            s.output_ids.append(tid)
            self._all_ids.append(tid)
            prefix_text = self._decode(self._all_ids[s.prefix_offset : s.read_offset])
            new_text = self._decode(self._all_ids[s.prefix_offset :])
            if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT):
                s.text += new_text[len(prefix_text) :]
                s.prefix_offset = s.read_offset
                s.read_offset = len(self._all_ids)
            elif new_text == prefix_text:
                # The token adds no text at all (a skipped special token, an id outside the tokenizer's vocabulary):
                # move the window past it, or every later step would decode an ever longer window.
                s.prefix_offset = s.read_offset
                s.read_offset = len(self._all_ids)
        return self._release(final=False)

    def flush(self) -> str:
        """At the end of a sequence: release whatever is held back (including a trailing partial character)."""
        s = self.state
        if s.read_offset < len(self._all_ids) and s.stopped_by is None:
            prefix_text = self._decode(self._all_ids[s.prefix_offset : s.read_offset])
            new_text = self._decode(self._all_ids[s.prefix_offset :])
            if len(new_text) > len(prefix_text):
                s.text += new_text[len(prefix_text) :]
            s.prefix_offset = s.read_offset = len(self._all_ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        s = self.state
        if s.stopped_by is not None:
            return ""
        if self.stop:
            # Search only the region that could hold a new match.
            start = max(0, s.emitted - self._hold)
            best: tuple[int, str] | None = None
            for stop in self.stop:
                idx = s.text.find(stop, start)
                if idx != -1 and (best is None or idx < best[0]):
                    best = (idx, stop)
            if best is not None:
                idx, stop = best
                end = idx + len(stop) if self.include_stop else idx
                s.stopped_by = stop
                s.text = s.text[: idx + len(stop)] if self.include_stop else s.text[:idx]
                delta = s.text[s.emitted : end]
                s.emitted = max(s.emitted, end)
                return delta
            if not final:
                limit = len(s.text)
                # Hold back a suffix that is a prefix of some stop string.
                for stop in self.stop:
                    for k in range(min(len(stop) - 1, len(s.text)), 0, -1):
                        if s.text.endswith(stop[:k]):
                            limit = min(limit, len(s.text) - k)
                            break
                delta = s.text[s.emitted : limit]
                s.emitted = max(s.emitted, limit)
                return delta
        delta = s.text[s.emitted :]
        s.emitted = len(s.text)
        return delta


def _backend_decode(tokenizer: Any):
    """The Rust tokenizer's decode when `tokenizer` is transformers' tokenizers-backed class that does not override
    decoding: the same text (clean-up off) at a fraction of the Python overhead, which matters at 100+ sequences a step."""
    try:
        from tokenizers import Tokenizer
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    backend = getattr(tokenizer, "_tokenizer", None)
    cls = type(tokenizer)
    if (isinstance(backend, Tokenizer) and isinstance(tokenizer, TokenizersBackend)
            and cls.decode is TokenizersBackend.decode and cls._decode is TokenizersBackend._decode):
        return backend.decode
    return None
