"""LLM: the offline API. `LLM(model).generate(prompts, params)` and `.chat(messages, params)` over glmv's engine.

    from glmv import LLM  # or: from glmv.llm import LLM
    llm = LLM("zai-org/GLM-4.1V-9B-Thinking", max_model_len=8192)
    out = llm.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///a.png"}},
                                                  {"type": "text", "text": "What is this?"}]}])
    print(out[0].outputs[0].text)

Runs the same LLMEngine as the server, synchronously in the caller's thread, with all requests batched together.
Results are RequestOutputs whose CompletionOutputs hold the whole text and token ids (not deltas), in input order.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glmv.config import EngineConfig, ModelConfig
from glmv.engine.engine import LLMEngine
from glmv.engine.outputs import CompletionOutput, RequestOutput
from glmv.inputs.messages import MediaPolicy, load_messages
from glmv.inputs.processor import PromptBuilder
from glmv.inputs.prompt import Prompt
from glmv.models.loader import resolve_model
from glmv.sampling import SamplingParams

PromptLike = str | Prompt | list[int]


class LLM:
    """Offline batched generation. Keyword arguments are EngineConfig fields (max_model_len, dtype, device, ...)."""

    def __init__(self, model: str, *, allowed_local_media_path: str | None = "/", **engine_kwargs: Any):
        self.engine_config = EngineConfig(model=str(model), **engine_kwargs)
        cfg = self.engine_config
        self.path = resolve_model(str(model), hub=cfg.hub, revision=cfg.revision)
        self.model_config = ModelConfig.from_dir(self.path, cfg.generation_config)
        self.builder = PromptBuilder(self.path, cfg.chat_template, media_cache_bytes=cfg.media_cache_bytes,
                                     patch_cache_bytes=cfg.mm_processor_cache_bytes)
        self.tokenizer = self.builder.tokenizer
        self.engine = LLMEngine(self.model_config, self.engine_config, self.tokenizer)
        self.media_policy = MediaPolicy(
            allowed_local_media_path=Path(allowed_local_media_path) if allowed_local_media_path else None)
        self._ids = itertools.count()

    def default_sampling_params(self) -> SamplingParams:
        """The checkpoint's generation_config defaults (temperature, top_p, top_k, repetition_penalty)."""
        return SamplingParams(**self.model_config.generation_defaults)

    def _prompt(self, prompt: PromptLike) -> Prompt:
        if isinstance(prompt, Prompt):
            return prompt
        if isinstance(prompt, str):
            return self.builder.from_text(prompt)
        return self.builder.from_token_ids(list(prompt))

    def generate(self, prompts: PromptLike | Sequence[PromptLike],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[RequestOutput]:
        """Complete raw prompts (text, token ids or built Prompts); one RequestOutput per prompt, in order."""
        if isinstance(prompts, str | Prompt) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        return self._run([self._prompt(p) for p in prompts], sampling_params)

    def chat(self, messages: list[dict] | Sequence[list[dict]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             chat_template_kwargs: dict[str, Any] | None = None,
             mm_processor_kwargs: dict[str, Any] | None = None) -> list[RequestOutput]:
        """OpenAI-style conversations (one, or a list of them) -> one RequestOutput each, in order."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = []
        for conv in conversations:
            normalized, media = load_messages(list(conv), self.media_policy)
            text = self.builder.render(normalized, True, **(chat_template_kwargs or {}))
            prompts.append(self.builder.build(text, media, mm_processor_kwargs))
        return self._run(prompts, sampling_params)

    def _run(self, prompts: list[Prompt], sampling_params) -> list[RequestOutput]:
        if sampling_params is None:
            sampling_params = self.default_sampling_params()
        params = list(sampling_params) if isinstance(sampling_params, Sequence) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"Got {len(prompts)} prompts but {len(params)} sampling params.")
        ids = [f"llm-{next(self._ids)}" for _ in prompts]
        for rid, prompt, p in zip(ids, prompts, params, strict=True):
            self.engine.add_request(rid, prompt, p)
        totals: dict[str, dict[int, CompletionOutput]] = {rid: {} for rid in ids}
        cached: dict[str, int] = {}
        try:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    cached[out.request_id] = out.num_cached_tokens
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
                                         num_cached_tokens=cached.get(rid, 0)))
        return results
