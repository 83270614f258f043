"""`tool_choice: "auto"` on the GLM-4.6V-Flash tiny preset through the real openai SDK and a real uvicorn server.

The model is scripted (tests/server/scripted_tools.py): with tools it thinks, says " First" and calls
add(key=42) in GLM's own format; after that call's result it calls print(words="picture"); after both results it
answers "lazy dog". Without tools it thinks and answers "lazy dog". So the parsing, the streamed pieces, the tool
turns' round trip through the template and a whole agent loop (OpenAI Agents SDK) are all checked on real text.
"""

from __future__ import annotations

import json

import openai
import pytest

from glmv.inputs.tool_messages import with_parsed_tool_calls
from tests.server.conftest import live_server, module_server
from tests.server.scripted_tools import make_scripted_tools_model

ADD = {"type": "function", "function": {"name": "add", "description": "Add a key.",
                                        "parameters": {"type": "object", "properties": {"key": {"type": "integer"}},
                                                       "required": ["key"]}}}
PRINT = {"type": "function", "function": {"name": "print", "description": "Print words.",
                                          "parameters": {"type": "object",
                                                         "properties": {"words": {"type": "string"}},
                                                         "required": ["words"]}}}
TOOLS = [ADD, PRINT]
# A random model's forced call over an open integer may run to max_tokens; a closed set always ends.
ADD_FEW = {"type": "function", "function": {**ADD["function"], "parameters": {
    "type": "object", "properties": {"key": {"enum": [1, 2, 3]}}, "required": ["key"]}}}
