"""LLM: the offline API. `LLM(model).generate(prompts, params)` and `.chat(messages, params)` over glmv's engine.

    from glmv import LLM, SamplingParams
    llm = LLM("zai-org/GLM-4.1V-9B-Thinking", max_model_len=8192)
    out = llm.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "photos/a.png"}},
                                                  {"type": "text", "text": "What is this?"}]}],
                   {"temperature": 0.8, "max_tokens": 2048})
    print(out[0].outputs[0].reasoning)  # the thinking
    print(out[0].outputs[0].answer)     # the answer, as the server's message.content

Runs the same LLMEngine as the server, synchronously in the caller's thread, with all requests batched together.
Prompts are built by the builder every door shares (glmv/inputs/build.py): the same history rule, media rules,
document fitting and limits as the server. Results are RequestOutputs whose outputs hold the whole text and token
ids (not deltas), in input order; chat's outputs are ChatCompletionOutputs, split as the server splits them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glmv.config import EngineConfig, ModelConfig
from glmv.engine.engine import LLMEngine
from glmv.engine.outputs import CompletionOutput, PromptLogprobs, RequestOutput
from glmv.inputs.build import ChatPromptRequest, build_chat_prompt, build_raw_prompt, keep_pixels
from glmv.inputs.policy import MediaPolicy
from glmv.inputs.processor import PromptBuilder
from glmv.inputs.prompt import Prompt
from glmv.models.loader import resolve_model
from glmv.reasoning import prompt_opens_thought, split_reasoning
from glmv.sampling import SamplingParams

PromptLike = str | Prompt | list[int]
ParamsLike = SamplingParams | Mapping[str, Any]


@dataclass
class ChatCompletionOutput(CompletionOutput):
    """A chat choice: the whole text, and it split as the server's message is (reasoning_content, content)."""

    reasoning: str = ""
    answer: str = ""


def as_sampling_params(value: ParamsLike) -> SamplingParams:
    """SamplingParams as given, or built from a dict of the same fields (a ValueError names an unknown one)."""
    if isinstance(value, SamplingParams):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"sampling_params must be SamplingParams or a dict, got {type(value).__name__}.")
    known = {f.name for f in dataclasses.fields(SamplingParams)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"Unknown sampling parameter {unknown[0]!r}; known: {', '.join(sorted(known))}.")
    return SamplingParams(**value)


