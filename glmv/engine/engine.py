"""LLMEngine: glmv's synchronous engine core, one step at a time.

A step is four named stages (`step()`): schedule (which sequences run, how many tokens each), launch (queue the
device work: glmv/engine/model_runner.py), emit (the output side hands out the text of tokens taken in earlier,
while the device computes) and take in (wait for the previous step's tokens and apply the token-id rules). The output
side, its stop rules and queueing live in glmv/engine/output_processor.py; this file owns the requests' lifecycle
(add, fork for n > 1, abort, fail) and the metrics. Not thread-safe: AsyncEngine drives it from one thread,
`glmv.LLM` from the caller's.
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
from glmv.engine.kv_cache import KVBlockPool
from glmv.engine.model_runner import ModelRunner
from glmv.engine.observer import NO_OBSERVER, StepObserver
from glmv.engine.output_processor import OutputProcessor, OutputRules
from glmv.engine.outputs import CompletionOutput, PromptLogprobs, RequestOutput
from glmv.engine.pending import PendingStep
from glmv.engine.prompt_logprobs import PromptScores
from glmv.engine.request import Request, RequestStatus
from glmv.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from glmv.inputs.prompt import Prompt
from glmv.sampling import FinishReason, SamplingParams

log = logging.getLogger("glmv.engine")


@dataclass
class _Group:
    """A user request: its n sequences (or, before the fork, the one parent that prefills the shared prompt)."""

    request_id: str
    prompt: Prompt
    params: SamplingParams
    seed: int
    sequences: list[Request]
    forked: bool = False
    prompt_scores: PromptScores | None = None  # asked prompt_logprobs: filled by the prefill of one sequence


class LLMEngine:
    def __init__(self, model_config: ModelConfig, engine_config: EngineConfig, tokenizer: Any,
                 runner: ModelRunner | None = None):
        self.model_config = model_config
        self.config = engine_config
        self.tokenizer = tokenizer
        self.max_model_len = engine_config.max_model_len or model_config.text.max_position_embeddings
        self.runner = runner or ModelRunner(model_config, engine_config, self.max_model_len)
        if runner is None and self.runner.device.type == "cuda" and not engine_config.enforce_eager \
                and self.runner.decode_graphs.worthwhile:
            self.runner.decode_graphs.capture()
        self.block_size = engine_config.block_size
        self.pool = KVBlockPool(self.runner.num_blocks, self.block_size, engine_config.enable_prefix_caching)
        self.scheduler = Scheduler(SchedulerConfig(engine_config.max_num_seqs, engine_config.max_num_batched_tokens,
                                                   self.max_model_len), self.pool)
        assistant = tokenizer.convert_tokens_to_ids("<|assistant|>")  # where the prompt's last turn starts
        self.output = OutputProcessor(tokenizer, OutputRules(
            eos_token_ids=tuple(model_config.eos_token_ids), max_model_len=self.max_model_len,
            default_thinking_budget=engine_config.max_thinking_tokens,
            assistant_token_id=assistant if isinstance(assistant, int) else None), self.scheduler.finish)
        self.groups: dict[str, _Group] = {}
        self._rng = random.Random(engine_config.seed)
        self._merge = model_config.vision.spatial_merge_size
        self._vocab = model_config.text.vocab_size
        self.prompt_tokens_total = 0
        self.requests_finished = 0
        self.steps = 0
        self._inflight: PendingStep | None = None  # the step launched last, whose tokens are not taken in yet
        # called right after a step's device work is queued, when the host has the most time to spare (AsyncEngine
        # collects garbage there: glmv/engine/gc_policy.py)
        self.on_launched: Callable[[], None] | None = None
        self.observer: StepObserver = NO_OBSERVER

    def observe(self, observer: StepObserver) -> None:
        """Hand the step's hooks (glmv/engine/observer.py) to this engine and its model runner."""
        self.observer = observer
        self.runner.observe(observer)

    @property
    def generation_tokens_total(self) -> int:
        return self.output.generation_tokens_total

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
        scores = None
        if params.prompt_logprobs is not None:
            scores = seqs[0].prompt_scores = PromptScores(params.prompt_logprobs, len(prompt))
        self.groups[request_id] = _Group(request_id, prompt, params, seed, seqs, forked=n == 1 or fork_at == 0,
                                         prompt_scores=scores)
        for seq in seqs:
            self.output.start(seq, append_forced=True)
            self.scheduler.add(seq)
        self.prompt_tokens_total += len(prompt)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Finish every sequence of the request now and free its blocks; returns the final (ABORT) output."""
        group = self.groups.pop(request_id, None)
        if group is None:
            return None
        outs = [out for seq in group.sequences if (out := self.output.abort(seq)) is not None]
        if not group.forked:  # aborted before the fork: report every completion index
            outs = [CompletionOutput(index=i, text="", token_ids=[], num_tokens=0, finish_reason=FinishReason.ABORT)
                    for i in range(group.params.n)]
        self.requests_finished += 1
        return RequestOutput(request_id, outs, group.prompt.token_ids, finished=True,
                             num_cached_tokens=group.sequences[0].num_cached_tokens)

    def fail_all(self) -> list[str]:
        """After an unrecoverable step error: end every request (blocks freed); return their ids."""
        ids = list(self.groups)
        self.output.drop_all()
        for group in self.groups.values():
            for seq in group.sequences:
                if not seq.finished:
                    self.scheduler.finish(seq, RequestStatus.FINISHED_ERROR)
        self.groups.clear()
        self._inflight = None
        return ids

    def has_unfinished_requests(self) -> bool:
        return bool(self.groups)

    # ---- the step ----
    def step(self) -> list[RequestOutput]:
        """Schedule and launch a step; while the device runs it, hand out the text of earlier tokens and take in the
        tokens of the step before (which ran while the host prepared this one). Sequences whose sampling reads
        their history (penalties, a grammar) get the forward launched at once and the sampling after the previous
        step's tokens are taken in, so that work on the host overlaps the forward instead of idling the device."""
        self.observer.step_started()
        prev = self._inflight
        defer = prev is not None and not self._can_overlap()
        sched = self._schedule()
        pending = self._launch(sched, prev, defer)
        if defer:
            self._take_in(prev, pending)
            prev = None
            if pending is not None:
                self.runner.sample(pending)
        outputs = self._emit()
        if prev is not None:
            self._take_in(prev, pending)
        self._inflight = pending
        self.observer.step_finished()
        return outputs

    def _can_overlap(self) -> bool:
        return not any(self.runner.sampler.needs_history(r.params) for r in self.scheduler.running)

    def _schedule(self) -> SchedulerOutput:
        return self.scheduler.schedule()

    def _launch(self, sched: SchedulerOutput, prev: PendingStep | None, defer_sampling: bool) -> PendingStep | None:
        """Queue the step's device work (reading tokens `prev` sampled on the device; the sampling left to
        `runner.sample` when deferred); advance computed counts."""
        pending = self.runner.launch(sched, prev, defer_sampling) if not sched.empty else None
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
        return pending

    def _emit(self) -> list[RequestOutput]:
        """Text of tokens taken in earlier, as one RequestOutput per request with news."""
        outputs = []
        for group_id, outs in self.output.emit().items():
            group = self.groups.get(group_id)
            if group is None:
                continue
            done = group.forked and all(s.finished and not s.output.queue for s in group.sequences)
            outputs.append(RequestOutput(group_id, outs, group.prompt.token_ids, finished=done,
                                         num_cached_tokens=group.sequences[0].num_cached_tokens,
                                         prompt_logprobs=self._prompt_logprobs(group)))
            if done:
                del self.groups[group_id]
                self.requests_finished += 1
        return outputs

    def _prompt_logprobs(self, group: _Group) -> PromptLogprobs | None:
        """The group's prompt logprobs, once, on its first output after they are all in (a prefill reaches its
        end in the step that samples the first token, so that is the output with the first token)."""
        scores = group.prompt_scores
        if scores is None or scores.sent or not scores.complete:
            return None
        scores.sent = True
        return scores.to_output(group.prompt.token_ids, self.tokenizer)

    def _take_in(self, step: PendingStep, next_step: PendingStep | None) -> None:
        """Wait for a step's tokens and hand them to the output side. A sequence that the thinking budget gives
        forced tokens now had its next token sampled (in `next_step`, already launched) after the wrong context:
        that one is dropped."""
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
            self.output.take_in(req, res.token_ids[row], res.logprobs[row], res.top_logprobs[row])
            if (next_step is not None and not req.finished and len(req.token_ids) != before + 1
                    and id(req) in next_step.row_of):
                next_step.discard.add(next_step.row_of[id(req)])
                req.num_pending -= 1

    def _fork(self, parent: Request) -> None:
        group = self.groups[parent.group_id]
        children = [parent.fork(i, group.seed + i) for i in range(parent.num_children)]
        for child in children:  # tokens the budget forced at the start are in the shared prefix already
            self.output.start(child, append_forced=False)
        self.scheduler.fork(parent, children)
        group.sequences = children
        group.forked = True

    # ---- metrics ----
    def stats(self) -> dict[str, float]:
        ps = self.pool.stats()
        vc = self.runner.encoder.cache
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
            **self._vision_tower(),
            **self._device_memory(),
            "steps_total": float(self.steps),
            "time": time.time(),
        }

    def _vision_tower(self) -> dict[str, float]:
        """The vision tower's device memory, where the model has a tower: its per-grid tables (bounded in bytes)
        and, on CUDA, its recorded graphs (bounded in slots)."""
        vision = self.runner.model.vision
        if vision is None:
            return {}
        tables = vision.grid_tables
        stats = {"vision_grid_table_bytes": float(tables.bytes), "vision_grid_table_entries": float(len(tables)),
                 "vision_grid_table_capacity_bytes": float(tables.max_bytes),
                 "vision_grid_table_capacity_entries": float(tables.capacity)}
        if vision.use_graphs:
            graphs = vision.graph_memory.usage
            stats |= {"vision_graph_bytes": float(graphs.reserved_bytes),
                      "vision_graph_in_use": float(graphs.in_use_bytes),
                      "vision_graph_entries": float(graphs.entries),
                      "vision_graph_capacity_entries": float(graphs.capacity_entries)}
        return stats

    def _device_memory(self) -> dict[str, float]:
        """CUDA memory the caching allocator has handed out and holds (KV pool, weights, graphs and vision cache
        included), and the pinned host memory PyTorch's host allocator holds and has handed out (resident memory
        that a freed tensor leaves cached), for /metrics and the soak check; nothing on the CPU."""
        device = self.runner.device
        if device.type != "cuda":
            return {}
        import torch

        out = {"device_memory_allocated": float(torch.cuda.memory_allocated(device)),
               "device_memory_reserved": float(torch.cuda.memory_reserved(device))}
        host = torch.cuda.host_memory_stats()  # the pinned host pool (staged pixels, step inputs, tokens back)
        if "allocated_bytes.current" in host and "active_bytes.current" in host:
            out["pinned_host_memory_held"] = float(host["allocated_bytes.current"])
            out["pinned_host_memory_active"] = float(host["active_bytes.current"])
        return out
