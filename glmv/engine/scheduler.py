"""Scheduler: which sequences run in the next step and how many tokens each, under a token budget.

Each step (continuous batching, chunked prefill):
1. Running sequences first, oldest first: a decode costs one token, an unfinished prefill takes what is left of the
   budget (so a 5,000-token image prompt is prefilled in chunks while the decodes keep going every step). When the
   KV pool is out of blocks, the newest running sequence is preempted: its blocks are freed and it goes back to the
   front of the waiting queue to be recomputed later (its generated tokens are kept and re-prefilled).
2. Then waiting sequences, in arrival order, while budget, `max_num_seqs` and blocks allow; each first takes the
   longest cached prefix from the KV pool.
An n>1 parent is prefilled up to its fork point (whole blocks) and then replaced by its children, which share
those blocks. The scheduler does no tensor work; the pool it drives is any object with KVBlockPool's methods.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from glmv.engine.request import Request, RequestStatus


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int


@dataclass
class ScheduledRequest:
    request: Request
    start: int  # tokens with KV before this step
    num_tokens: int  # tokens computed this step

    @property
    def end(self) -> int:
        return self.start + self.num_tokens

    @property
    def samples(self) -> bool:
        """This step reaches the end of the known tokens, so its last logits pick the next token."""
        return self.end == self.request.num_tokens and self.request.fork_at is None


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, config: SchedulerConfig, pool):
        self.config = config
        self.pool = pool
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    # ---- queues ----
    def add(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def finish(self, request: Request, status: RequestStatus) -> None:
        """End a sequence now (finished, aborted or failed): leave the queues and free its blocks at once."""
        if request.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED):
            try:
                self.waiting.remove(request)
            except ValueError:
                pass
        elif request.status is RequestStatus.RUNNING:
            try:
                self.running.remove(request)
            except ValueError:
                pass
        request.status = status
        request.mm_embeds.clear()
        self.pool.free(request)

    # ---- one step ----
    def _chunk(self, request: Request, start: int, budget: int) -> int:
        limit = request.num_tokens if request.fork_at is None else request.fork_at
        if request.num_pending and (request.num_tokens - request.num_prompt_tokens >= request.max_tokens
                                    or request.num_tokens >= self.config.max_model_len):
            return 0  # the token still on the device is the sequence's last: nothing follows it
        return min(limit - start, budget)

    def _preempt(self, request: Request) -> None:
        self.pool.free(request)
        request.num_computed_tokens = 0
        request.mm_embeds.clear()
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            num_new = self._chunk(req, req.num_computed_tokens, budget)
            if num_new <= 0:
                i += 1
                continue
            while not self.pool.allocate(req, num_new):
                victim = self.running.pop()
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is req:
                    break
            else:
                out.scheduled.append(ScheduledRequest(req, req.num_computed_tokens, num_new))
                budget -= num_new
                i += 1
                continue
            break  # the request itself was preempted: no room for anything else this step
        if out.preempted:
            return out
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            req = self.waiting[0]
            if req.num_pending:  # preempted while its last token was still on the device: wait for it
                break
            limit = req.fork_at if req.fork_at is not None else None
            cached = self.pool.lookup(req, limit)
            num_cached = len(cached) * self.pool.block_size
            if req.fork_at is not None and num_cached >= req.fork_at:
                cached = cached[: req.fork_at // self.pool.block_size]
                num_cached = req.fork_at
            num_new = self._chunk(req, num_cached, budget)
            if num_new <= 0 and req.fork_at is None:
                break
            if not self.pool.allocate(req, max(num_new, 0), cached):
                break
            self.waiting.popleft()
            if not req.admitted:
                req.num_cached_tokens = num_cached
                self.pool.record_lookup(req.num_tokens, num_cached)
                req.admitted = True
            req.num_computed_tokens = num_cached
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            if num_new > 0:
                out.scheduled.append(ScheduledRequest(req, num_cached, num_new))
                budget -= num_new
        return out

    def update(self, out: SchedulerOutput) -> list[Request]:
        """Once the step is launched (nothing here needs its results): advance computed counts and cache full blocks
        whose tokens are known. Returns n>1 parents that reached their fork point (the caller forks them)."""
        for s in out.scheduled:
            req = s.request
            if req.status is not RequestStatus.RUNNING:
                continue  # aborted while the step ran
            req.num_computed_tokens = s.end
            self.pool.cache_computed_blocks(req)
        return [r for r in self.running if r.fork_at is not None and r.num_computed_tokens >= r.fork_at]

    def fork(self, parent: Request, children: list[Request]) -> None:
        """Replace an n>1 parent in the running queue by its children, which share its (whole) blocks."""
        at = self.running.index(parent)
        for child in children:
            self.pool.fork(parent, child)
            child.status = RequestStatus.RUNNING
        self.running[at:at + 1] = children
        parent.status = RequestStatus.FORKED
        self.pool.free(parent)