class LLM:
    """Offline batched generation. Keyword arguments are EngineConfig fields (max_model_len, dtype, device, ...).

    allowed_local_media_path: the folder media may be read from (plain paths and file:// URLs); the current
    directory by default, so a script reads its own files but not the whole disk; None turns local files off.
    """

    def __init__(self, model: str | Path, *, allowed_local_media_path: str | Path | None = ".", **engine_kwargs: Any):
        self.engine_config = EngineConfig(model=str(model), **engine_kwargs)
        cfg = self.engine_config
        self.path = resolve_model(str(model), hub=cfg.hub, revision=cfg.revision)
        self.model_config = ModelConfig.from_dir(self.path, cfg.generation_config)
        self.builder = PromptBuilder(self.path, cfg.chat_template, media_cache_bytes=cfg.media_cache_bytes,
                                     patch_cache_bytes=cfg.mm_processor_cache_bytes)
        self.tokenizer = self.builder.tokenizer
        self.engine = LLMEngine(self.model_config, self.engine_config, self.tokenizer)
        root = Path(allowed_local_media_path).resolve() if allowed_local_media_path is not None else None
        self.media_policy = MediaPolicy(allowed_local_media_path=root, plain_paths=root is not None)
        self._ids = itertools.count()

    def default_sampling_params(self) -> SamplingParams:
        """The checkpoint's generation_config defaults (temperature, top_p, top_k, repetition_penalty)."""
        return SamplingParams(**self.model_config.generation_defaults)

    def _prompt(self, prompt: PromptLike) -> Prompt:
        if isinstance(prompt, Prompt):
            return prompt
        return build_raw_prompt(self.builder, prompt)

    def generate(self, prompts: PromptLike | Sequence[PromptLike],
                 sampling_params: ParamsLike | Sequence[ParamsLike] | None = None) -> list[RequestOutput]:
        """Complete raw prompts (text, token ids or built Prompts); one RequestOutput per prompt, in order."""
        if isinstance(prompts, str | Prompt) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        return self._run([self._prompt(p) for p in prompts], sampling_params)

    def chat(self, messages: list[dict] | Sequence[list[dict]],
             sampling_params: ParamsLike | Sequence[ParamsLike] | None = None,
             chat_template_kwargs: dict[str, Any] | None = None,
             mm_processor_kwargs: dict[str, Any] | None = None,
             media_io_kwargs: dict[str, Any] | None = None) -> list[RequestOutput]:
        """OpenAI-style conversations (one, or a list of them) -> one RequestOutput each, in order; each output
        is a ChatCompletionOutput with `reasoning` and `answer` apart."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        params = self._params(sampling_params, len(conversations))

        async def build_all() -> list[Prompt]:
            return list(await asyncio.gather(*(build_chat_prompt(
                ChatPromptRequest(list(conv), chat_template_kwargs=chat_template_kwargs or {},
                                  mm_processor_kwargs=mm_processor_kwargs, media_io_kwargs=media_io_kwargs,
                                  max_tokens=p.max_tokens),
                self.builder, self.media_policy, self.engine.max_model_len, keep_pixels)
                for conv, p in zip(conversations, params, strict=True))))

        prompts = asyncio.run(build_all())
        results = self._run(prompts, params)
        for result, prompt in zip(results, prompts, strict=True):
            in_think = prompt_opens_thought(prompt.text)
            result.outputs = [_split(c, in_think) for c in result.outputs]
        return results

    def _params(self, sampling_params, count: int) -> list[SamplingParams]:
        if sampling_params is None:
            sampling_params = self.default_sampling_params()
        if isinstance(sampling_params, SamplingParams | Mapping):
            return [as_sampling_params(sampling_params)] * count
        params = [as_sampling_params(p) for p in sampling_params]
        if len(params) != count:
            raise ValueError(f"Got {count} prompts but {len(params)} sampling params.")
        return params

    def _run(self, prompts: list[Prompt], sampling_params) -> list[RequestOutput]:
        params = self._params(sampling_params, len(prompts))
        for prompt, p in zip(prompts, params, strict=True):
            self.engine.check_request(prompt, p)  # the context check the server makes, before anything runs
        ids = [f"llm-{next(self._ids)}" for _ in prompts]
        for rid, prompt, p in zip(ids, prompts, params, strict=True):
            self.engine.add_request(rid, prompt, p)
        totals: dict[str, dict[int, CompletionOutput]] = {rid: {} for rid in ids}
        cached: dict[str, int] = {}
        scored: dict[str, PromptLogprobs] = {}
        try:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    cached[out.request_id] = out.num_cached_tokens
                    if out.prompt_logprobs is not None:
                        scored[out.request_id] = out.prompt_logprobs
                    for c in out.outputs:
                        totals[out.request_id].setdefault(c.index, CompletionOutput.empty(c.index)).absorb(c)
        except BaseException:
            for rid in ids:
                self.engine.abort_request(rid)
            raise
        results = []
        for rid, prompt in zip(ids, prompts, strict=True):
            outs = [totals[rid][i] for i in sorted(totals[rid])]
            results.append(RequestOutput(rid, outs, prompt.token_ids, finished=True,
                                         num_cached_tokens=cached.get(rid, 0), prompt_logprobs=scored.get(rid)))
        return results


def _split(output: CompletionOutput, in_think: bool) -> ChatCompletionOutput:
    reasoning, answer = split_reasoning(output.text, in_think)
    fields = {f.name: getattr(output, f.name) for f in dataclasses.fields(CompletionOutput)}
    return ChatCompletionOutput(**fields, reasoning=reasoning, answer=answer)
