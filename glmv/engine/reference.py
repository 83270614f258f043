"""TransformersEngine: the tutorial's road (HF transformers `generate`) behind glmv's EngineClient interface.

It serves one request at a time on a worker thread and streams tokens back. It is the oracle glmv's own engine
must match token for token, and the baseline in benchmarks (`--engine transformers`).

Thinking budget (glmv/engine/budget.py): a logits processor inside the same `generate` call lets the budget
force `</think><answer>` by leaving only the forced token selectable at that step. Forced tokens are therefore
ordinary output tokens: streamed, counted toward max_tokens, decoded into the text.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch

from glmv.config import EngineConfig, ModelConfig
from glmv.engine.budget import ThinkingBudget, make_budget
from glmv.engine.client import PromptTooLongError
from glmv.engine.detokenizer import IncrementalDetokenizer
from glmv.engine.outputs import CompletionOutput, RequestOutput
from glmv.inputs.prompt import Prompt
from glmv.sampling import FinishReason, SamplingParams

log = logging.getLogger("glmv.reference")
_DONE = object()


def load_hf_model(path: Path, dtype: torch.dtype, device: str):
    from transformers import Glm4vForConditionalGeneration

    model = Glm4vForConditionalGeneration.from_pretrained(str(path), dtype=dtype)
    return model.to(device).eval()


def hf_inputs(prompt: Prompt, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """The keyword arguments transformers' Glm4v forward/generate takes for one prompt."""
    ids = torch.tensor([prompt.token_ids], dtype=torch.long, device=device)
    kw: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    mm = prompt.mm
    if not mm.empty:
        kw["mm_token_type_ids"] = torch.tensor([prompt.type_ids], dtype=torch.long, device=device)
    if mm.pixel_values is not None:
        kw["pixel_values"] = mm.pixel_values.to(device=device, dtype=dtype)
        kw["image_grid_thw"] = mm.image_grid_thw.to(device)
    if mm.pixel_values_videos is not None:
        kw["pixel_values_videos"] = mm.pixel_values_videos.to(device=device, dtype=dtype)
        kw["video_grid_thw"] = mm.video_grid_thw.to(device)
    return kw


class _Streamer:
    """Receives new tokens from generate() on the worker thread."""

    def __init__(self, sink: queue.SimpleQueue, prompt_len: int):
        self.sink = sink
        self.prompt_len = prompt_len
        self.first = True

    def put(self, value: torch.Tensor) -> None:
        if self.first:  # generate() first pushes the prompt
            self.first = False
            return
        self.sink.put(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


class _StopFlag:
    """A StoppingCriteria that ends generation when the request was aborted or a stop string matched."""

    def __init__(self):
        self.stop = False

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.stop, dtype=torch.bool, device=input_ids.device)


class _BudgetForcing:
    """A LogitsProcessor that drives a ThinkingBudget: it feeds the budget every new output token and, when the
    budget asks for forced ids, makes the next one the only selectable token (greedy or sampled alike)."""

    def __init__(self, budget: ThinkingBudget, prompt_len: int):
        self.budget = budget
        self.prompt_len = prompt_len
        self.seen = prompt_len
        self.started = False
        self.pending: list[int] = []
        self.forced_positions: list[int] = []  # output indices of forced tokens (read by the streaming side)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.started:
            self.started = True
            self.pending += self.budget.on_start()
        for token in input_ids[0, self.seen :].tolist():
            self.pending += self.budget.on_token(token)
        self.seen = input_ids.shape[1]
        if not self.pending:
            return scores
        forced = self.pending.pop(0)
        self.forced_positions.append(self.seen - self.prompt_len)
        out = torch.full_like(scores, float("-inf"))
        out[:, forced] = 0.0
        return out

    def forced_before(self, num_tokens: int) -> int:
        """How many of the first `num_tokens` output tokens were forced."""
        return sum(1 for p in self.forced_positions if p < num_tokens)


