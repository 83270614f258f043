"""LLMEngine: glmv's synchronous engine core. One step is schedule() -> run() -> postprocess().

postprocess appends each sampled token (plus tokens the thinking budget forces), detokenizes incrementally and
applies the stop rules in this order: a stop token id (generation_config's EOS list, which includes `</answer>`,
unless ignore_eos; plus params.stop_token_ids; only once min_tokens are out), a stop string, then max_tokens or the
context length. Finished sequences free their KV blocks at once. Not thread-safe: AsyncEngine drives it from one thread,
`glmv.LLM` from the caller's.

Postprocess runs in two halves so the host's text work overlaps the device: when a step's tokens arrive, the
token-id rules run at once (append, stop ids, max_tokens, thinking budget; blocks freed), and the tokens are queued;
the next step() first launches its device work, then detokenizes the queue, applies stop strings and builds the
outputs while the device computes. Outputs therefore leave one step() after their tokens were sampled, and a
sequence ended by a stop string has computed (and drops) one extra token.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from glmv.config import EngineConfig, ModelConfig
from glmv.engine.client import PromptTooLongError
from glmv.engine.detokenizer import IncrementalDetokenizer
from glmv.engine.kv_cache import KVBlockPool
from glmv.engine.model_runner import ModelRunner, PendingStep
from glmv.engine.observer import NO_OBSERVER, StepObserver
from glmv.engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from glmv.engine.request import Request, RequestStatus
from glmv.engine.scheduler import Scheduler, SchedulerConfig
from glmv.inputs.prompt import Prompt
from glmv.reasoning.budget import make_budget
from glmv.sampling import FinishReason, SamplingParams
from glmv.structured.constraint import Constraint

log = logging.getLogger("glmv.engine")


@dataclass
class _QueuedToken:
    """A token appended to a sequence whose text is not produced yet."""

    token: int
    forced: bool
    logprob: float | None
    top: list[tuple[int, float]] | None
    index: int  # its 1-based position among the sequence's output tokens
    end: str | None  # "stop_id" or "length" when this token ended the sequence


@dataclass
class _Group:
    """A user request: its n sequences (or, before the fork, the one parent that prefills the shared prompt)."""

    request_id: str
    prompt: Prompt
    params: SamplingParams
    seed: int
    sequences: list[Request]
    forked: bool = False


class LLMEngine:
    def __init__(self, model_config: ModelConfig, engine_config: EngineConfig, tokenizer: Any,
                 runner: ModelRunner | None = None):
        self.model_config = model_config
        self.config = engine_config
        self.tokenizer = tokenizer
        self.max_model_len = engine_config.max_model_len or model_config.text.max_position_embeddings
        self.runner = runner or ModelRunner(model_config, engine_config, self.max_model_len)
        if runner is None and self.runner.device.type == "cuda" and not engine_config.enforce_eager \
                and self.runner.graphs_worthwhile:
            self.runner.capture_decode_graphs()
        self.block_size = engine_config.block_size
        self.pool = KVBlockPool(self.runner.num_blocks, self.block_size, engine_config.enable_prefix_caching)
        self.scheduler = Scheduler(SchedulerConfig(engine_config.max_num_seqs, engine_config.max_num_batched_tokens,
                                                   self.max_model_len), self.pool)
        self.groups: dict[str, _Group] = {}
        self._rng = random.Random(engine_config.seed)
        self._merge = model_config.vision.spatial_merge_size
        self._vocab = model_config.text.vocab_size
        assistant = tokenizer.convert_tokens_to_ids("<|assistant|>")  # where the prompt's last turn starts
        self._assistant_id = assistant if isinstance(assistant, int) else None
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.requests_finished = 0
        self.steps = 0
        self._queued: list[Request] = []  # sequences with tokens awaiting detokenization, in order
        self._inflight: PendingStep | None = None  # the step launched last, whose tokens are not taken in yet
        # called right after a step's device work is queued, when the host has the most time to spare (AsyncEngine
        # collects garbage there: glmv/engine/gc_policy.py)
        self.on_launched: Callable[[], None] | None = None
        self.observer: StepObserver = NO_OBSERVER

    def observe(self, observer: StepObserver) -> None:
        """Hand the step's hooks (glmv/engine/observer.py) to this engine and its model runner."""
        self.observer = self.runner.observer = observer

    # ---- requests ----
    def check_request(self, prompt: Prompt, params: SamplingParams) -> int:
        """Validate what a user can get wrong before anything is queued; return the resolved max_tokens."""
        n = len(prompt.token_ids)
        if n == 0:
            raise ValueError("The prompt is empty; send at least one token.")
        room = self.max_model_len - n
        if room < 1 or (params.max_tokens is not None and params.max_tokens > room):
            raise PromptTooLongError(n, self.max_model_len, params.max_tokens)
        ids = prompt.token_ids  # min/max run in C: this is on the path to every request's first token
        bad = None if 0 <= min(ids) and max(ids) < self._vocab else next(t for t in ids if not 0 <= t < self._vocab)
        if bad is not None:
            raise ValueError(f"Token id {bad} is out of the model's vocabulary [0, {self._vocab}).")
        bad = next((t for t in params.logit_bias if not 0 <= int(t) < self._vocab), None)
        if bad is not None:
            raise ValueError(f"logit_bias names token {bad}, outside the model's vocabulary [0, {self._vocab}).")
        return params.max_tokens or room

    def add_request(self, request_id: str, prompt: Prompt, params: SamplingParams) -> None:
        started = time.perf_counter()
        self._add_request(request_id, prompt, params)
        self.observer.request_added(time.perf_counter() - started)

    def _add_request(self, request_id: str, prompt: Prompt, params: SamplingParams) -> None:
        if request_id in self.groups:
            raise ValueError(f"Request id {request_id!r} is already running.")
        max_tokens = self.check_request(prompt, params)
        seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        n = params.n
        fork_at = (len(prompt) - 1) // self.block_size * self.block_size if n > 1 else 0

        def make(rid: str, index: int, seq_seed: int) -> Request:
            return Request.from_prompt(rid, prompt, params, max_tokens, seq_seed, self._merge, request_id, index)

        if n == 1:
            seqs = [make(request_id, 0, seed)]
        elif fork_at > 0:  # prefill the shared whole blocks once, then fork (see Scheduler.fork)
            parent = make(f"{request_id}#parent", 0, seed)
            parent.fork_at, parent.num_children = fork_at, n
            seqs = [parent]
        else:  # the prompt is shorter than a block: nothing worth sharing
            seqs = [make(f"{request_id}#{i}", i, seed + i) for i in range(n)]
        self.groups[request_id] = _Group(request_id, prompt, params, seed, seqs, forked=n == 1 or fork_at == 0)
        for seq in seqs:
            self._start_output(seq, append_forced=True)
            self.scheduler.add(seq)
        self.prompt_tokens_total += len(prompt)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Finish every sequence of the request now and free its blocks; returns the final (ABORT) output."""
        group = self.groups.pop(request_id, None)
        if group is None:
            return None
        outs = []
        for seq in group.sequences:
            pre = self._emit_sequence(seq) if seq.text_queue else None  # tokens not handed out yet
            if not seq.finished:
                self.scheduler.finish(seq, RequestStatus.FINISHED_ABORTED)
                text = seq.detokenizer.flush() if seq.detokenizer is not None else ""
                if pre is not None:
                    text = pre.text + text
                    outs.append(self._completion(seq, text, pre.token_ids, pre.logprobs))
                else:
                    outs.append(self._completion(seq, text, [], None))
            elif pre is not None:
                outs.append(pre)
        if not group.forked:  # aborted before the fork: report every completion index
            outs = [CompletionOutput(index=i, text="", token_ids=[], num_tokens=0, finish_reason=FinishReason.ABORT)
                    for i in range(group.params.n)]
        self.requests_finished += 1
        return RequestOutput(request_id, outs, group.prompt.token_ids, finished=True,
                             num_cached_tokens=group.sequences[0].num_cached_tokens)

    def fail_all(self) -> list[str]:
        """After an unrecoverable step error: end every request (blocks freed); return their ids."""
        ids = list(self.groups)
        for group in self.groups.values():
            for seq in group.sequences:
                seq.text_queue = []
                if not seq.finished:
                    self.scheduler.finish(seq, RequestStatus.FINISHED_ERROR)
        self.groups.clear()
        self._queued = []
        self._inflight = None
        return ids

    def has_unfinished_requests(self) -> bool:
        return bool(self.groups)

    # ---- the step ----
    def step(self) -> list[RequestOutput]:
        """Schedule and launch a step; while the device runs it, hand out the text of earlier tokens and take in the
        tokens of the step before (which ran while the host prepared this one). Sequences whose sampling needs
        their full history (penalties) make the step wait for the previous one first."""
        self.observer.step_started()
        prev = self._inflight
        if prev is not None and not self._can_overlap():
            self._finish_step(prev, None)
            prev = self._inflight = None
        sched = self.scheduler.schedule()
        pending = self.runner.launch(sched, prev) if not sched.empty else None
        if pending is not None:
            for e in pending.sampled:
                e.request.num_pending += 1
            self.steps += 1
            self.observer.launched(sum(e.num_tokens for e in sched.scheduled if e.num_tokens > 1),
                                   sum(1 for e in sched.scheduled if e.num_tokens == 1))
            if self.on_launched is not None:
                self.on_launched()
        # Computed counts advance as soon as the step is queued (even an empty step can bring an n>1 parent to its
        # fork point: its whole prefix came from the cache).
        for parent in self.scheduler.update(sched):
            self._fork(parent)
        outputs = self._emit_text()  # text of tokens taken in earlier, while the device runs
        if prev is not None:
            self._finish_step(prev, pending)
        self._inflight = pending
        self.observer.step_finished()
        return outputs

    def _can_overlap(self) -> bool:
        return not any(self.runner.sampler.needs_history(r.params) for r in self.scheduler.running)

    def _finish_step(self, step: PendingStep, next_step: PendingStep | None) -> None:
        """Wait for a step's tokens and take them in. A sequence that the thinking budget gives forced tokens now
        had its next token sampled (in `next_step`, already launched) after the wrong context: that one is dropped."""
        started = time.perf_counter()
        run = step.wait()
        self.observer.waited(time.perf_counter() - started)
        if run.result is None:
            return
        res = run.result
        for row, entry in enumerate(run.sampled):
            if row in step.discard:
                continue
            req = entry.request
            req.num_pending -= 1
            if req.finished:
                continue
            before = len(req.token_ids)
            self._append_tokens(req, res.token_ids[row], res.logprobs[row], res.top_logprobs[row])
            if (next_step is not None and not req.finished and len(req.token_ids) != before + 1
                    and id(req) in next_step.row_of):
                next_step.discard.add(next_step.row_of[id(req)])
                req.num_pending -= 1

    def _fork(self, parent: Request) -> None:
        group = self.groups[parent.group_id]
        children = [parent.fork(i, group.seed + i) for i in range(parent.num_children)]
        for child in children:  # tokens the budget forced at the start are in the shared prefix already
            self._start_output(child, append_forced=False)
        self.scheduler.fork(parent, children)
        group.sequences = children
        group.forked = True

    def _request_outputs(self, changed: dict[str, list[CompletionOutput]]) -> list[RequestOutput]:
        outputs = []
        for group_id, outs in changed.items():
            group = self.groups.get(group_id)
            if group is None:
                continue
            done = group.forked and all(s.finished and not s.text_queue for s in group.sequences)
            outputs.append(RequestOutput(group_id, outs, group.prompt.token_ids, finished=done,
                                         num_cached_tokens=group.sequences[0].num_cached_tokens))
            if done:
                del self.groups[group_id]
                self.requests_finished += 1
        return outputs

    # ---- postprocess one sequence ----
    def _start_output(self, req: Request, append_forced: bool) -> None:
        """Detokenizer and thinking budget of a new sequence. Ids the budget forces before the first token (a limit
        of zero) become known tokens now, prefilled with the prompt, and are reported with the first output."""
        p = req.params
        req.detokenizer = IncrementalDetokenizer(self.tokenizer, req.prompt.token_ids, p.stop, p.skip_special_tokens,
                                                 p.include_stop_str_in_output, p.spaces_between_special_tokens)
        budget = p.thinking_budget if p.thinking_budget is not None else self.config.max_thinking_tokens
        req.budget = make_budget(self.tokenizer, budget, max_tokens=req.max_tokens,
                                 reserved_answer_tokens=p.reserved_answer_tokens, prompt_token_ids=req.prompt.token_ids)
        forced = req.budget.on_start() if req.budget is not None else []
        if p.structured is not None:
            req.constraint = Constraint(p.structured, req.prompt.token_ids, self._assistant_id)
            for tok in forced:  # before the first token is sampled, its mask must know them
                req.constraint.accept(tok)
        if append_forced:
            req.token_ids += forced
            req.num_forced_tokens += len(forced)
        req.unreported = list(forced)
        req.stop_id_set = frozenset(self._stop_ids(p))

    def _stop_ids(self, params: SamplingParams) -> set[int]:
        ids = set() if params.ignore_eos else set(self.model_config.eos_token_ids)
        return ids | set(params.stop_token_ids)

    def _append_tokens(self, req: Request, token: int, logprob: float | None,
                       top: list[tuple[int, float]] | None) -> None:
        """First half of postprocess, when the step's tokens arrive: append the sampled token (with the ids forced
        before and after it), apply the token-id rules (stop ids, max_tokens, context length) and queue the tokens
        for `_emit_text`. A sequence that ends here frees its blocks now."""
        params = req.params
        stop_ids = req.stop_id_set if req.stop_id_set is not None else self._stop_ids(params)
        # (token, forced, already in token_ids): start-forced ids first, then the sampled one, then what it forces
        pending = [(t, True, True) for t in req.unreported] + [(token, False, False)]
        req.unreported = []
        if req.budget is not None:
            pending += [(t, True, False) for t in req.budget.on_token(token)]
        if not req.text_queue:
            self._queued.append(req)
        count = req.num_output_tokens - sum(1 for p in pending if p[2])  # output tokens handed out so far
        for tok, forced, appended in pending:
            if not appended:
                req.token_ids.append(tok)
                req.num_forced_tokens += forced
                if req.constraint is not None:
                    req.constraint.accept(tok)
            count += 1
            self.generation_tokens_total += 1
            status, end = None, None
            if not forced and tok in stop_ids and count >= params.min_tokens:
                status, end, req.stop_reason = RequestStatus.FINISHED_STOPPED, "stop_id", tok
            elif count >= req.max_tokens or req.num_prompt_tokens + count >= self.max_model_len:
                status, end = RequestStatus.FINISHED_LENGTH, "length"
            req.text_queue.append(_QueuedToken(tok, forced, 0.0 if forced else logprob, [] if forced else top,
                                               count, end))
            if status is not None:
                del req.token_ids[req.num_prompt_tokens + count:]  # start-forced ids past the end are dropped
                self.scheduler.finish(req, status)
                break

    def _emit_text(self) -> list[RequestOutput]:
        """Second half of postprocess: detokenize the queued tokens, apply stop strings, build the outputs."""
        if not self._queued:
            return []
        changed: dict[str, list[CompletionOutput]] = {}
        queued, self._queued = self._queued, []
        for req in queued:
            if req.text_queue:
                changed.setdefault(req.group_id, []).append(self._emit_sequence(req))
        return self._request_outputs(changed)

    def _emit_sequence(self, req: Request) -> CompletionOutput:
        detok, params = req.detokenizer, req.params
        queue, req.text_queue = req.text_queue, []
        new_ids: list[int] = []
        logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        text = ""
        for qt in queue:
            new_ids.append(qt.token)
            if logprobs is not None:
                logprobs.append(self._token_logprob(qt.token, qt.logprob, qt.top))
            if qt.end == "stop_id":
                text += detok.flush()
                continue
            text += detok.step([qt.token])
            if detok.stop_string is not None:
                self._stop_by_string(req, qt.index, detok.stop_string)
                break
            if qt.end == "length":
                text += detok.flush()
        return self._completion(req, text, new_ids, logprobs)

    def _stop_by_string(self, req: Request, index: int, stop: str) -> None:
        """A stop string ended at output token `index`: drop later tokens (the sequence may have run on one step)."""
        keep = req.num_prompt_tokens + index
        self.generation_tokens_total -= max(0, len(req.token_ids) - keep)
        del req.token_ids[keep:]
        req.stop_reason = stop
        if req.finished:
            req.status = RequestStatus.FINISHED_STOPPED
        else:
            self.scheduler.finish(req, RequestStatus.FINISHED_STOPPED)

    def _completion(self, req: Request, text: str, new_ids: list[int],
                    logprobs: list[TokenLogprob] | None) -> CompletionOutput:
        return CompletionOutput(index=req.index, text=text, token_ids=new_ids, num_tokens=req.num_output_tokens,
                                finish_reason=req.status.finish_reason, stop_reason=req.stop_reason,
                                logprobs=logprobs, forced_tokens=req.num_forced_tokens)

    def _token_logprob(self, token: int, logprob: float | None, top: list[tuple[int, float]] | None) -> TokenLogprob:
        decode = self.tokenizer.decode
        return TokenLogprob(token_id=token, token=decode([token]), logprob=logprob if logprob is not None else 0.0,
                            top=[(t, decode([t]), lp) for t, lp in (top or [])])

    # ---- metrics ----
    def stats(self) -> dict[str, float]:
        ps = self.pool.stats()
        vc = self.runner.vision_cache
        return {
            "running": float(self.scheduler.num_running),
            "waiting": float(self.scheduler.num_waiting),
            "kv_usage": ps.usage,
            "prefix_cache_hit_rate": ps.hit_rate,
            "kv_blocks_total": float(ps.num_blocks),
            "kv_blocks_used": float(ps.used_blocks),
            "kv_blocks_cached": float(ps.cached_blocks),
            "num_preemptions": float(self.scheduler.num_preemptions),
            "prompt_tokens_total": float(self.prompt_tokens_total),
            "generation_tokens_total": float(self.generation_tokens_total),
            "requests_finished_total": float(self.requests_finished),
            "vision_cache_hits": float(vc.hits),
            "vision_cache_misses": float(vc.misses),
            "vision_cache_bytes": float(vc.bytes),
            "vision_cache_entries": float(len(vc)),
            "vision_cache_capacity_bytes": float(vc.max_bytes),
            **self._device_memory(),
            "steps_total": float(self.steps),
            "time": time.time(),
        }

    def _device_memory(self) -> dict[str, float]:
        """CUDA memory the caching allocator has handed out and holds (KV pool, weights, graphs and vision cache
        included), for /metrics and the soak check; nothing on the CPU."""
        device = self.runner.device
        if device.type != "cuda":
            return {}
        import torch

        return {"device_memory_allocated": float(torch.cuda.memory_allocated(device)),
                "device_memory_reserved": float(torch.cuda.memory_reserved(device))}
