"""M-RoPE positions of GLM-4.1V: (t, h, w) position rows for a prompt, exactly as transformers' get_rope_index.

Rules (transformers `Glm4vModel.get_rope_index`, one prompt at a time):
- Text tokens: all three rows count up together from the current position.
- An image (mm type 1): its grid (t, h/merge, w/merge) gets t = arange(t), h = arange(h'), w = arange(w'), each
  offset by the current position; afterwards the position advances by max(h', w') (not by the token count).
- A video (mm type 2): every frame pair is its own grid with t = 1, placed like an image; the timestamp text between
  frames is ordinary text.
- Decode: a token at sequence index i (i >= prompt length) has position i + delta on all rows, where
  delta = max(prompt positions) + 1 - prompt length (the "rope delta"); text-only prompts have delta 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def type_runs(type_ids: Sequence[int]) -> list[tuple[int, int, int]]:
    """(type, start, end) of each run of equal mm_token_type_ids, in order. Vectorized: an image prompt holds runs of
    a thousand tokens or more, and this sits on the path from a request's arrival to its first token."""
    if len(type_ids) == 0:
        return []
    ids = np.asarray(type_ids)
    starts = np.concatenate(([0], np.flatnonzero(ids[1:] != ids[:-1]) + 1))
    ends = np.append(starts[1:], len(ids))
    return list(zip(ids[starts].tolist(), starts.tolist(), ends.tolist(), strict=True))


def vision_grid_positions(start: int, grid_t: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """(3, t*h*w) positions of one merged vision grid starting at `start` (row-major over t, h, w)."""
    t = torch.arange(grid_t) + start
    h = torch.arange(grid_h) + start
    w = torch.arange(grid_w) + start
    tt, hh, ww = torch.meshgrid(t, h, w, indexing="ij")
    return torch.stack([tt, hh, ww]).reshape(3, -1)


def get_rope_index(
    type_ids: Sequence[int],
    image_grid_thw: torch.Tensor | None,
    video_grid_thw: torch.Tensor | None,
    spatial_merge_size: int,
) -> tuple[torch.Tensor, int]:
    """Positions (3, L) long and the rope delta for one prompt, from its mm_token_type_ids and media grids.

    Raises ValueError when the type ids name more media than the grids describe.
    """
    grids: dict[int, list[tuple[int, int, int]]] = {1: [], 2: []}
    if image_grid_thw is not None:
        grids[1] = [tuple(int(x) for x in row) for row in image_grid_thw.tolist()]
    if video_grid_thw is not None:
        for t, h, w in video_grid_thw.tolist():
            grids[2].extend([(1, int(h), int(w))] * int(t))  # one grid per frame pair
    next_grid = {1: 0, 2: 0}
    pieces: list[torch.Tensor] = []
    current = 0
    for kind, start, end in type_runs(type_ids):
        length = end - start
        if kind == 0:
            pieces.append((torch.arange(length) + current).view(1, -1).expand(3, -1))
            current += length
            continue
        if kind not in grids:
            raise ValueError(f"mm_token_type_ids holds an unknown type {kind}; expected 0 (text), 1 (image), 2 (video).")
        if next_grid[kind] >= len(grids[kind]):
            what = "image" if kind == 1 else "video frame"
            raise ValueError(f"The prompt has more {what} placeholder groups than the processor's grids describe.")
        t, h, w = grids[kind][next_grid[kind]]
        next_grid[kind] += 1
        gh, gw = h // spatial_merge_size, w // spatial_merge_size
        if t * gh * gw != length:
            raise ValueError(
                f"A vision placeholder group has {length} tokens but its grid {t}x{h}x{w} needs {t * gh * gw}."
            )
        pieces.append(vision_grid_positions(current, t, gh, gw))
        current += max(gh, gw)
    if not pieces:
        return torch.zeros(3, 0, dtype=torch.long), 0
    positions = torch.cat(pieces, dim=1).to(torch.long)
    delta = int(positions.max()) + 1 - positions.shape[1]
    return positions, delta


def text_positions(start: int, end: int, delta: int) -> torch.Tensor:
    """(3, end-start) positions of tokens past the prompt (or of a text-only prompt, delta 0)."""
    return (torch.arange(start, end) + delta).view(1, -1).expand(3, -1)
