"""Structured outputs through HTTP with the real openai SDK on the tiny random model: every answer must validate.

The tiny model's weights are random, so any valid answer comes from the grammar, not the model. Each schema of the
table runs twice: with the thought closed by the model itself (a logit_bias on `</think>` makes it close soon; the
mask removes the bias inside the answer) and with a thinking budget that forces `</think><answer>`. Strings, arrays
and numbers are bounded so that a random walk through the grammar ends within max_tokens.
"""

from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import openai
import pytest

from tests.server.conftest import module_server, think_end_id

MESSAGES = [{"role": "user", "content": "Answer in JSON."}]
MAX_TOKENS = 200
S = {"type": "string", "maxLength": 6}
B = {"type": "integer", "minimum": -50, "maximum": 50}


def obj(props: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            "additionalProperties": False}


SCHEMAS: list[tuple[str, dict]] = [
    ("string", S),
    ("bounded_int", B),
    ("bounded_number", {"type": "number", "minimum": 0, "maximum": 1}),
    ("boolean", {"type": "boolean"}),
    ("null", {"type": "null"}),
    ("enum_str", {"enum": ["red", "green", "blue"]}),
    ("enum_mixed", {"enum": [1, "two", None, True]}),
    ("const", {"const": "fixed"}),
    ("flat_object", obj({"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}})),
    ("optional_props", obj({"a": S, "b": B}, required=["a"])),
    ("nested_object", obj({"user": obj({"id": B, "tag": S}), "ok": {"type": "boolean"}})),
    ("deep_nesting", obj({"a": obj({"b": obj({"c": obj({"d": B})})})})),
    ("array_ints", {"type": "array", "items": B, "maxItems": 3}),
    ("array_min_max", {"type": "array", "items": {"enum": ["x", "y"]}, "minItems": 2, "maxItems": 4}),
    ("array_objects", {"type": "array", "items": obj({"k": S}), "maxItems": 2}),
    ("tuple", {"type": "array", "prefixItems": [B, S], "items": False}),
    ("anyof_scalar", {"anyOf": [B, {"type": "boolean"}]}),
    ("anyof_objects", {"anyOf": [obj({"cat": S}), obj({"dog": B})]}),
    ("oneof_enum", {"oneOf": [{"enum": ["a"]}, {"enum": ["b"]}]}),
    ("nullable", {"anyOf": [S, {"type": "null"}]}),
    ("pattern_digits", {"type": "string", "pattern": "^[0-9]{3}-[0-9]{2}$"}),
    ("pattern_word", {"type": "string", "pattern": "^[a-z]{2,5}$"}),
    ("min_length", {"type": "string", "minLength": 2, "maxLength": 4}),
    ("date_like", {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"}),
    ("exclusive_bounds", {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10}),
    ("ref_defs", {"$defs": {"p": obj({"x": B})}, "type": "object",
                  "properties": {"p": {"$ref": "#/$defs/p"}}, "required": ["p"], "additionalProperties": False}),
    ("enum_in_object", obj({"size": {"enum": ["S", "M", "L"]}, "count": B})),
    ("array_of_arrays", {"type": "array", "items": {"type": "array", "items": B, "maxItems": 2}, "maxItems": 2}),
    ("mixed_record", obj({"id": {"type": "string", "pattern": "^[A-Z][0-9]{2}$"}, "score": B,
                          "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
                          "meta": {"anyOf": [{"type": "null"}, obj({"v": {"type": "boolean"}})]}})),
    ("bounded_array_len", {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 1}),
]


server = module_server("glmv", "--served-model-name", "tiny", "--max-model-len", "512", "--max-num-seqs", "64")


def close_soon(server) -> dict:
    """extra_body that makes the model close its own thought within a few tokens."""
    return {"logit_bias": {str(think_end_id(server)): 3.0}}


def answer(message) -> dict | list | str | int | float | bool | None:
    assert message.content is not None, "no answer"
    return json.loads(message.content)


@pytest.mark.parametrize("thinking", ["model_closes", "budget"])
def test_schema_table_validates(server, thinking):
    client = server.async_client()

    async def one(name: str, schema: dict, seed: int):
        extra = close_soon(server) if thinking == "model_closes" else {"thinking_budget": 3}
        r = await client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=1.0, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}},
            extra_body=extra)
        return name, schema, r.choices[0]

    async def all_of_them():
        return await asyncio.gather(*(one(n, s, i) for i, (n, s) in enumerate(SCHEMAS)))

    failures = []
    for name, schema, choice in asyncio.run(all_of_them()):
        try:
            assert choice.finish_reason == "stop", f"finish_reason {choice.finish_reason}"
            jsonschema.validate(answer(choice.message), schema)
            if thinking == "budget":
                assert choice.message.reasoning_content, "the thought is kept as reasoning"
        except (AssertionError, ValueError, jsonschema.ValidationError) as exc:
            failures.append(f"{name}: {exc}: {choice.message.content!r}")
    assert not failures, "\n".join(failures)


def test_json_object_and_streaming_match(server):
    """Any JSON has unbounded strings, so a random model may run out of tokens inside one: every answer that ends
    must parse, and some of them end. Streamed deltas join to the non-streamed answer."""
    client = server.client()
    ended = 0
    for seed in range(6):
        r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=1.0,
                                           seed=seed, response_format={"type": "json_object"},
                                           extra_body={"thinking_budget": 2})
        if r.choices[0].finish_reason == "stop":
            ended += 1
            answer(r.choices[0].message)
    assert ended >= 1
    kwargs = dict(model="tiny", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=1.0, seed=7,
                  response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMAS[8][1]}},
                  extra_body={"thinking_budget": 2})
    whole = client.chat.completions.create(**kwargs)
    jsonschema.validate(answer(whole.choices[0].message), SCHEMAS[8][1])
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kwargs)
             if c.choices]
    assert "".join(parts) == whole.choices[0].message.content


