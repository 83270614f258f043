"""Grows a small trained byte-level BPE to the size of the real GLM vocabulary (151,329 ordinary tokens).

The tiny corpus trains only a few hundred merges, so a `full`-preset tokenizer would hold ~650 tokens inside a
151,552-row lm_head. That distorts every host cost that scales with the vocabulary the tokenizer really has:
xgrammar treats each id past the tokenizer as a special token and scans that list on every accepted token (37 us
a token at 147k padded ids, 3 us with a full vocabulary), while its mask fill depends on how many tokens hold a
quote or a backslash. So the `full` preset gets a vocabulary of the real size with the real mix of word pieces
and short punctuation runs: each new token is an existing one joined to a short piece of the same kind (letters
and CJK, punctuation), with the merge that makes it, so the tokenizer encodes and decodes as any BPE does.
Deterministic (a seeded generator), about a second.
"""

from __future__ import annotations

import json
import random
import re
from functools import cache

# A new token is letters with another letter piece (97 in 100) or punctuation with punctuation, at most this long
# (in byte-level characters): word pieces as long as a long English subword, punctuation runs as `"]},` is.
WORD_SHARE = 0.97
MAX_WORD_CHARS = 12
MAX_PUNCT_CHARS = 4
_KINDS = (re.compile(r" ?[^\W\d_]+"), re.compile(r" ?[!-/:-@\[-`{-~]+"))


@cache
def _byte_of_char() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's table, which `tokenizers`' ByteLevel uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _kind(piece: str) -> int | None:
    """0 for a word piece, 1 for a punctuation run, None for anything else (digits, partial UTF-8, spaces)."""
    table = _byte_of_char()
    try:
        text = bytes(table[c] for c in piece).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return None
    for kind, pattern in enumerate(_KINDS):
        if pattern.fullmatch(text):
            return kind
    return None


def grow_bpe(tokenizer_json: str, size: int, seed: int = 0) -> str:
    """`tokenizer_json` (a BPE model with no added tokens yet) with merges appended until its vocabulary holds
    `size` tokens. Returns the new JSON."""
    data = json.loads(tokenizer_json)
    vocab: dict[str, int] = data["model"]["vocab"]
    merges: list = data["model"]["merges"]
    grown: tuple[list[str], list[str]] = ([], [])
    for piece in vocab:
        kind = _kind(piece)
        if kind is not None:
            grown[kind].append(piece)
    tails = tuple([p for p in pieces if not p.startswith("Ġ") and len(p) <= 3] for pieces in grown)
    rng = random.Random(seed)
    next_id = max(vocab.values()) + 1
    while len(vocab) < size:
        kind = 0 if rng.random() < WORD_SHARE else 1
        head, tail = rng.choice(grown[kind]), rng.choice(tails[kind])
        token = head + tail
        if len(token) > (MAX_WORD_CHARS, MAX_PUNCT_CHARS)[kind] or token in vocab:
            continue
        vocab[token] = next_id
        next_id += 1
        merges.append([head, tail])
        grown[kind].append(token)
    return json.dumps(data, ensure_ascii=False)