class TransformersEngine:
    # HF generate streams token ids only; doors refuse logprobs requests on this engine instead of returning none.
    computes_logprobs = False
    computes_prompt_logprobs = False

    def __init__(self, model_config: ModelConfig, engine_config: EngineConfig, tokenizer: Any):
        self.model_config = model_config
        self.config = engine_config
        self.tokenizer = tokenizer
        self.device = engine_config.resolved_device
        self.dtype = engine_config.torch_dtype
        self.max_model_len = engine_config.max_model_len or model_config.text.max_position_embeddings
        self.model = load_hf_model(model_config.path, self.dtype, self.device)
        self._lock = threading.Lock()
        self._flags: dict[str, _StopFlag] = {}
        self._running = 0
        self._waiting = 0

    def stage_prompt(self, prompt: Prompt) -> Prompt:
        """Nothing to stage: HF generate takes the pixels as the processor made them."""
        return prompt

    async def start(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None

    def stats(self) -> dict[str, float]:
        return {"running": float(self._running), "waiting": float(self._waiting), "kv_usage": 0.0,
                "prefix_cache_hit_rate": 0.0}

    async def abort(self, request_id: str) -> None:
        flag = self._flags.get(request_id)
        if flag is not None:
            flag.stop = True

    def _generate_kwargs(self, prompt: Prompt, params: SamplingParams, max_new: int) -> dict[str, Any]:
        eos = [] if params.ignore_eos else list(self.model_config.eos_token_ids)
        eos += [t for t in params.stop_token_ids if t not in eos]
        kw: dict[str, Any] = {
            "max_new_tokens": max_new,
            "eos_token_id": eos or None,
            "pad_token_id": self.tokenizer.pad_token_id,
            "do_sample": not params.greedy,
            "repetition_penalty": params.repetition_penalty,
            "min_new_tokens": params.min_tokens or None,
        }
        if not params.greedy:
            kw.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k if params.top_k > 0 else None)
            if params.min_p > 0:
                kw["min_p"] = params.min_p
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        if params.logit_bias:
            kw["sequence_bias"] = {(int(t),): float(b) for t, b in params.logit_bias.items()}
        return kw

    async def generate(self, prompt: Prompt, params: SamplingParams, request_id: str) -> AsyncIterator[RequestOutput]:
        room = self.max_model_len - len(prompt)
        if room < 1 or (params.max_tokens is not None and params.max_tokens > room):
            raise PromptTooLongError(len(prompt), self.max_model_len, params.max_tokens)
        max_new = params.max_tokens or room
        for index in range(params.n):
            async for out in self._generate_one(prompt, params, request_id, index, max_new):
                yield out

    async def _generate_one(
        self, prompt: Prompt, params: SamplingParams, request_id: str, index: int, max_new: int
    ) -> AsyncIterator[RequestOutput]:
        loop = asyncio.get_running_loop()
        sink: queue.SimpleQueue = queue.SimpleQueue()
        flag = _StopFlag()
        self._flags[request_id] = flag
        detok = IncrementalDetokenizer(
            self.tokenizer, prompt.token_ids, params.stop, params.skip_special_tokens,
            params.include_stop_str_in_output,
        )
        kwargs = self._generate_kwargs(prompt, params, max_new)
        inputs = hf_inputs(prompt, self.device, self.dtype)
        budget = make_budget(self.tokenizer, params.thinking_budget, max_tokens=max_new,
                             reserved_answer_tokens=params.reserved_answer_tokens, prompt_token_ids=prompt.token_ids)
        forcing = _BudgetForcing(budget, len(prompt)) if budget is not None else None

        def work() -> None:
            try:
                with self._lock:
                    self._waiting -= 1
                    self._running += 1
                    try:
                        if params.seed is not None:
                            torch.manual_seed(params.seed + index)
                        from transformers import LogitsProcessorList, StoppingCriteriaList

                        with torch.inference_mode():
                            self.model.generate(
                                **inputs, **kwargs, streamer=_Streamer(sink, len(prompt)),
                                stopping_criteria=StoppingCriteriaList([flag]),
                                logits_processor=LogitsProcessorList([forcing] if forcing is not None else []),
                            )
                    finally:
                        self._running -= 1
            except Exception as exc:  # noqa: BLE001 - surfaced to the awaiting request
                sink.put(exc)
            sink.put(_DONE)

        self._waiting += 1
        fut = loop.run_in_executor(None, work)
        # ignore_eos ignores the model's EOS ids only; stop_token_ids still end the sequence (as in vLLM)
        eos = (set() if params.ignore_eos else set(self.model_config.eos_token_ids)) | set(params.stop_token_ids)
        num = 0
        finish: FinishReason | None = None
        stop_reason: int | str | None = None
        try:
            while True:
                item = await loop.run_in_executor(None, sink.get)
                if item is _DONE:
                    break
                if isinstance(item, Exception):
                    raise item
                if finish is not None:
                    continue
                ids = item
                num += len(ids)
                text_ids = [t for t in ids if t not in eos]
                delta = detok.step(text_ids)
                if detok.stop_string is not None:
                    finish, stop_reason = FinishReason.STOP, detok.stop_string
                    flag.stop = True
                elif ids and ids[-1] in eos and num > params.min_tokens - 1:
                    finish, stop_reason = FinishReason.STOP, ids[-1]
                    delta += detok.flush()
                elif num >= max_new:
                    finish = FinishReason.LENGTH
                    delta += detok.flush()
                forced = forcing.forced_before(num) if forcing is not None else 0
                out = CompletionOutput(index=index, text=delta, token_ids=ids, num_tokens=num,
                                       finish_reason=finish, stop_reason=stop_reason, forced_tokens=forced)
                yield RequestOutput(request_id, [out], prompt.token_ids, finished=finish is not None and index == params.n - 1)
            if finish is None:  # aborted, or generate() stopped on its own (e.g. model max length)
                finish = FinishReason.ABORT if flag.stop else FinishReason.LENGTH
                forced = forcing.forced_before(num) if forcing is not None else 0
                out = CompletionOutput(index=index, text=detok.flush(), token_ids=[], num_tokens=num, finish_reason=finish,
                                       forced_tokens=forced)
                yield RequestOutput(request_id, [out], prompt.token_ids, finished=index == params.n - 1)
        finally:
            flag.stop = True
            await fut
            self._flags.pop(request_id, None)
