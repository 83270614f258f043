"""StructuredSpec: what output a request constrains to (a JSON schema, any JSON, a regex, a choice, or an EBNF grammar)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

SpecKind = Literal["json_schema", "json_object", "regex", "choice", "grammar"]


class StructuredOutputError(ValueError):
    """A structured-output request glmv cannot honour (bad schema, too large, too slow to compile): an HTTP 400."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class StructuredSpec:
    """One constraint, in a canonical text form so equal requests share one compiled grammar (the cache key).

    source: the schema as JSON with sorted keys (json_schema), "" (json_object), the regex, the choices as a JSON
    list, or the EBNF grammar. strict: OpenAI's `strict` (no properties beyond the schema's)."""

    kind: SpecKind
    source: str
    strict: bool = False
    param: str = "response_format"  # the request field it came from, named in errors

    @classmethod
    def json_schema(cls, schema: Any, strict: bool, param: str) -> StructuredSpec:
        if not isinstance(schema, dict | bool):
            raise StructuredOutputError(f"{param}: a JSON schema must be an object, got {type(schema).__name__}.",
                                        param)
        return cls("json_schema", json.dumps(schema, sort_keys=True), strict, param)

    @classmethod
    def choice(cls, choices: Any, param: str) -> StructuredSpec:
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise StructuredOutputError(f"{param}: choice must be a non-empty list of strings.", param)
        return cls("choice", json.dumps(choices), False, param)
