"""VllmEngine: glmv's EngineClient on top of vLLM, for users who outgrow one GPU (`glmv serve --engine vllm`).

vLLM runs in a worker process with its own Python (see vllm_process.py / vllm_worker.py); this class turns glmv's
Prompt and SamplingParams into vLLM's and vLLM's outputs back into glmv's RequestOutput deltas, so every door
(server, chat, batch, web page) and glmv's reasoning split work unchanged on top of it:
- text prompts go as their token ids; prompts with media as the token ids of the rendered text (one placeholder
  per item) plus the decoded media (Prompt.raw_media), because vLLM runs its own processor and expands them;
- stop ids come from glmv's ModelConfig (the checkpoint's generation_config, `</answer>` included), sent explicitly,
  so a vLLM that ignores generation_config still stops after the answer;
- the thinking budget (per request or --max-thinking-tokens, and the reserved answer budget) uses glmv's own
  ThinkingBudget: a first pass runs to the budget's limit; if it ends there with the thought still open, glmv
  appends `</think><answer>` (as forced tokens) and a second pass continues from prompt + output + forced ids
  (vLLM's prefix cache makes that re-prefill cheap). A stop string that spans the two passes is not seen.
- tensor / pipeline parallelism and any other vLLM engine argument pass straight through (docs/SCALE_OUT.md).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from glmv.backends.vllm_process import VllmProcess, VllmUnavailableError, resolve_vllm_python, worker_env
from glmv.config import EngineConfig, ModelConfig
from glmv.engine.budget import ThinkingBudget, make_budget
from glmv.engine.client import EngineOverloadedError, PromptTooLongError
from glmv.engine.outputs import CompletionOutput, PromptLogprobs, PromptTokenLogprob, RequestOutput, TokenLogprob
from glmv.inputs.prompt import Prompt
from glmv.options import RuntimeOptions
from glmv.sampling import FinishReason, SamplingParams
from glmv.structured.spec import StructuredSpec

log = logging.getLogger("glmv.vllm")

__all__ = ["VllmEngine", "VllmUnavailableError", "engine_args_for"]

_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.ABORT,
           "error": FinishReason.ERROR}
_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


class VllmEngineDeadError(RuntimeError):
    """The vLLM worker is gone; requests fail with this until glmv is restarted."""


def engine_args_for(model_config: ModelConfig, cfg: EngineConfig) -> dict[str, Any]:
    """vLLM AsyncEngineArgs keyword arguments for glmv's configs (plain builtins: they cross a socket)."""
    args: dict[str, Any] = {
        "model": str(model_config.path),
        "dtype": _DTYPES[str(cfg.torch_dtype).removeprefix("torch.")],
        "max_num_seqs": cfg.max_num_seqs,
        "max_num_batched_tokens": cfg.max_num_batched_tokens,
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "enforce_eager": cfg.enforce_eager,
        "seed": cfg.seed,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "pipeline_parallel_size": getattr(cfg, "pipeline_parallel_size", 1),
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "trust_remote_code": cfg.trust_remote_code,
        # glmv's "auto" (the checkpoint's) and "vllm" (ignore it) mean the same to vLLM; a folder passes through.
        "generation_config": cfg.generation_config or "vllm",
        "disable_log_stats": False,
        # Structured outputs start after the thought: vLLM's GLM reasoning parser finds its end (`</think>`).
        "reasoning_parser": "glm45",
        # Compact JSON, as glmv's own engine writes it: free whitespace lets a model wander until max_tokens.
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
    }
    if cfg.max_model_len is not None:
        args["max_model_len"] = cfg.max_model_len
    if cfg.kv_cache_memory is not None:
        args["kv_cache_memory_bytes"] = cfg.kv_cache_memory
    if cfg.quantization is not None:  # the same spelling: vLLM quantizes a bf16 checkpoint to FP8 at load too
        args["quantization"] = cfg.quantization
    args.update(getattr(cfg, "vllm_engine_args", None) or {})
    return args