def test_regex_and_choice(server):
    client = server.client()
    pattern = r"[a-c]{3}-[0-9]{2}"
    for seed in range(3):
        r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=40, temperature=1.0, seed=seed,
                                           extra_body={"thinking_budget": 2, "structured_outputs": {"regex": pattern}})
        assert re.fullmatch(pattern, r.choices[0].message.content), r.choices[0].message.content
        choices = ["yes", "no", "maybe so", 'say "hi"']
        r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=40, temperature=1.0, seed=seed,
                                           extra_body={"thinking_budget": 2, "structured_outputs": {"choice": choices}})
        assert r.choices[0].message.content in choices


def test_ebnf_grammar_and_vllm_json(server):
    client = server.client()
    r = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=40, temperature=1.0, seed=3,
        extra_body={"thinking_budget": 1, "structured_outputs": {"grammar": 'root ::= ("ab" | "cd") [0-9] [0-9]?'}})
    assert re.fullmatch(r"(ab|cd)[0-9][0-9]?", r.choices[0].message.content)
    schema = obj({"n": B})
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=60, temperature=1.0, seed=3,
                                       extra_body={"thinking_budget": 1, "structured_outputs": {"json": schema}})
    jsonschema.validate(answer(r.choices[0].message), schema)


def test_prompt_that_opened_the_answer_is_constrained_at_once(server):
    """A prompt ending in `<think></think><answer>` (how users skip thinking on 4.1V) puts the grammar at the first
    token: through /v1/completions, whose prompt glmv does not re-render."""
    schema = obj({"k": {"enum": ["v", "w"]}})
    r = server.client().completions.create(
        model="tiny", prompt="[gMASK]<sop><|user|>\nx<|assistant|>\n<think></think><answer>", max_tokens=40,
        temperature=1.0, seed=5, extra_body={"structured_outputs": {"json": schema}, "skip_special_tokens": True})
    text = r.choices[0].text
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].model_extra["stop_reason"] == server.state.grammar_compiler.answer_close_id, \
        "the grammar's end is the answer's end"
    jsonschema.validate(json.loads(text), schema)
    assert r.usage.completion_tokens <= 16, "no free thought: the answer came at once"


def test_compiled_once(server):
    compiler = server.state.grammar_compiler
    schema = obj({"once": B})
    fmt = {"type": "json_schema", "json_schema": {"name": "once", "schema": schema}}
    before = compiler.compiles
    for _ in range(3):
        server.client().chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=30, response_format=fmt,
                                                extra_body={"thinking_budget": 0})
    assert compiler.compiles == before + 1


def _deep(levels: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(levels):
        schema = obj({"a": schema})
    return schema


@pytest.mark.parametrize("fmt, says", [
    ({"type": "json_schema", "json_schema": {"name": "deep", "schema": _deep(200)}}, "deeper"),
    ({"type": "json_schema", "json_schema": {"name": "enum", "schema": {"enum": list(range(100_000))}}},
     "characters"),
    ({"type": "json_schema", "json_schema": {"name": "enum", "schema": {"enum": list(range(3000))}}}, "enums"),
    ({"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "nonsense"}}}, "does not compile"),
    ({"type": "json_schema", "json_schema": {"name": "none"}}, "needs json_schema.schema"),
])
def test_hostile_or_bad_schema_is_400(server, fmt, says):
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, response_format=fmt)
    assert says in err.value.message


def test_bad_regex_and_conflicts_are_400(server):
    client = server.client()
    for extra, says in [({"structured_outputs": {"regex": "(unclosed"}}, "does not compile"),
                        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "exactly one"),
                        ({"structured_outputs": {"choice": []}}, "non-empty"),
                        ({"structured_outputs": {"grammar": "root ::= nope"}}, "does not compile"),
                        ({"structured_outputs": {"json_object": True}, "ignore_eos": True}, "ignore_eos")]:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, extra_body=extra)
        assert says in err.value.message, err.value.message


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": obj(
    {"city": {"type": "string", "maxLength": 5}, "unit": {"enum": ["c", "f"]}})}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": obj({"zone": B})}}


def test_named_tool_choice_returns_tool_calls(server):
    client = server.client()
    kwargs = dict(model="tiny", messages=MESSAGES, max_tokens=120, temperature=1.0, seed=11, tools=[WEATHER, TIME],
                  tool_choice={"type": "function", "function": {"name": "get_time"}}, extra_body={"thinking_budget": 2})
    r = client.chat.completions.create(**kwargs)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), TIME["function"]["parameters"])
    streamed, names = "", []
    finish = None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            for d in c.delta.tool_calls or []:
                names += [d.function.name] if d.function.name else []
                streamed += d.function.arguments or ""
            finish = c.finish_reason or finish
    assert names == ["get_time"] and streamed == call.function.arguments and finish == "tool_calls"


def test_required_tool_choice_picks_a_tool(server):
    client = server.client()
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    for seed in range(2):
        r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=160, temperature=1.0,
                                           seed=seed, tools=[WEATHER, TIME], tool_choice="required",
                                           extra_body={"thinking_budget": 2})
        (call,) = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "tool_calls"
        jsonschema.validate(json.loads(call.function.arguments), by_name[call.function.name])


def test_auto_tool_choice_is_400_naming_required(server):
    for choice in (None, "auto"):
        kwargs = {"tool_choice": choice} if choice else {}
        with pytest.raises(openai.BadRequestError) as err:
            server.client().chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, tools=[WEATHER],
                                                    **kwargs)
        assert 'tool_choice: "required"' in err.value.message and "not trained" in err.value.message
