"""/v1/responses through HTTP with the real openai SDK (client.responses.create / .stream / .parse) on the tiny model.

The tiny model's weights are random: a logit_bias on `</think>` makes it close its thought soon, so that both a
reasoning item and an answer come back; structured answers validate because the grammar makes them, not the model.
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import jsonschema
import openai
import pytest
from openai.types.responses import (
    Response,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseReasoningItem,
)
from PIL import Image

from tests.server.conftest import serve_args, start_server, think_end_id

STORE_BOUND = 3


@pytest.fixture(scope="module")
def server(tiny_model_dir, think_template):
    s = start_server(serve_args(tiny_model_dir, "glmv", "--served-model-name", "tiny", "--max-model-len", "1024",
                                "--max-stored-responses", str(STORE_BOUND), "--chat-template", str(think_template)))
    yield s
    s.stop()


def close_soon(server, bias: float = 1.0) -> dict:
    """A `</think>` bias with which the tiny model (seeds 1-3) thinks a few tokens, then answers."""
    return {"logit_bias": {str(think_end_id(server)): bias}}


def kinds(r: Response) -> list[str]:
    return [item.type for item in r.output]


def image_data_url(seed: int = 1) -> str:
    img = Image.new("RGB", (56, 56), (seed * 40 % 256, 90, 160))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_create_returns_reasoning_and_message_items(server):
    r = server.client().responses.create(model="tiny", input="Describe a cat.", instructions="Be brief.",
                                         max_output_tokens=40, temperature=1.0, extra_body={"seed": 1,
                                                                                         **close_soon(server)})
    assert isinstance(r, Response) and r.object == "response" and r.id.startswith("resp_")
    assert r.status in ("completed", "incomplete")
    assert kinds(r) == ["reasoning", "message"], kinds(r)
    reasoning = r.output[0]
    assert isinstance(reasoning, ResponseReasoningItem)
    assert reasoning.content and reasoning.content[0].type == "reasoning_text" and reasoning.content[0].text
    assert "<think>" not in reasoning.content[0].text
    message = r.output[1]
    assert isinstance(message, ResponseOutputMessage) and message.role == "assistant"
    assert message.content[0].type == "output_text" and r.output_text == message.content[0].text
    assert r.usage.input_tokens > 0
    assert r.usage.output_tokens == r.usage.total_tokens - r.usage.input_tokens
    assert 0 < r.usage.output_tokens_details.reasoning_tokens <= r.usage.output_tokens
    assert r.instructions == "Be brief." and r.max_output_tokens == 40


def test_max_output_tokens_is_incomplete(server):
    r = server.client().responses.create(model="tiny", input="Think long.", max_output_tokens=5,
                                         extra_body={"logit_bias": {str(think_end_id(server)): -100}})
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 5
    assert kinds(r) == ["reasoning"] and r.output[0].status == "incomplete"


def test_stream_events_add_up_to_the_response(server):
    """client.responses.stream: a grammar makes the tiny model finish (status completed), so the SDK's helper
    returns its final response; the events add up to it and to the non-streamed response of the same seed."""
    client = server.client()
    kwargs = dict(model="tiny", input=[{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
                  max_output_tokens=120, temperature=1.0,
                  text={"format": {"type": "json_schema", "name": "city", "schema": SCHEMA, "strict": True}},
                  extra_body={"seed": 2, "thinking_budget": 4})
    with client.responses.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for t in ("response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
              "response.reasoning_text.done", "response.output_text.delta", "response.output_text.done",
              "response.content_part.done", "response.output_item.done"):
        assert t in types, t
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    answer = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert reasoning == final.output[0].content[0].text
    assert answer == final.output_text
    jsonschema.validate(json.loads(answer), SCHEMA)
    added = [e.output_index for e in events if e.type == "response.output_item.added"]
    done = [e.output_index for e in events if e.type == "response.output_item.done"]
    assert added == done == list(range(len(final.output)))
    whole = client.responses.create(**kwargs)
    assert whole.output_text == final.output_text
    assert whole.output[0].content[0].text == final.output[0].content[0].text
    assert whole.usage.output_tokens == final.usage.output_tokens


def test_plain_stream_parses_into_sdk_events(server):
    """stream=True without a grammar: the tiny model usually runs out of tokens, which ends the stream with
    response.incomplete, as OpenAI does; every event still parses into the SDK's own types."""
    from openai.types.responses import ResponseCompletedEvent, ResponseIncompleteEvent

    client = server.client()
    kwargs = dict(model="tiny", input="Hi", max_output_tokens=30, temperature=1.0,
                  extra_body={"seed": 3, **close_soon(server)})
    events = list(client.responses.create(stream=True, **kwargs))
    last = events[-1]
    assert isinstance(last, ResponseCompletedEvent | ResponseIncompleteEvent)
    whole = client.responses.create(**kwargs)
    assert [o.model_dump() for o in last.response.output] != [] and \
        [(o.type, o.status) for o in last.response.output] == [(o.type, o.status) for o in whole.output]
    answer = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert answer == whole.output_text