def _wire_prompt(prompt: Prompt, tokenizer: Any, extra_ids: list[int] | None = None) -> dict[str, Any]:
    """The prompt as the worker takes it: token ids, plus (with media) the decoded media.

    With media, the ids are those of the rendered text (one placeholder per item), not glmv's expanded ones:
    vLLM runs its own processor, which expands the placeholders. `extra_ids` (a continuation) follow either way.
    """
    extra = list(extra_ids or [])
    if prompt.mm.empty and prompt.raw_media is None:
        return {"prompt_token_ids": list(prompt.token_ids) + extra}
    media = prompt.raw_media
    if media is None or prompt.text is None:
        raise RuntimeError(
            "The vllm engine got a prompt with media but without the decoded media and rendered text "
            "(Prompt.raw_media / Prompt.text); vLLM runs its own processor and needs them. The PromptBuilder "
            "in use does not fill them in; this is a glmv bug to report."
        )
    images = []
    for im in media.images:
        rgb = im if im.mode == "RGB" else im.convert("RGB")
        images.append({"mode": "RGB", "size": list(rgb.size), "data": rgb.tobytes()})
    videos = []
    for frames, meta in zip(media.videos, media.video_metadata, strict=False):
        import numpy as np

        arr = np.ascontiguousarray(frames.numpy() if hasattr(frames, "numpy") else frames)
        videos.append({"shape": list(arr.shape), "dtype": str(arr.dtype), "data": arr.tobytes(),
                       "metadata": _video_metadata(meta, arr.shape[0])})
    ids = list(tokenizer.encode(prompt.text, add_special_tokens=False))
    return {"prompt_token_ids": ids + extra, "images": images, "videos": videos,
            "mm_processor_kwargs": dict(prompt.mm_processor_kwargs or {})}


def _video_metadata(meta: Any, num_frames: int) -> dict[str, Any]:
    """transformers' VideoMetadata (or a dict) -> the dict vLLM's GLM-4.1V processor reads; frames already sampled."""
    get = meta.get if isinstance(meta, dict) else (lambda k, d=None: getattr(meta, k, d))
    fps = float(get("fps", None) or 2.0)
    indices = get("frames_indices", None)
    indices = [int(i) for i in indices] if indices is not None else list(range(num_frames))
    total = get("total_num_frames", None) or (max(indices) + 1 if indices else num_frames)
    duration = get("duration", None) or total / fps
    return {"fps": fps, "frames_indices": indices, "total_num_frames": int(total), "duration": float(duration),
            "video_backend": str(get("video_backend", None) or "pyav"), "do_sample_frames": False}


def _wire_structured(spec: StructuredSpec | None) -> dict[str, Any] | None:
    """A constraint as vLLM's StructuredOutputsParams fields (builtins: they cross the socket), or None."""
    if spec is None:
        return None
    if spec.kind == "json_schema":
        schema = json.loads(spec.source)
        return {"json": schema, "disable_additional_properties": spec.strict}
    if spec.kind == "json_object":
        return {"json_object": True}
    if spec.kind == "choice":
        return {"choice": json.loads(spec.source)}
    return {spec.kind: spec.source}  # regex, grammar


def _wire_params(params: SamplingParams, eos_ids: tuple[int, ...], **override: Any) -> dict[str, Any]:
    """vLLM SamplingParams keyword arguments; stop ids from glmv's generation_config unless ignore_eos."""
    stop_ids = [] if params.ignore_eos else list(eos_ids)
    stop_ids += [t for t in params.stop_token_ids if t not in stop_ids]
    out: dict[str, Any] = {
        "n": params.n, "max_tokens": params.max_tokens,
        "temperature": 0.0 if params.greedy else params.temperature,
        "top_p": params.top_p, "top_k": params.top_k if params.top_k > 0 else -1, "min_p": params.min_p,
        "repetition_penalty": params.repetition_penalty, "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty, "seed": params.seed, "stop": list(params.stop),
        "stop_token_ids": stop_ids, "include_stop_str_in_output": params.include_stop_str_in_output,
        "ignore_eos": params.ignore_eos, "min_tokens": params.min_tokens, "logprobs": params.logprobs,
        "skip_special_tokens": params.skip_special_tokens, "prompt_logprobs": params.prompt_logprobs,
        "spaces_between_special_tokens": params.spaces_between_special_tokens,
        "logit_bias": {int(k): float(v) for k, v in params.logit_bias.items()} or None,
        "structured_outputs": _wire_structured(params.guided),
    }
    out.update(override)
    return out


