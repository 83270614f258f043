"""Pydantic schemas of the OpenAI API as glmv speaks it (plus vLLM's extras). Schemas only: no logic, no engine imports.

Requests ignore unknown fields, as OpenAI does, so clients written for other servers keep working. Range checks live
here (they become HTTP 400 with the field named, and they document the API in /openapi.json); checks that need the
model (vocabulary, context length) live in glmv/server/params.py.
"""

from __future__ import annotations

import functools
import operator
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

# torch seeds are 64-bit; bigger integers would fail deep inside the engine.
_SEED = Field(default=None, ge=-(2**63), le=2**63 - 1, description="Same seed and parameters give the same output.")


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class OpenAIModel(BaseModel):
    """Accepts and ignores unknown fields, as OpenAI does."""

    model_config = ConfigDict(extra="ignore")


class StreamOptions(OpenAIModel):
    include_usage: bool = Field(default=False, description="Send a last chunk with `usage` and no choices.")
    continuous_usage_stats: bool = Field(default=False, description="vLLM extra: `usage` in every chunk.")


# ---- message content parts --------------------------------------------------------------------------------------


class MediaURL(OpenAIModel):
    url: str = Field(description="http(s)://, data: (base64) or file:// (under --allowed-local-media-path)")
    detail: str | None = None


class TextPart(OpenAIModel):
    type: Literal["text"]
    text: str


class ImageURLPart(OpenAIModel):
    type: Literal["image_url"]
    image_url: MediaURL | str


class VideoURLPart(OpenAIModel):
    type: Literal["video_url"]
    video_url: MediaURL | str


class FileData(OpenAIModel):
    model_config = ConfigDict(extra="allow")
    file_data: str | None = Field(default=None, description="data:application/pdf;base64,...")
    file_url: str | None = None
    filename: str | None = None


class FilePart(OpenAIModel):
    """A document (PDF, PPT, PPTX) in OpenAI's shape; its pages are read as images."""

    type: Literal["file"]
    file: FileData


class OtherPart(BaseModel):
    """Any other part type (e.g. `image`, `video`, document URL forms): passed on to the media loader, which accepts
    or refuses it with a 4xx that names the part."""

    model_config = ConfigDict(extra="allow")
    type: str


def tagged_union(members: dict[str, type], other: type, default: str | None = None) -> Any:
    """A union told apart by its `type` field: a known kind is checked strictly as its model (a broken part is a 400
    naming the missing field); any other kind validates as `other` and is judged later, where its name can be
    given. `default` is the kind of a value without a `type`."""

    def kind(value: Any) -> str:
        found = value.get("type", default) if isinstance(value, dict) else getattr(value, "type", default)
        return found if isinstance(found, str) and found in members else "other"

    tagged = [Annotated[model, Tag(name)] for name, model in members.items()] + [Annotated[other, Tag("other")]]
    return Annotated[functools.reduce(operator.or_, tagged), Discriminator(kind)]


# Other part types pass through to the media loader, which accepts or refuses them.
ContentPart = tagged_union({"text": TextPart, "image_url": ImageURLPart, "video_url": VideoURLPart,
                            "file": FilePart}, OtherPart)