def test_raw_stream_is_server_sent_events_with_event_names(server):
    with httpx.stream("POST", server.v1 + "/responses", timeout=30, json={
            "model": "tiny", "input": "Hi", "max_output_tokens": 8, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    datas = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert names == [d["type"] for d in datas]


def test_image_input(server):
    r = server.client().responses.create(model="tiny", max_output_tokens=6, input=[{"role": "user", "content": [
        {"type": "input_image", "image_url": image_data_url(), "detail": "auto"},
        {"type": "input_text", "text": "What is this?"}]}])
    plain = server.client().responses.create(model="tiny", max_output_tokens=6, input="What is this?")
    assert r.usage.input_tokens >= plain.usage.input_tokens + 4, "the picture's tokens are in the prompt"


def test_previous_response_id_chain_and_get(server):
    client = server.client()
    first = client.responses.create(model="tiny", input="My name is Ada.", max_output_tokens=12,
                                    extra_body=close_soon(server, 8.0))
    second = client.responses.create(model="tiny", input="What is my name?", previous_response_id=first.id,
                                     max_output_tokens=12)
    alone = client.responses.create(model="tiny", input="What is my name?", max_output_tokens=12)
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > alone.usage.input_tokens, "the first turn is in the second prompt"
    got = client.responses.retrieve(second.id)
    assert isinstance(got, Response) and got.id == second.id and got.output_text == second.output_text
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="tiny", input="x", previous_response_id="resp_nope", max_output_tokens=2)
    assert err.value.body["code"] == "previous_response_not_found"
    assert err.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_nope")


def test_store_false_and_bounded_eviction(server):
    client = server.client()
    unstored = client.responses.create(model="tiny", input="x", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    ids = [client.responses.create(model="tiny", input=f"n{i}", max_output_tokens=2).id
           for i in range(STORE_BOUND + 2)]
    assert len(server.state.response_store) == STORE_BOUND
    for old in ids[:2]:
        with pytest.raises(openai.BadRequestError):
            client.responses.create(model="tiny", input="y", previous_response_id=old, max_output_tokens=2)
    for kept in ids[2:]:
        assert client.responses.retrieve(kept).id == kept
    client.responses.delete(ids[-1])
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(ids[-1])


SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                           "rank": {"type": "integer", "minimum": 1, "maximum": 9}},
          "required": ["city", "rank"], "additionalProperties": False}


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_validates(server, stream):
    client = server.client()
    kwargs = dict(model="tiny", input="A city as JSON.", max_output_tokens=120, temperature=1.0,
                  text={"format": {"type": "json_schema", "name": "city", "schema": SCHEMA, "strict": True}},
                  extra_body={"seed": 4, "thinking_budget": 3})
    if stream:
        with client.responses.stream(**kwargs) as s:
            r = s.get_final_response()
    else:
        r = client.responses.create(**kwargs)
    assert r.status == "completed"
    assert kinds(r) == ["reasoning", "message"]
    jsonschema.validate(json.loads(r.output_text), SCHEMA)
    assert r.text.format.type == "json_schema"


