"""Scheduler with a fake KV pool: token budget, decode-first chunked prefill, max_num_seqs, preemption, fork."""

from __future__ import annotations

from glmv.engine.request import Request, RequestStatus
from glmv.engine.scheduler import Scheduler, SchedulerConfig
from glmv.inputs.prompt import Prompt
from glmv.sampling import SamplingParams


class FakePool:
    """Counts blocks honestly (block = 4 tokens) with no prefix caching."""

    block_size = 4

    def __init__(self, blocks: int):
        self.free_blocks = blocks
        self.next_id = 1

    def lookup(self, request, limit=None):
        return []

    def record_lookup(self, *args):
        pass

    def allocate(self, request, num_new, cached=()):
        need = -(-(request.num_computed_tokens + num_new) // self.block_size) - len(request.block_ids)
        if need > self.free_blocks:
            return False
        for _ in range(max(need, 0)):
            request.block_ids.append(self.next_id)
            self.next_id += 1
        self.free_blocks -= max(need, 0)
        return True

    def free(self, request):
        self.free_blocks += len(request.block_ids)
        request.block_ids = []

    def cache_computed_blocks(self, request):
        pass

    def fork(self, parent, child):
        child.block_ids = list(parent.block_ids)


def request(rid: str, prompt_len: int) -> Request:
    return Request.from_prompt(rid, Prompt(token_ids=[1] * prompt_len), SamplingParams(), 64, 0, 2)


def scheduler(blocks: int = 100, budget: int = 16, max_seqs: int = 8) -> Scheduler:
    return Scheduler(SchedulerConfig(max_seqs, budget, 256), FakePool(blocks))


def step(s: Scheduler, sample_token: int = 7) -> dict[str, int]:
    """Schedule, pretend the model ran, append a token to each sequence that sampled; {request_id: tokens}."""
    out = s.schedule()
    s.update(out)
    for e in out.scheduled:
        if e.samples:
            e.request.token_ids.append(sample_token)
    return {e.request.request_id: e.num_tokens for e in out.scheduled}


def test_long_prompt_is_chunked_while_decodes_continue():
    s = scheduler(budget=16)
    s.add(request("short", 6))
    assert step(s) == {"short": 6}
    s.add(request("long", 40))
    assert step(s) == {"short": 1, "long": 15}
    assert step(s) == {"short": 1, "long": 15}
    assert step(s) == {"short": 1, "long": 10}  # the last chunk samples the long prompt's first token
    assert step(s) == {"short": 1, "long": 1}


def test_budget_and_max_num_seqs():
    s = scheduler(budget=10, max_seqs=2)
    for i in range(3):
        s.add(request(f"r{i}", 4))
    assert step(s) == {"r0": 4, "r1": 4}  # max_num_seqs 2 keeps r2 waiting
    assert s.num_waiting == 1
    s.finish(s.running[0], RequestStatus.FINISHED_STOPPED)
    assert step(s) == {"r1": 1, "r2": 4}


def test_preemption_frees_newest_and_recomputes_it_with_its_tokens():
    s = scheduler(blocks=4, budget=64)
    a, b = request("a", 7), request("b", 7)
    s.add(a)
    s.add(b)
    assert step(s) == {"a": 7, "b": 7}  # 2 blocks each; sampled tokens make 8 each
    assert step(s) == {"a": 1, "b": 1}  # 8th token fits in block 2
    out = s.schedule()  # token 9 of a needs a third block: b (the newest) is preempted
    assert [r.request_id for r in out.preempted] == ["b"]
    assert [e.request.request_id for e in out.scheduled] == ["a"]
    assert b.status is RequestStatus.PREEMPTED and b.num_computed_tokens == 0 and b.block_ids == []
    assert b.num_tokens == 9 and s.waiting[0] is b  # generated tokens kept, first in line
    s.update(out)
    s.finish(a, RequestStatus.FINISHED_STOPPED)
    assert step(s) == {"b": 9}  # recomputed in one prefill (prompt + its generated tokens)


def test_running_request_that_cannot_fit_preempts_itself_when_alone():
    s = scheduler(blocks=2, budget=64)
    r = request("r", 8)
    s.add(r)
    step(s)
    out = s.schedule()  # needs a third block, nobody else to preempt
    assert out.preempted == [r] and out.empty


def test_fork_parent_stops_at_fork_point_and_children_replace_it():
    s = scheduler(budget=64)
    parent = request("p", 10)
    parent.fork_at, parent.num_children = 8, 2
    s.add(parent)
    out = s.schedule()
    assert [(e.request.request_id, e.num_tokens, e.samples) for e in out.scheduled] == [("p", 8, False)]
    ready = s.update(out)
    assert ready == [parent]
    kids = [parent.fork(i, 10 + i) for i in range(2)]
    s.fork(parent, kids)
    assert s.running == kids and parent.status is RequestStatus.FORKED
    assert all(k.num_computed_tokens == 8 and k.block_ids == kids[0].block_ids for k in kids)
    assert step(s) == {"p#0": 2, "p#1": 2}