def _prompt_logprobs(rows: list | None, num_prompt_tokens: int) -> PromptLogprobs | None:
    """The worker's prompt logprobs (None, then per token [(id, logprob, rank, text)]) for the first
    `num_prompt_tokens` tokens: a continuation pass's prompt is longer than the user's."""
    if rows is None:
        return None
    return [None if row is None else {tid: PromptTokenLogprob(lp, rank, tok or "") for tid, lp, rank, tok in row}
            for row in rows[:num_prompt_tokens]]


def _logprobs(rows: list | None) -> list[TokenLogprob] | None:
    if rows is None:
        return None
    return [TokenLogprob(token_id=tid, token=tok or "", logprob=lp, top=[(a, b or "", c) for a, b, c in top])
            for tid, tok, lp, top in rows]


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


@dataclass
class _SequenceText:
    """The tokens and text one sequence has streamed so far, across passes.

    vLLM holds back the bytes of a character that the last token left incomplete and drops them when the sequence
    (or a pass) ends; glmv's detokenizer flushes them (as U+FFFD), so the backend does too.
    """

    ids: list[int]
    text: str = ""

    def add(self, out: CompletionOutput) -> CompletionOutput:
        self.ids += out.token_ids
        self.text += out.text
        return out

    def held_back(self, tokenizer: Any, skip_special_tokens: bool) -> str:
        whole = tokenizer.decode(self.ids, skip_special_tokens=skip_special_tokens)
        tail = whole[len(self.text):] if whole.startswith(self.text) else ""
        self.text += tail
        return tail