def test_parse_with_a_pydantic_model(server):
    from pydantic import BaseModel, Field

    class Pick(BaseModel):
        color: str = Field(max_length=5)
        n: int = Field(ge=0, le=3)

    r = server.client().responses.parse(model="tiny", input="Pick.", text_format=Pick, max_output_tokens=120,
                                        temperature=1.0, extra_body={"seed": 5, "thinking_budget": 2})
    assert isinstance(r.output_parsed, Pick)


def test_json_object(server):
    r = server.client().responses.create(model="tiny", input="JSON.", max_output_tokens=150, temperature=1.0,
                                         text={"format": {"type": "json_object"}},
                                         extra_body={"seed": 6, "thinking_budget": 2})
    if r.status == "completed":
        assert isinstance(json.loads(r.output_text), dict)


WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city.",
           "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                          "required": ["city"], "additionalProperties": False}, "strict": True}
TIME = {"type": "function", "name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
    "additionalProperties": False}}


@pytest.mark.parametrize("choice", [{"type": "function", "name": "get_weather"}, "required"])
def test_function_call_round_trip(server, choice):
    client = server.client()
    r = client.responses.create(model="tiny", input="Weather in Paris?", tools=[WEATHER, TIME], tool_choice=choice,
                                max_output_tokens=80, temperature=1.0, extra_body={"seed": 7, "thinking_budget": 2})
    calls = [o for o in r.output if isinstance(o, ResponseFunctionToolCall)]
    assert r.status == "completed" and len(calls) == 1, r.output
    call = calls[0]
    if choice != "required":
        assert call.name == "get_weather"
    args = json.loads(call.arguments)
    jsonschema.validate(args, (WEATHER if call.name == "get_weather" else TIME)["parameters"])
    assert call.call_id.startswith("call_") and call.status == "completed"
    # The result goes back as a function_call_output item, on top of the stored conversation.
    follow = client.responses.create(model="tiny", previous_response_id=r.id, max_output_tokens=8, input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"temp_c": 21})}])
    assert follow.status in ("completed", "incomplete")
    # And statelessly: the whole conversation sent back as items (the SDK's own output items included).
    items = [{"role": "user", "content": "Weather in Paris?"}, *[o.model_dump(exclude_none=True) for o in r.output],
             {"type": "function_call_output", "call_id": call.call_id, "output": "21 C"}]
    again = client.responses.create(model="tiny", input=items, max_output_tokens=8)
    assert again.usage.input_tokens > follow.usage.input_tokens - 40  # both carry the call and its result
    assert again.usage.input_tokens > client.responses.create(model="tiny", input="Weather in Paris?",
                                                              max_output_tokens=2).usage.input_tokens


def test_streamed_function_call_arguments_join(server):
    with server.client().responses.stream(
            model="tiny", input="Weather?", tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"},
            max_output_tokens=80, temperature=1.0, extra_body={"seed": 8, "thinking_budget": 2}) as s:
        events = list(s)
        final = s.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    call = [o for o in final.output if o.type == "function_call"][0]
    assert deltas == call.arguments
    jsonschema.validate(json.loads(deltas), WEATHER["parameters"])


@pytest.mark.parametrize("body, param", [
    ({"input": "x", "tools": [{"type": "web_search"}], "tool_choice": "required"}, "tools[0]"),
    ({"input": "x", "tools": [WEATHER]}, "tool_choice"),  # auto on GLM-4.1V: refused, names "required"
    ({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_audio", "data": "x"}]}]}, "input[0].content[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}, "input[0].content[0]"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "temperature": 5}, "temperature"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "s"}}}, "text.format"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "nonsense"}}}},
     "response_format"),
    ({"input": []}, "input"),
    ({}, "input"),
])
def test_bad_input_is_a_400_in_openai_shape(server, body, param):
    r = httpx.post(server.v1 + "/responses", json={"model": "tiny", **body}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["message"] and err["param"] == param, err


def test_unknown_model_is_a_404(server):
    with pytest.raises(openai.NotFoundError):
        server.client().responses.create(model="nope", input="x")
