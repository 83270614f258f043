"""Prompt logprobs (vLLM's `prompt_logprobs`): how likely the model found each prompt token, scored in the prefill.

The logprob of prompt token j is log_softmax of the logits at position j-1 (the first token has none: vLLM's list
starts with None). So the prefill of a sequence that asks runs the lm_head over its prompt positions too, and only
for such sequences; every other row of the step keeps the one last-position row it always had. Chunked prefill
scores each chunk's positions as it runs; a 1-token chunk inside the prompt is scored like any other.

Positions served from the prefix cache have KV but no hidden states. Such a sequence therefore skips the prefix
cache (`Request.scores_prompt`, read by KVBlockPool.lookup), as vLLM does, instead of recomputing the cached part:
recomputing it would be the same full prefill with extra bookkeeping (cached blocks to share and a second pass to
tell apart), for no saving. Its own blocks still enter the cache for the requests after it.

Each scored token gets vLLM's dict: the prompt token itself plus the top-k, keyed by token id, each with its
logprob, its rank in the whole vocabulary (1-based, ties counted, as vLLM counts them) and its text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from glmv.engine.outputs import PromptLogprobs, PromptTokenLogprob
from glmv.engine.sampler import _HostCopy, _to_host

_SLICE = 256  # rows of logits at a time: 256 x 151k float32 is 155 MB, whatever the chunk size


@dataclass
class PromptScores:
    """One sequence's prompt logprobs as they are computed: `launched` and `taken` count prompt tokens (token 0
    counts as done: it has no logprob)."""

    k: int  # top alternatives per token
    num_prompt_tokens: int
    launched: int = 1  # tokens [1, launched) are queued on the device
    rows: list[list[float]] = field(default_factory=list)  # per token 1.., [logprob, rank, ids..., values...]
    sent: bool = False  # handed out in a RequestOutput

    @property
    def taken(self) -> int:
        return 1 + len(self.rows)

    @property
    def complete(self) -> bool:
        return self.taken >= self.num_prompt_tokens

    def to_output(self, token_ids: list[int], tokenizer: Any) -> PromptLogprobs:
        """vLLM's shape: None, then per prompt token {token id: PromptTokenLogprob} (the token itself first)."""
        texts: dict[int, str] = {}

        def text(tid: int) -> str:
            if tid not in texts:
                texts[tid] = tokenizer.decode([tid])
            return texts[tid]

        out: PromptLogprobs = [None]
        k = self.k
        for j, row in enumerate(self.rows, start=1):
            tid = token_ids[j]
            entry = {tid: PromptTokenLogprob(row[0], int(row[1]), text(tid))}
            for r in range(k):
                alt = int(row[2 + r])
                if alt not in entry:
                    entry[alt] = PromptTokenLogprob(row[2 + k + r], r + 1, text(alt))
            out.append(entry)
        return out


@dataclass
class PromptSegment:
    """Rows of a step's scored batch that belong to one sequence."""

    scores: PromptScores
    first_row: int
    count: int


@dataclass
class PendingPromptScores:
    """A step's prompt logprobs on their way to the host; `take_in()` files them with their sequences."""

    segments: list[PromptSegment]
    copy: _HostCopy
    kmax: int

    def take_in(self) -> None:
        data = self.copy.get().tolist()
        kmax = self.kmax
        for seg in self.segments:
            k = seg.scores.k
            for row in data[seg.first_row:seg.first_row + seg.count]:
                seg.scores.rows.append(row[:2 + k] + row[2 + kmax:2 + kmax + k])


def plan_rows(scores: PromptScores, start: int, end: int, token_ids: list[int]) -> tuple[range, list[int]]:
    """Which positions of the chunk [start, end) to score (hidden rows, as offsets from `start`), and their targets
    (the next prompt token); marks them launched so a recomputed chunk (after preemption) is not scored twice."""
    lo = max(start + 1, scores.launched)
    hi = min(end, scores.num_prompt_tokens - 1) + 1  # targets j in [lo, hi): logits at position j - 1
    if lo >= hi:
        return range(0), []
    scores.launched = hi
    return range(lo - 1 - start, hi - 1 - start), token_ids[lo:hi]


def launch_scores(logits_of: Any, hidden: torch.Tensor, rows: list[int], targets: list[int],
                  segments: list[PromptSegment]) -> PendingPromptScores:
    """Queue the scoring of `rows` of the step's hidden states (`logits_of`: the model's lm_head to float32) and the
    copy of the packed result [rows, 2 + 2*kmax] (logprob, rank, top ids, top values) to the host."""
    dev = hidden.device
    kmax = max(seg.scores.k for seg in segments)
    rows_t = torch.tensor(rows, dtype=torch.long, device=dev)
    targets_t = torch.tensor(targets, dtype=torch.long, device=dev)
    parts = []
    for s in range(0, len(rows), _SLICE):
        lp = logits_of(hidden.index_select(0, rows_t[s:s + _SLICE])).log_softmax(dim=-1)
        own = lp.gather(1, targets_t[s:s + _SLICE].unsqueeze(1))
        rank = (lp >= own).sum(dim=-1, keepdim=True)
        cols = [own.to(torch.float64), rank.to(torch.float64)]
        if kmax:
            vals, ids = lp.topk(kmax, dim=-1)
            cols += [ids.to(torch.float64), vals.to(torch.float64)]
        parts.append(torch.cat(cols, dim=1))
    return PendingPromptScores(segments, _to_host(torch.cat(parts)), kmax)