ASK = [{"role": "user", "content": "Use the tools."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from glmv.models.tiny import make_tiny_model

    base = make_tiny_model(tmp_path_factory.mktemp("t46") / "tiny-4.6v", "tiny-4.6v")
    model = make_scripted_tools_model(base, tmp_path_factory.mktemp("t46s") / "scripted")
    with live_server(model, "glmv", "--served-model-name", "flash", "--max-model-len", "2048") as s:
        yield s


def test_the_template_is_detected_as_rendering_tools(server):
    assert server.state.tool_format == "glm45"
    assert server.state.model_config.text.max_position_embeddings == 131072


@pytest.mark.parametrize("choice", [None, "auto"])
def test_auto_call_non_streamed(server, choice):
    kwargs = {"tool_choice": choice} if choice else {}
    r = server.client().chat.completions.create(model="flash", messages=ASK, tools=TOOLS, max_tokens=64, **kwargs)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert msg.content == "First"
    assert msg.reasoning_content == "Let me think"
    (call,) = msg.tool_calls
    assert call.type == "function" and call.id and call.function.name == "add"
    assert json.loads(call.function.arguments) == {"key": 42}


def test_auto_call_streamed_pieces_join_to_the_whole(server):
    client = server.client()
    whole = client.chat.completions.create(model="flash", messages=ASK, tools=TOOLS, max_tokens=64)
    stream = client.chat.completions.create(model="flash", messages=ASK, tools=TOOLS, max_tokens=64, stream=True)
    content, reasoning, finish = [], [], None
    calls: dict[int, dict] = {}
    for chunk in stream:
        for ch in chunk.choices:
            d = ch.delta
            content.append(d.content or "")
            reasoning.append(getattr(d, "reasoning_content", None) or "")
            for tc in d.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": []})
                if tc.id:
                    entry["id"] = tc.id
                if tc.function and tc.function.name:
                    entry["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    entry["arguments"].append(tc.function.arguments)
            finish = ch.finish_reason or finish
    assert finish == "tool_calls"
    assert "".join(content) == whole.choices[0].message.content == "First"
    assert "".join(reasoning) == "Let me think"
    (only,) = calls.values()
    (call,) = whole.choices[0].message.tool_calls
    assert only["name"] == call.function.name == "add" and only["id"]
    assert len(only["arguments"]) >= 2  # a pair, then the closing brace
    assert "".join(only["arguments"]) == call.function.arguments


def test_enable_thinking_off_is_all_answer(server):
    client = server.client()
    off = {"chat_template_kwargs": {"enable_thinking": False}}
    r = client.chat.completions.create(model="flash", messages=ASK, max_tokens=32, extra_body=off)
    assert r.choices[0].message.content == "lazy dog"
    assert not r.choices[0].message.reasoning_content
    on = client.chat.completions.create(model="flash", messages=ASK, max_tokens=32)
    assert (on.choices[0].message.reasoning_content, on.choices[0].message.content) == ("The quick brown fox",
                                                                                        "lazy dog")
    r = client.chat.completions.create(model="flash", messages=ASK, tools=TOOLS, max_tokens=64, extra_body=off)
    assert not r.choices[0].message.reasoning_content and r.choices[0].message.content == "First"
    assert [c.function.name for c in r.choices[0].message.tool_calls] == ["add"]


def test_tool_results_round_trip(server):
    """The assistant's call and the tool's result go back through the template; the model reads them (its next
    call depends on seeing one <tool_response> and the earlier <tool_call>), and the render shows both."""
    client = server.client()
    first = client.chat.completions.create(model="flash", messages=ASK, tools=TOOLS, max_tokens=64)
    call = first.choices[0].message.tool_calls[0]
    history = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    second = client.chat.completions.create(model="flash", messages=history, tools=TOOLS, max_tokens=64)
    (call2,) = second.choices[0].message.tool_calls
    assert (call2.function.name, json.loads(call2.function.arguments)) == ("print", {"words": "picture"})
    history += [second.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call2.id, "content": "done"}]
    third = client.chat.completions.create(model="flash", messages=history, tools=TOOLS, max_tokens=64)
    assert third.choices[0].finish_reason == "stop" and third.choices[0].message.content == "lazy dog"
    assert not third.choices[0].message.tool_calls
    text = server.state.builder.render(with_parsed_tool_calls([{**m, "content": m.get("content") or ""}
                                                               for m in history]), True, tools=TOOLS)
    assert "<tool_call>add\n<arg_key>key</arg_key>\n<arg_value>42</arg_value>\n</tool_call>" in text
    assert "<|observation|>\n<tool_response>\nsunny\n</tool_response>" in text


def test_bad_tool_call_arguments_in_history_is_400(server):
    bad = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{not json"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(model="flash", messages=bad, tools=TOOLS, max_tokens=8)
    assert "arguments" in err.value.message


def test_agents_sdk_two_tool_loop(server):
    """The OpenAI Agents SDK runs its loop against glmv: two tool calls, each result sent back, a final answer."""
    from agents import Agent, OpenAIChatCompletionsModel, RunConfig, Runner, function_tool

    seen: list[tuple[str, object]] = []

    @function_tool(name_override="add")
    def add(key: int) -> str:
        """Add a key."""
        seen.append(("add", key))
        return "sunny"

    @function_tool(name_override="print")
    def print_words(words: str) -> str:
        """Print words."""
        seen.append(("print", words))
        return "done"

    model = OpenAIChatCompletionsModel(model="flash", openai_client=server.async_client())
    agent = Agent(name="glmv", instructions="Use the tools.", model=model, tools=[add, print_words])
    result = Runner.run_sync(agent, "Use the tools.", max_turns=5, run_config=RunConfig(tracing_disabled=True))
    assert seen == [("add", 42), ("print", "picture")]
    assert result.final_output == "lazy dog"


server41 = module_server("glmv", "--served-model-name", "tiny", "--max-model-len", "512")


def test_glm41v_auto_is_400_and_tool_results_round_trip(server41):
    """GLM-4.1V's template renders no tools: auto is a 400 naming "required"; a required call's result goes back as
    an <|observation|> turn after the call written as the JSON a forced call answers with."""
    client = server41.client()
    assert server41.state.tool_format is None
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, max_tokens=8)
    assert 'tool_choice: "required"' in err.value.message and err.value.status_code == 400
    first = client.chat.completions.create(model="tiny", messages=ASK, tools=[ADD_FEW], tool_choice="required",
                                           max_tokens=64, extra_body={"thinking_budget": 2})
    (call,) = first.choices[0].message.tool_calls
    history = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    second = client.chat.completions.create(model="tiny", messages=history, max_tokens=4)
    assert second.choices[0].finish_reason in ("stop", "length")
    text = server41.state.builder.render(with_parsed_tool_calls([{**m, "content": m.get("content") or ""}
                                                                 for m in history]), True)
    args = json.loads(call.function.arguments)
    assert json.dumps({"name": "add", "arguments": args}) + "<|observation|>\nsunny<|assistant|>" in text