class ChatMessage(OpenAIModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer", "observation"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    reasoning_content: str | None = Field(default=None, description="Ignored: history keeps only answers.")


# ---- structured outputs and tools (glmv/structured, glmv/server/structured.py) -----------------------------------


class JSONSchemaFormat(OpenAIModel):
    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(default=None, alias="schema")
    strict: bool | None = False


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` extra: exactly one of these constraints."""

    model_config = ConfigDict(extra="forbid")
    json_: dict[str, Any] | bool | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None


class FunctionDefinition(OpenAIModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(OpenAIModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(OpenAIModel):
    name: str


class NamedToolChoice(OpenAIModel):
    type: Literal["function"] = "function"
    function: NamedFunction


# ---- sampling fields shared by chat and completions --------------------------------------------------------------


class SamplingFields(OpenAIModel):
    """OpenAI sampling fields plus vLLM's extras (sent by the openai SDK through `extra_body`) and glmv's own."""

    model: str | None = Field(default=None, description="A served model name (GET /v1/models); default: the first.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=128, description="How many choices to generate.")
    stop: str | list[str] | None = Field(default=None, description="Up to 16 stop strings (not included in the text).")
    seed: int | None = _SEED
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        default=None, description="Token id (as a string) -> bias added to its logit, -100..100.")
    user: str | None = None
    # vLLM extras
    top_k: int | None = Field(default=None, ge=-1, description="vLLM extra. 0 or -1: off.")
    min_p: float | None = Field(default=None, ge=0, le=1, description="vLLM extra.")
    repetition_penalty: float | None = Field(
        default=None, ge=0.01, le=10, description="vLLM extra. 1.0: off; above 1 discourages repeats. Values near 0 "
        "would divide logits into infinities, so 0.01 is the floor.")
    stop_token_ids: list[int] | None = Field(default=None, description="vLLM extra: token ids that end a choice.")
    skip_special_tokens: bool = Field(default=True, description="vLLM extra: drop special tokens from the text.")
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    ignore_eos: bool = Field(default=False, description="vLLM extra: keep going past end-of-sequence tokens.")
    min_tokens: int = Field(default=0, ge=0, description="vLLM extra: no stop before this many tokens.")
    # glmv extras
    thinking_budget: int | None = Field(
        default=None, ge=0, description="glmv extra: after this many reasoning tokens the engine closes the thought "
        "(`</think><answer>`) so the model answers. Default: --max-thinking-tokens.")
    reserved_answer_tokens: int | None = Field(
        default=None, ge=1, description="glmv extra: when max_tokens would run out inside the thought, close it this "
        "many tokens early so an answer still fits.")
    response_format: ResponseFormat | None = Field(
        default=None, description="OpenAI: json_object or json_schema (with strict) constrain the answer.")
    structured_outputs: StructuredOutputs | None = Field(
        default=None, description="vLLM extra: one of json, regex, choice, grammar (EBNF) or json_object.")
    prompt_logprobs: int | None = Field(
        default=None, ge=0, le=20, description="vLLM extra: score the prompt; per prompt token its logprob, rank "
        "and this many top alternatives (`prompt_logprobs` on the completion choice, top-level on chat). glmv also "
        "streams them (in the first chunk that follows their arrival), which vLLM refuses.")


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, description="Deprecated by OpenAI; max_completion_tokens wins.")
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    chat_template_kwargs: dict[str, Any] | None = Field(
        default=None, description='vLLM extra, e.g. {"enable_thinking": false} for GLM-4.6V-Flash.')
    mm_processor_kwargs: dict[str, Any] | None = Field(default=None, description="vLLM extra: processor overrides.")
    media_io_kwargs: dict[str, Any] | None = Field(
        default=None, description='vLLM extra, e.g. {"video": {"fps": 1, "num_frames": 16}}.')
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    include_reasoning: bool = Field(default=True, description="glmv extra: false leaves reasoning out.")
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        default=None, description='"required" or a named function: the answer is a call, constrained to the '
        "function's parameters schema.")
    parallel_tool_calls: bool | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text, a list of texts, token ids, or a list of token-id lists (one request each).")
    max_tokens: int | None = Field(default=16, ge=1, description="Default 16, as OpenAI's and vLLM's.")
    echo: bool = Field(default=False, description="Put the prompt in front of the generated text.")
    logprobs: int | None = Field(default=None, ge=0, le=20, description="Top alternatives per token (legacy shape).")
    best_of: int | None = Field(default=None, ge=1, description="Accepted only when equal to n.")
    suffix: str | None = Field(default=None, description="Not supported (GLM has no fill-in-the-middle).")
    add_special_tokens: bool = True


# ---- responses ------------------------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    completion_tokens_details: CompletionTokensDetails | None = None
    prompt_tokens_details: PromptTokensDetails | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatLogprobToken(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class PromptLogprob(BaseModel):
    """vLLM's Logprob in `prompt_logprobs`: keyed by token id (a string in JSON)."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


PromptLogprobs = list[dict[str, PromptLogprob] | None]


class ChatLogprobs(BaseModel):
    content: list[ChatLogprobToken] | None = None


class ChatResponseMessage(BaseModel):
    role: str = "assistant"
    content: str | None = None
    reasoning_content: str | None = Field(default=None, description="The thinking (text inside <think>).")
    reasoning: str | None = Field(default=None, description="The same text, under the name newer vLLM clients read.")
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)


class ChoiceEnd(BaseModel):
    """The fields every choice has, streamed or not: its index and, once it ends, why."""

    index: int
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionChoice(ChoiceEnd):
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: random_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None
    prompt_logprobs: PromptLogprobs | None = None


class DeltaMessage(BaseModel):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class ChatCompletionStreamChoice(ChoiceEnd):
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None


class StreamedObject(BaseModel):
    """What every completion object carries besides its choices (the route sets them all)."""

    id: str
    created: int
    model: str


class ChatCompletionChunk(StreamedObject):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy logprobs shape of /v1/completions."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(ChoiceEnd):
    text: str
    logprobs: CompletionLogprobs | None = None
    prompt_logprobs: PromptLogprobs | None = None


class CompletionResponse(StreamedObject):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


# ---- models, tokenize -----------------------------------------------------------------------------------------


class ModelPermission(BaseModel):
    id: str = Field(default_factory=lambda: random_id("modelperm"))
    object: Literal["model_permission"] = "model_permission"
    created: int = Field(default_factory=lambda: int(time.time()))
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool = True
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "glmv"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    permission: list[ModelPermission] = Field(default_factory=list)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeCompletionRequest(OpenAIModel):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(OpenAIModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    return_token_strs: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None
    media_io_kwargs: dict[str, Any] | None = None


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(OpenAIModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class VersionResponse(BaseModel):
    version: str


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
