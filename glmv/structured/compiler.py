"""GrammarCompiler: a StructuredSpec -> an xgrammar grammar for glmv's tokenizer, bounded, off the event loop, cached.

A hostile request must cost a 400, never a hang: before xgrammar sees a schema it is checked for size, nesting depth
and enum sizes (CompileLimits), and compilation runs in a small thread pool of its own under a time limit. Compiled
grammars live in a bounded LRU keyed by the canonical spec, so a schema sent by every request is compiled once.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import xgrammar as xgr

from glmv.lru import LruCache
from glmv.structured.spec import StructuredOutputError, StructuredSpec


@dataclass(frozen=True)
class CompileLimits:
    max_source_chars: int = 64_000  # schema / regex / grammar text
    max_depth: int = 32  # nesting of a JSON schema's objects and lists
    max_enum_values: int = 2_048  # all `enum` values and `choice` strings of one request together
    timeout_s: float = 10.0  # compile time before the request is refused
    cache_entries: int = 256


@dataclass(frozen=True)
class CompiledStructure:
    """A compiled grammar and the tokenizer facts its sequences need: the output opens with `think_start_id`
    (`<think>`), `think_end_id` (`</think>`) ends the free thought, the grammar starts after `answer_open_id`
    (`<answer>`) and `stop_token_ids` end the answer."""

    spec: StructuredSpec
    grammar: xgr.CompiledGrammar
    think_start_id: int
    think_end_id: int
    answer_open_id: int
    answer_close_id: int
    stop_token_ids: tuple[int, ...]
    vocab_size: int
    # The bitmask row ANDed into the grammar's: the model's stop ids other than the answer's end are never allowed
    # and, for JSON kinds, neither are tokens with raw control characters (xgrammar's JSON strings admit them, JSON
    # does not). None: the grammar's mask alone.
    json_safe: torch.Tensor | None = None


def _clear(row: torch.Tensor, token: int) -> None:
    word, bit = divmod(token, 32)
    row[word] &= ~(1 << bit) if bit < 31 else 0x7FFFFFFF


def _single_id(tokenizer: Any, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"structured outputs need {text!r} as one token of the tokenizer; it encodes to {ids}.")
    return int(ids[0])


def _check_schema_shape(schema: Any, limits: CompileLimits, param: str) -> None:
    """Depth and enum-size bounds, walked iteratively (a deep schema must not overflow our own stack either)."""
    enum_values = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limits.max_depth:
            raise StructuredOutputError(f"{param}: the schema nests deeper than {limits.max_depth} levels.", param)
        if isinstance(node, dict):
            values = node.get("enum")
            if isinstance(values, list):
                enum_values += len(values)
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
        if enum_values > limits.max_enum_values:
            raise StructuredOutputError(
                f"{param}: the schema's enums list more than {limits.max_enum_values} values in all.", param)


def _choice_ebnf(choices: list[str]) -> str:
    """One alternative per choice; JSON's string escapes are also EBNF's."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


class GrammarCompiler:
    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int],
                 limits: CompileLimits | None = None):
        self.limits = limits or CompileLimits()
        self.think_start_id = _single_id(tokenizer, "<think>")
        self.think_end_id = _single_id(tokenizer, "</think>")
        self.answer_open_id = _single_id(tokenizer, "<answer>")
        self.answer_close_id = _single_id(tokenizer, "</answer>")
        # Where the grammar ends, only the answer's end may follow: `</answer>` when it is a stop id (an EOS in
        # GLM's generation_config), else the model's stop ids; the engine's stop rule then ends the sequence.
        stops = [self.answer_close_id] if self.answer_close_id in stop_token_ids else list(stop_token_ids)
        if not stops:
            raise ValueError("structured outputs need a stop token id to end the answer; the model has none.")
        self.stop_token_ids = tuple(stops)
        self.vocab_size = vocab_size
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stops)
        self._xgr = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        # The model's other stop ids (`<|user|>`, `<|observation|>`, ...) decode to text a grammar may admit (inside
        # a JSON string, say), and the engine's stop rule would end the answer on them half-written: no kind may
        # pick them. JSON kinds also drop tokens with raw control characters.
        self._no_foreign_stops = xgr.allocate_token_bitmask(1, vocab_size)[0]
        for token in stop_token_ids:
            if token not in stops and 0 <= token < vocab_size:
                _clear(self._no_foreign_stops, token)
        self._json_safe = self._no_foreign_stops.clone()
        for token, text in enumerate(info.decoded_vocab):
            if any(b < 0x20 for b in text) and token not in stops:
                _clear(self._json_safe, token)
        self._cache: LruCache[StructuredSpec, CompiledStructure] = LruCache(self.limits.cache_entries)
        self._count_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="glmv-grammar")
        self.compiles = 0  # grammars actually compiled (cache misses), for tests and metrics

    # ---- entry points ----
    async def compile_async(self, spec: StructuredSpec) -> CompiledStructure:
        """Compile (or fetch from the cache) without blocking the event loop; over the time limit: a 400."""
        cached = self._cached(spec)
        if cached is not None:
            return cached
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pool, self.compile, spec), self.limits.timeout_s)
        except TimeoutError:
            raise StructuredOutputError(
                f"{spec.param}: the grammar did not compile within {self.limits.timeout_s:g} s; simplify it.",
                spec.param) from None

    def compile(self, spec: StructuredSpec) -> CompiledStructure:
        cached = self._cached(spec)
        if cached is not None:
            return cached
        grammar = self._compile(spec)
        out = CompiledStructure(spec, grammar, self.think_start_id, self.think_end_id, self.answer_open_id, self.answer_close_id,
                                self.stop_token_ids, self.vocab_size,
                                self._json_safe if spec.kind in ("json_schema", "json_object")
                                else self._no_foreign_stops)
        with self._count_lock:
            self.compiles += 1
        self._cache.put(spec, out)
        return out

    def _cached(self, spec: StructuredSpec) -> CompiledStructure | None:
        return self._cache.get(spec)

    # ---- compiling ----
    def _compile(self, spec: StructuredSpec) -> xgr.CompiledGrammar:
        limits, param = self.limits, spec.param
        if len(spec.source) > limits.max_source_chars:
            raise StructuredOutputError(
                f"{param}: the {spec.kind} is {len(spec.source)} characters; at most {limits.max_source_chars}.", param)
        try:
            if spec.kind == "json_object":
                return self._xgr.compile_builtin_json_grammar()
            if spec.kind == "json_schema":
                schema = json.loads(spec.source)
                _check_schema_shape(schema, limits, param)
                # Compact JSON: free whitespace would let a weak model pad forever instead of answering.
                return self._xgr.compile_json_schema(spec.source, any_whitespace=False, strict_mode=spec.strict)
            if spec.kind == "regex":
                return self._xgr.compile_regex(spec.source)
            if spec.kind == "choice":
                choices = json.loads(spec.source)
                if len(choices) > limits.max_enum_values:
                    raise StructuredOutputError(f"{param}: more than {limits.max_enum_values} choices.", param)
                return self._xgr.compile_grammar(_choice_ebnf(choices))
            if spec.kind == "grammar":
                return self._xgr.compile_grammar(spec.source)
        except StructuredOutputError:
            raise
        except (RuntimeError, ValueError, TypeError) as exc:  # xgrammar reports bad input as these
            first = str(exc).strip().splitlines()
            raise StructuredOutputError(f"{param}: the {spec.kind} does not compile: {first[0] if first else exc}",
                                        param) from None
        raise StructuredOutputError(f"{param}: unknown structured output kind {spec.kind!r}.", param)
