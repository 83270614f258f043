"""Token masks of constrained rows, filled on the host by the rows' matchers together and applied to the logits on
the device.

Only the rows whose next token is constrained are filled and masked; the others keep their logits as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import xgrammar as xgr

from glmv.structured.batch import GrammarBatch, and_safety_masks


def masked_rows(rows: Sequence) -> list[int]:
    """Indices of the rows (sequences with a `constraint`) whose next token the grammar decides."""
    return [i for i, r in enumerate(rows) if r.constraint is not None and r.constraint.masks_next]


def apply_masks(logits: torch.Tensor, rows: Sequence, indices: list[int], grammar: GrammarBatch) -> torch.Tensor:
    """A copy of float32 `logits` [B, V] with disallowed tokens of rows `indices` at -inf."""
    vocab = logits.shape[1]
    host = grammar.host_bitmask(len(rows), vocab)
    safety = grammar.fill_masks(host, [rows[i].constraint for i in indices], indices)
    # From pageable memory the copy is staged before it returns, so the next step may refill the host buffer. On the
    # CPU `bitmask` is that buffer: the AND then lands in rows the next step refills before it reads them.
    bitmask = host.to(logits.device, non_blocking=True)
    and_safety_masks(bitmask, safety)
    out = logits.clone()  # the caller's tensor may be the raw logits its logprobs are read from
    xgr.apply_token_bitmask_inplace(out, bitmask, vocab_size=vocab, indices=indices)
    return out
