"""Property-based API fuzzing with schemathesis against /openapi.json of a live server: no input, valid by the
schema or not, gives a 5xx, and every error is in OpenAI's shape.

Bounded: a few examples per operation and mode, a short context (--max-model-len 48) so that any generation is short,
and n clamped to 3 before sending (n up to 128 is valid and would only make this test slow, not stronger). Runs the
hypothesis strategies schemathesis builds for each operation (its Python API), in positive and negative modes.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from tests.server.conftest import ENGINES, live_server

MAX_N = 3
EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 30}


@pytest.fixture(scope="module", params=ENGINES)
def fuzz_server(request, tiny_model_dir):
    with live_server(tiny_model_dir, request.param, "--max-model-len", "48", "--served-model-name", "tiny",
                     "--disable-log-requests") as s:
        yield s


def check(case, seen: Counter) -> None:
    if isinstance(case.body, dict) and isinstance(case.body.get("n"), int) and case.body["n"] > MAX_N:
        case.body["n"] = MAX_N
    response = case.call(timeout=60)
    seen[(case.method, case.path, response.status_code)] += 1
    where = f"{case.method} {case.formatted_path} body={str(case.body)[:300]!r}"
    assert response.status_code < 500, f"{where} -> {response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, (where, body)
        assert set(body["error"]) == {"message", "type", "param", "code"}, (where, body)


def has_inputs(op) -> bool:
    return bool(len(op.body) or len(op.path_parameters) or len(op.query) or len(op.headers))


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=lambda m: m.value)
def test_no_server_errors(fuzz_server, mode):
    schema = schemathesis.openapi.from_url(fuzz_server.base_url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"}
    seen: Counter = Counter()
    unsatisfiable: list[str] = []
    for op in operations:
        if mode is GenerationMode.NEGATIVE and not has_inputs(op):
            continue  # nothing to break in a request without parameters or body

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES[mode], deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            check(case, seen)

        try:
            run()
        except Unsatisfiable:  # e.g. a path parameter any string satisfies: no invalid request exists
            unsatisfiable.append(op.path)
    print(sorted(seen.items()))
    generation = {"/v1/chat/completions", "/v1/completions"}
    assert not generation & set(unsatisfiable)
    if mode is GenerationMode.POSITIVE:  # the fuzzer got past validation into the engine
        assert any(path in generation and status == 200 for (_m, path, status) in seen), seen
