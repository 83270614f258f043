"""What a launched step hands back: its sampled rows and, once the device is done, their tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from glmv.engine.prompt_logprobs import PendingPromptScores
from glmv.engine.request import Request
from glmv.engine.sampler import PendingSample, SamplerOutput
from glmv.engine.scheduler import ScheduledRequest


@dataclass
class RunnerOutput:
    sampled: list[ScheduledRequest]  # the entries that produced a token, in row order
    result: SamplerOutput | None


@dataclass
class PendingStep:
    """A step whose device work is queued: `wait()` blocks (GIL released) until its sampled tokens are on the host.

    The next step may be launched before that: rows whose input is a token this step sampled read it on the device
    (`sample.tokens`, row `row_of[id(request)]`). Rows in `discard` were sampled for a continuation that turned out
    wrong (the engine forced other tokens after the previous one); their tokens are dropped. `wait()` also files
    the step's prompt logprobs with their sequences.

    A step launched with its sampling deferred holds its logits in `unsampled` until `ModelRunner.sample` queues
    the sampling: the engine first takes in the previous step's tokens (grammar matchers advanced, penalties'
    history grown) while the device runs this step's forward."""

    sampled: list[ScheduledRequest]
    sample: PendingSample | None
    row_of: dict[int, int] = field(default_factory=dict)
    discard: set[int] = field(default_factory=set)
    prompt_scores: PendingPromptScores | None = None  # prompt logprobs this step computed (prompt_logprobs.py)
    unsampled: torch.Tensor | None = None  # logits [rows, vocab] whose sampling is deferred

    def wait(self) -> RunnerOutput:
        if self.unsampled is not None:
            raise RuntimeError("a step with deferred sampling was waited on before ModelRunner.sample queued it")
        if self.prompt_scores is not None:
            self.prompt_scores.take_in()
            self.prompt_scores = None
        return RunnerOutput(self.sampled, self.sample.result() if self.sample is not None else None)


def pending_source(req: Request, position: int, prev_rows: dict[int, int]) -> int:
    """The previous step's row that sampled the token at `position` (a token not in token_ids yet)."""
    row = prev_rows.get(id(req))
    if row is None:
        raise RuntimeError(f"token {position} of sequence {req.request_id} is neither known nor in flight")
    return row