class VllmEngine:
    """EngineClient over a vLLM worker process. Construction starts vLLM and returns once the model is loaded."""

    computes_logprobs = True
    computes_prompt_logprobs = True  # vLLM scores the prompt; its first output carries them

    def stage_prompt(self, prompt: Prompt) -> Prompt:
        """Nothing to stage: the worker process receives the processor's pixels as they are."""
        return prompt

    def __init__(self, model_config: ModelConfig, engine_config: EngineConfig, tokenizer: Any,
                 python: str | None = None, startup_timeout_s: float | None = None):
        self.model_config = model_config
        self.config = engine_config
        self.tokenizer = tokenizer
        self.python = resolve_vllm_python(python or engine_config.vllm_python)
        timeout = startup_timeout_s or RuntimeOptions.from_env().vllm_startup_timeout_s
        self.process = VllmProcess(self.python, worker_env(self.python, engine_config.device), timeout)
        ready = self.process.start(engine_args_for(model_config, engine_config))
        self.max_model_len: int = int(ready["max_model_len"])
        self.vllm_version: str = str(ready.get("vllm_version"))
        log.info("vLLM %s ready on %s (max_model_len %d)", self.vllm_version, ready.get("platform"),
                 self.max_model_len)
        self._streams: dict[str, _Stream] = {}
        self._subs: dict[str, set[str]] = defaultdict(set)  # request id -> its live vLLM request ids
        self._ids = itertools.count()
        self._dead: str | None = None
        self._stats: dict[str, float] = {"running": 0.0, "waiting": 0.0, "kv_usage": 0.0,
                                         "prefix_cache_hit_rate": 0.0}
        self.process.listen(self._on_message, self._on_exit)

    # ---- EngineClient ----
    async def start(self) -> None:
        return None

    async def shutdown(self) -> None:
        await asyncio.to_thread(self.process.close)

    def stats(self) -> dict[str, float]:
        return dict(self._stats)

    async def abort(self, request_id: str) -> None:
        for sub in list(self._subs.get(request_id, ())):
            self._send_quietly({"type": "abort", "id": sub})
            stream = self._streams.get(sub)
            if stream is not None:
                stream.queue.put_nowait({"type": "aborted"})

    async def generate(self, prompt: Prompt, params: SamplingParams, request_id: str) -> AsyncIterator[RequestOutput]:
        if self._dead is not None:
            raise VllmEngineDeadError(f"The vllm engine stopped: {self._dead}")
        limit = self.config.max_num_seqs + self.config.max_waiting_requests
        if len(self._subs) >= limit:  # as glmv's engine: beyond the running and waiting room, answer 503
            raise EngineOverloadedError(f"{len(self._subs)} requests are running or waiting (limit {limit}).")
        room = self.max_model_len - len(prompt)
        if room < 1 or (params.max_tokens is not None and params.max_tokens > room):
            raise PromptTooLongError(len(prompt), self.max_model_len, params.max_tokens)
        max_new = params.max_tokens or room
        budgets = [self._budget(prompt, params, max_new) for _ in range(params.n)]
        self._subs.setdefault(request_id, set())  # in flight from now on (the overload check above)
        try:
            if budgets[0] is None:
                async for out in self._single_pass(prompt, params, request_id, max_new):
                    yield out
            else:
                async for out in self._budgeted(prompt, params, request_id, max_new, budgets):
                    yield out
        finally:
            self._subs.pop(request_id, None)

    # ---- one vLLM request ----
    async def _vllm_stream(self, request_id: str, wire_prompt: dict[str, Any], wire_params: dict[str, Any]
                           ) -> AsyncIterator[dict[str, Any]]:
        """Messages of one vLLM request until it finishes; aborts it in vLLM if the caller stops early."""
        sub = f"{request_id}-{next(self._ids)}"
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[sub] = stream
        self._subs[request_id].add(sub)
        finished = False
        try:
            msg = {"type": "generate", "id": sub, "prompt": wire_prompt, "params": wire_params}
            if "prompt_token_ids" in wire_prompt:
                self.process.send(msg)
            else:  # media can be megabytes: keep the event loop free while it is written
                await asyncio.to_thread(self.process.send, msg)
            while True:
                msg = await stream.queue.get()
                kind = msg["type"]
                if kind == "output":
                    finished = msg["finished"]
                    yield msg
                    if finished:
                        return
                elif kind == "aborted":
                    finished = True
                    yield {"type": "aborted"}
                    return
                elif kind == "dead":
                    finished = True
                    raise VllmEngineDeadError(f"The vllm engine stopped: {msg['message']}")
                else:
                    finished = True
                    raise self._request_error(msg, wire_prompt, wire_params)
        finally:
            self._streams.pop(sub, None)
            self._subs.get(request_id, set()).discard(sub)
            if not finished:
                self._send_quietly({"type": "abort", "id": sub})

    def _request_error(self, msg: dict[str, Any], wire_prompt: dict[str, Any], wire_params: dict[str, Any]
                       ) -> Exception:
        if msg.get("kind") == "too_long":
            n = len(wire_prompt.get("prompt_token_ids") or [])
            return PromptTooLongError(n or self.max_model_len, self.max_model_len, wire_params.get("max_tokens"))
        if msg.get("kind") == "invalid":
            return ValueError(msg.get("message", "vLLM refused the request."))
        return RuntimeError(f"vLLM failed on this request: {msg.get('message')}")

    # ---- no thinking budget: one vLLM request carries all n sequences ----
    async def _single_pass(self, prompt: Prompt, params: SamplingParams, request_id: str, max_new: int
                           ) -> AsyncIterator[RequestOutput]:
        seqs: dict[int, _SequenceText] = defaultdict(lambda: _SequenceText([]))
        done: set[int] = set()
        wire = _wire_params(params, self.model_config.eos_token_ids, max_tokens=max_new)
        async for msg in self._vllm_stream(request_id, _wire_prompt(prompt, self.tokenizer), wire):
            if msg["type"] == "aborted":
                outs = [CompletionOutput(i, "", [], len(seqs[i].ids), FinishReason.ABORT) for i in range(params.n)
                        if i not in done]
                yield RequestOutput(request_id, outs, prompt.token_ids, finished=True)
                return
            outs = []
            for o in msg["outputs"]:
                seq = seqs[o["index"]]
                out = seq.add(self._completion(o, o["index"], len(seq.ids) + len(o["token_ids"])))
                if out.finish_reason is FinishReason.LENGTH:  # stops cut their text on purpose; lengths do not
                    out.text += seq.held_back(self.tokenizer, params.skip_special_tokens)
                if out.finished:
                    done.add(o["index"])
                outs.append(out)
            yield RequestOutput(request_id, outs, prompt.token_ids, finished=msg["finished"],
                                num_cached_tokens=msg.get("num_cached_tokens", 0),
                                prompt_logprobs=_prompt_logprobs(msg.get("prompt_logprobs"), len(prompt)))

    @staticmethod
    def _completion(o: dict[str, Any], index: int, num_tokens: int, hold_finish: bool = False) -> CompletionOutput:
        finish = None if hold_finish else _FINISH.get(o["finish_reason"]) if o["finish_reason"] else None
        stop_reason = o["stop_reason"]
        if finish is FinishReason.STOP and stop_reason is None and o["token_ids"]:
            stop_reason = o["token_ids"][-1]  # vLLM leaves it None for the tokenizer's own EOS
        return CompletionOutput(index=index, text=o["text"], token_ids=list(o["token_ids"]), num_tokens=num_tokens,
                                finish_reason=finish, stop_reason=stop_reason if finish else None,
                                logprobs=_logprobs(o.get("logprobs")))

    # ---- thinking budget: per sequence, a pass to the limit, then (maybe forced) a continuation ----
    def _budget(self, prompt: Prompt, params: SamplingParams, max_new: int) -> ThinkingBudget | None:
        return make_budget(self.tokenizer, params.thinking_budget, max_tokens=max_new,
                           reserved_answer_tokens=getattr(params, "reserved_answer_tokens", None),
                           prompt_token_ids=prompt.token_ids)

    async def _budgeted(self, prompt: Prompt, params: SamplingParams, request_id: str, max_new: int,
                        budgets: list[ThinkingBudget | None]) -> AsyncIterator[RequestOutput]:
        scores: list[PromptLogprobs | None] = []  # sequence 0's first pass files the prompt logprobs here
        seqs = [self._budgeted_sequence(prompt, params, request_id, i, max_new, budgets[i], scores)
                for i in range(params.n)]
        pending = {asyncio.ensure_future(anext(s)): i for i, s in enumerate(seqs)}
        finished = 0
        try:
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    try:
                        out = fut.result()
                    except StopAsyncIteration:
                        continue
                    if out.finished:
                        finished += 1
                    else:
                        pending[asyncio.ensure_future(anext(seqs[i]))] = i
                    yield RequestOutput(request_id, [out], prompt.token_ids, finished=finished == params.n,
                                        prompt_logprobs=scores.pop() if scores else None)
        finally:
            for fut in pending:
                fut.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for s in seqs:
                await s.aclose()

    async def _budgeted_sequence(self, prompt: Prompt, params: SamplingParams, request_id: str, index: int,
                                 max_new: int, budget: ThinkingBudget, scores: list[PromptLogprobs | None]
                                 ) -> AsyncIterator[CompletionOutput]:
        """One sequence in passes; the first pass of sequence 0 asks vLLM for the prompt logprobs (if wanted) and
        puts them in `scores` (trimmed to the user's prompt: a continuation's prompt includes generated tokens)."""
        seed = None if params.seed is None else params.seed + index
        wants_scores = index == 0 and params.prompt_logprobs is not None

        def take_scores(msg: dict[str, Any]) -> None:
            nonlocal wants_scores
            if wants_scores and msg.get("prompt_logprobs") is not None:
                scores.append(_prompt_logprobs(msg["prompt_logprobs"], len(prompt)))
                wants_scores = False

        eos = self.model_config.eos_token_ids
        seq = _SequenceText([])
        forced = budget.on_start()
        limit = budget.limit
        if not forced and limit is not None and limit > 0:
            first_max = min(limit, max_new)
            wire = _wire_params(params, eos, n=1, seed=seed, max_tokens=first_max,
                                min_tokens=min(params.min_tokens, first_max),
                                prompt_logprobs=params.prompt_logprobs if wants_scores else None)
            async for msg in self._vllm_stream(request_id, _wire_prompt(prompt, self.tokenizer), wire):
                if msg["type"] == "aborted":
                    yield CompletionOutput(index, "", [], len(seq.ids), FinishReason.ABORT)
                    return
                take_scores(msg)
                for o in msg["outputs"]:
                    for t in o["token_ids"]:
                        forced = budget.on_token(t) or forced
                    count = len(seq.ids) + len(o["token_ids"])
                    at_limit = o["finish_reason"] == "length" and count < max_new
                    out = seq.add(self._completion(o, index, count, hold_finish=at_limit))
                    if out.finish_reason is FinishReason.LENGTH:
                        out.text += seq.held_back(self.tokenizer, params.skip_special_tokens)
                    yield out
                    if out.finished:
                        return
        if not forced and not seq.ids:
            return  # the first pass made nothing: nothing to continue
        generated = list(seq.ids)
        held_back = seq.held_back(self.tokenizer, params.skip_special_tokens)
        if held_back or forced:
            text = held_back + (self.tokenizer.decode(forced, skip_special_tokens=False) if forced else "")
            seq.ids += forced
            seq.text += text[len(held_back):]
            yield CompletionOutput(index, text, list(forced), len(seq.ids), forced_tokens=len(forced))
        remaining = max_new - len(seq.ids)
        if remaining <= 0:
            yield CompletionOutput(index, "", [], len(seq.ids), FinishReason.LENGTH, forced_tokens=len(forced))
            return
        wire_prompt = _wire_prompt(prompt, self.tokenizer, extra_ids=generated + list(forced))
        wire = _wire_params(params, eos, n=1, seed=seed, max_tokens=remaining,
                            min_tokens=max(0, params.min_tokens - len(seq.ids)),
                            prompt_logprobs=params.prompt_logprobs if wants_scores else None)
        async for msg in self._vllm_stream(request_id, wire_prompt, wire):
            if msg["type"] == "aborted":
                yield CompletionOutput(index, "", [], len(seq.ids), FinishReason.ABORT, forced_tokens=len(forced))
                return
            take_scores(msg)
            for o in msg["outputs"]:
                out = seq.add(self._completion(o, index, len(seq.ids) + len(o["token_ids"])))
                out.forced_tokens = len(forced)
                if out.finish_reason is FinishReason.LENGTH:
                    out.text += seq.held_back(self.tokenizer, params.skip_special_tokens)
                yield out
                if out.finished:
                    return

    # ---- messages from the worker (reader thread) ----
    def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "stats":
            self._stats = {k: float(msg[k]) for k in ("running", "waiting", "kv_usage", "prefix_cache_hit_rate")}
            return
        stream = self._streams.get(msg.get("id", ""))
        if stream is not None:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, msg)

    def _on_exit(self, reason: str) -> None:
        self._dead = reason
        for stream in list(self._streams.values()):
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, {"type": "dead", "message": reason})
        if "shut down" not in reason:
            log.error("vLLM worker ended: %s", reason)

    def _send_quietly(self, msg: dict[str, Any]) -> None:
        if self._dead is None:
            try:
                self.process.send(msg)
            except OSError:
                pass

