"""Pydantic schemas of the Responses API request as glmv speaks it (OpenAI's fields plus the vLLM/glmv sampling extras
the chat route takes). Schemas only; glmv/server/responses/items.py turns a request into a chat request.

Input items are checked by kind: messages (`input_text`, `input_image`, `input_file`, and `output_text` for assistant
turns), `function_call`, `function_call_output` and `reasoning` (dropped: history keeps answers only). Any other kind
reaches items.py, which answers a 400 naming it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from glmv.server.protocol import _SEED, OpenAIModel, tagged_union


class InputText(OpenAIModel):
    type: Literal["input_text", "output_text", "text"]
    text: str


class InputImage(OpenAIModel):
    type: Literal["input_image"]
    image_url: str | None = Field(default=None, description="http(s)://, data: (base64) or file:// URL")
    file_id: str | None = None
    detail: str | None = None


class InputFile(OpenAIModel):
    type: Literal["input_file"]
    file_data: str | None = Field(default=None, description="data:application/pdf;base64,...")
    file_url: str | None = None
    filename: str | None = None
    file_id: str | None = None


class OtherContent(BaseModel):
    """A part type glmv does not read (e.g. input_audio, refusal): items.py refuses it with a 4xx naming it."""

    model_config = ConfigDict(extra="allow")
    type: str


InputContent = tagged_union({"input_text": InputText, "output_text": InputText, "text": InputText,
                             "input_image": InputImage, "input_file": InputFile}, OtherContent)


class MessageItem(OpenAIModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputContent]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(OpenAIModel):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(OpenAIModel):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[InputContent]
    id: str | None = None
    status: str | None = None


class ReasoningItem(OpenAIModel):
    type: Literal["reasoning"]
    id: str | None = None


class OtherItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str


InputItem = tagged_union({"message": MessageItem, "function_call": FunctionCallItem,
                          "function_call_output": FunctionCallOutputItem, "reasoning": ReasoningItem}, OtherItem,
                         default="message")


class TextFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str = Field(default="response", max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(OpenAIModel):
    format: TextFormat | None = None
    verbosity: str | None = None


class ResponsesTool(BaseModel):
    """A tool; only `type: function` can run here (items.py refuses the others, naming them)."""

    model_config = ConfigDict(extra="allow")
    type: str
    name: str | None = Field(default=None, min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionToolChoice(OpenAIModel):
    type: Literal["function"]
    name: str


class ReasoningConfig(OpenAIModel):
    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(OpenAIModel):
    model: str | None = Field(default=None, description="A served model name (GET /v1/models); default: the first.")
    input: str | list[InputItem] = Field(description="A user message as text, or a list of input items.")
    instructions: str | None = Field(default=None, description="A system message for this response only (not "
                                     "carried over by previous_response_id).")
    previous_response_id: str | None = Field(default=None, description="Continue the conversation of a stored "
                                             "response: its input and output come before this input.")
    store: bool = Field(default=True, description="Keep the response (in memory, bounded by "
                        "--max-stored-responses) for GET /v1/responses/{id} and previous_response_id.")
    max_output_tokens: int | None = Field(default=None, ge=1, description="Reasoning and answer tokens together.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stream: bool = False
    text: TextConfig | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    parallel_tool_calls: bool | None = None
    reasoning: ReasoningConfig | None = Field(default=None, description="Accepted; GLM always thinks (the "
                                              "thought comes back as a reasoning item).")
    metadata: dict[str, str] | None = None
    user: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # vLLM / glmv extras, as on the chat route (the openai SDK sends them through extra_body)
    seed: int | None = _SEED
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=10)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    thinking_budget: int | None = Field(default=None, ge=0)
    reserved_answer_tokens: int | None = Field(default=None, ge=1)
    chat_template_kwargs: dict[str, Any] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None
    media_io_kwargs: dict[str, Any] | None = None
