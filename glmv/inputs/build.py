"""build_chat_prompt: OpenAI-style messages -> a Prompt ready for the engine, the one road every door takes.

The server's chat and completions routes, `glmv.LLM`, and (through the server's API) `glmv chat`, `glmv batch` and
the web page all build prompts here, so the rules a prompt is held to are written once:
- history keeps answers only: an assistant turn is resent as its answer, and reasoning fields clients echo back
  are dropped (glmv/reasoning/history.py), as GLM-4.1V's own demo does; the one exception is the last assistant
  message under `continue_final_message`, which is a prefill and goes into the prompt verbatim (a `<think>` it
  opens stays open, so the model continues the thought);
- media are fetched concurrently on the event loop and decoded in worker threads, documents are cut to fit the
  context left after max_tokens (docs/INPUTS.md), and the prompt's own `info` says when one was cut;
- the engine client stages the pixels (EngineClient.stage_prompt) in the worker thread, off the engine loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from glmv.inputs.errors import InvalidInputError
from glmv.inputs.messages import load_messages_async
from glmv.inputs.policy import MediaPolicy
from glmv.inputs.processor import PromptBuilder
from glmv.inputs.prompt import Prompt
from glmv.inputs.tool_messages import with_parsed_tool_calls
from glmv.reasoning.history import strip_reasoning_from_history

PromptStager = Callable[[Prompt], Prompt]


def keep_pixels(prompt: Prompt) -> Prompt:
    """A stager for callers whose engine converts pixels in its own loop (glmv.LLM runs that loop itself)."""
    return prompt


@dataclass(frozen=True)
class ChatPromptRequest:
    """What a chat prompt is built from: the conversation and the per-request input settings."""

    messages: list[dict[str, Any]]
    add_generation_prompt: bool = True
    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    mm_processor_kwargs: dict[str, Any] | None = None
    media_io_kwargs: dict[str, Any] | None = None
    max_tokens: int | None = None  # documents are cut to leave this room for the answer
    continue_final_message: bool = False  # the last (assistant) message is a prefill, continued verbatim
    tools: list[dict[str, Any]] | None = None  # OpenAI tools, handed to templates that render them


# Stands in for the prefill while the template renders, so that the template's own rules for assistant turns
# (strip the thought, trim whitespace) cannot touch the prefill; the rendered text is cut at it.
_PREFILL_MARK = "\u2063glmv-prefill\u2063"


def _prefill_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            raise InvalidInputError("continue_final_message: the last assistant message may hold text parts only.",
                                    param="messages")
        texts.append(part["text"])
    return "".join(texts)


async def build_chat_prompt(request: ChatPromptRequest, builder: PromptBuilder, policy: MediaPolicy,
                            max_model_len: int, stage: PromptStager) -> Prompt:
    """The Prompt for `request` (InvalidInputError, a 4xx, for anything the rules refuse)."""
    messages = list(request.messages)
    prefill = None
    if request.continue_final_message:
        if not messages or messages[-1].get("role") != "assistant":
            raise InvalidInputError("continue_final_message needs a last assistant message.", param="messages")
        prefill = _prefill_text(messages[-1])
        messages[-1] = {"role": "assistant", "content": _PREFILL_MARK}
    messages = with_parsed_tool_calls(strip_reasoning_from_history(messages))
    options = builder.media_options(policy, request.mm_processor_kwargs, request.media_io_kwargs,
                                    max_model_len=max_model_len, max_tokens=request.max_tokens)
    normalized, media = await load_messages_async(messages, policy, options, builder.media_cache)

    def render_and_stage() -> Prompt:
        kwargs = {**({"tools": request.tools} if request.tools else {}), **request.chat_template_kwargs}
        text = builder.render(normalized, request.add_generation_prompt and prefill is None, **kwargs)
        if prefill is not None:
            cut = text.rfind(_PREFILL_MARK)
            if cut == -1:
                raise InvalidInputError("continue_final_message: the chat template does not render the last "
                                        "assistant message's text.", param="messages")
            text = text[:cut] + prefill
        return stage(builder.build(text, media, request.mm_processor_kwargs))

    return await asyncio.to_thread(render_and_stage)


def build_raw_prompt(builder: PromptBuilder, prompt: str | list[int], add_special_tokens: bool = False) -> Prompt:
    """A raw completion prompt (text, or token ids taken as they are): /v1/completions and LLM.generate."""
    if isinstance(prompt, str):
        ids = builder.tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
        return Prompt(token_ids=list(ids), text=prompt)
    return builder.from_token_ids(list(prompt))
