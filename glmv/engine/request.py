"""Request: one sequence the engine generates, its status enum, and the layout of its media in the prompt.

A user request with n > 1 becomes n Requests (one per completion) that share the prompt's KV blocks; `group_id`
names the user's request, `request_id` the sequence. RequestStatus is mapped to FinishReason in one place.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from glmv.inputs.prompt import Prompt
from glmv.models.mrope import get_rope_index, text_positions, type_runs
from glmv.sampling import FinishReason, SamplingParams

if TYPE_CHECKING:
    from glmv.engine.output_processor import SequenceOutputState
    from glmv.engine.prompt_logprobs import PromptScores
    from glmv.structured.constraint import Constraint


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"  # blocks taken back; waits to be recomputed
    FINISHED_STOPPED = "finished_stopped"  # stop token id or stop string
    FINISHED_LENGTH = "finished_length"  # max_tokens or the context length
    FINISHED_ABORTED = "finished_aborted"
    FINISHED_ERROR = "finished_error"
    FORKED = "forked"  # an n>1 parent whose prompt KV now belongs to its children

    @property
    def finished(self) -> bool:
        return self in _FINISH_REASONS or self is RequestStatus.FORKED

    @property
    def finish_reason(self) -> FinishReason | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: FinishReason.STOP,
    RequestStatus.FINISHED_LENGTH: FinishReason.LENGTH,
    RequestStatus.FINISHED_ABORTED: FinishReason.ABORT,
    RequestStatus.FINISHED_ERROR: FinishReason.ERROR,
}


@dataclass
class MediaItem:
    """One image or video of a prompt: where its vision tokens sit and which pixel rows feed the encoder."""

    kind: str  # "image" | "video"
    key: str  # content hash + grid: the vision-cache and prefix-cache key
    grid: tuple[int, int, int]  # (t, h, w) in patches
    patch_start: int  # rows of pixel_values / pixel_values_videos
    patch_end: int
    positions: torch.Tensor  # long, prompt indices of its vision tokens, ascending
    first: int  # positions[0]
    last: int  # positions[-1]

    @property
    def num_tokens(self) -> int:
        return int(self.positions.numel())

    def overlaps(self, start: int, end: int) -> bool:
        return self.first < end and self.last >= start


def _pixel_hash(pixels: torch.Tensor) -> str:
    data = pixels.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:32]


def find_media_items(prompt: Prompt, spatial_merge_size: int) -> list[MediaItem]:
    """Media in prompt order. Images are type-1 token groups; a video's frame pairs are consecutive type-2 groups."""
    mm = prompt.mm
    if mm.empty:
        return []
    merge2 = spatial_merge_size**2
    image_grids = mm.image_grid_thw.tolist() if mm.image_grid_thw is not None else []
    video_grids = mm.video_grid_thw.tolist() if mm.video_grid_thw is not None else []
    groups: dict[int, list[tuple[int, int]]] = {1: [], 2: []}
    for kind, start, end in type_runs(prompt.type_ids):
        if kind in groups:
            groups[kind].append((start, end))
    items: list[MediaItem] = []

    def add(kind: str, i: int, grid: list[int], patch_start: int, spans: list[tuple[int, int]],
            pixels: torch.Tensor, hashes: list[str]) -> None:
        t, h, w = (int(x) for x in grid)
        patch_end = patch_start + t * h * w
        pos = torch.cat([torch.arange(a, b) for a, b in spans])
        if pos.numel() * merge2 != t * h * w:
            raise ValueError(f"{kind} {i}: {pos.numel()} placeholder tokens but its grid {t}x{h}x{w} needs "
                             f"{t * h * w // merge2}.")
        digest = hashes[i] if i < len(hashes) and hashes[i] else _pixel_hash(pixels[patch_start:patch_end])
        items.append(MediaItem(kind, f"{kind}:{digest}:{t}x{h}x{w}", (t, h, w), patch_start, patch_end, pos,
                               int(pos[0]), int(pos[-1])))

    if len(groups[1]) != len(image_grids):
        raise ValueError(f"The prompt has {len(groups[1])} image placeholder groups but {len(image_grids)} images.")
    patch = 0
    for i, grid in enumerate(image_grids):
        add("image", i, grid, patch, [groups[1][i]], mm.pixel_values, mm.image_hashes)
        patch = items[-1].patch_end
    frames = groups[2]
    if len(frames) != sum(int(g[0]) for g in video_grids):
        raise ValueError("The prompt's video placeholder groups do not match the videos' frame counts.")
    patch = 0
    used = 0
    for i, grid in enumerate(video_grids):
        t = int(grid[0])
        add("video", i, grid, patch, frames[used:used + t], mm.pixel_values_videos, mm.video_hashes)
        used += t
        patch = items[-1].patch_end
    items.sort(key=lambda item: item.first)
    return items


_ids = itertools.count()


@dataclass(eq=False)
class Request:
    """One sequence: prompt plus generated tokens, how much of it has KV in the cache, and its blocks."""

    request_id: str
    group_id: str
    index: int  # which of the group's n completions (0 for the n>1 parent)
    prompt: Prompt
    params: SamplingParams
    max_tokens: int  # resolved output budget
    seed: int  # drives the counter-based sampler noise; fixed per sequence
    token_ids: list[int]  # prompt + output
    num_prompt_tokens: int
    mrope_positions: torch.Tensor | None  # (3, prompt_len) for multimodal prompts; None: plain 1D positions
    rope_delta: int
    media: list[MediaItem]
    arrival_time: float = field(default_factory=time.monotonic)
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache on first admission
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # chained hashes of this sequence's full blocks
    num_hashed_blocks: int = 0  # how many of block_ids are registered in the prefix cache
    fork_at: int | None = None  # n>1 parent: prefill this many tokens, then fork into the group's sequences
    num_children: int = 0
    num_forced_tokens: int = 0
    num_preemptions: int = 0
    admitted: bool = False
    stop_reason: int | str | None = None
    mm_embeds: dict[int, torch.Tensor] = field(default_factory=dict)  # media index -> embeddings (model runner)
    output: SequenceOutputState | None = None  # the output side's state (OutputProcessor.start sets it)
    # Tokens sampled by a step still running on the device (0 or 1 when the engine overlaps steps): they count in
    # num_tokens (the scheduler computes them next) but are not in token_ids yet.
    num_pending: int = 0
    constraint: Constraint | None = None  # a structured-output sequence's grammar state (set at its start)
    # Where this sequence's prefill files its prompt logprobs (one sequence of the group scores the prompt).
    prompt_scores: PromptScores | None = None
    order: int = field(default_factory=lambda: next(_ids))  # arrival order, for stable priorities

    @classmethod
    def from_prompt(cls, request_id: str, prompt: Prompt, params: SamplingParams, max_tokens: int, seed: int,
                    spatial_merge_size: int, group_id: str | None = None, index: int = 0) -> Request:
        media = find_media_items(prompt, spatial_merge_size)
        positions, delta = None, 0
        if media:
            if prompt.mm_token_type_ids is None:
                raise ValueError("A prompt with images or video needs mm_token_type_ids (the processor returns them).")
            positions, delta = get_rope_index(prompt.type_ids, prompt.mm.image_grid_thw, prompt.mm.video_grid_thw,
                                              spatial_merge_size)
        return cls(request_id=request_id, group_id=group_id or request_id, index=index, prompt=prompt, params=params,
                   max_tokens=max_tokens, seed=seed, token_ids=list(prompt.token_ids),
                   num_prompt_tokens=len(prompt.token_ids), mrope_positions=positions, rope_delta=delta, media=media)

    def fork(self, index: int, seed: int) -> Request:
        """A child sequence sharing everything computed so far (the pool shares the blocks themselves); child 0
        goes on scoring the prompt where the parent stopped."""
        return Request(request_id=f"{self.group_id}#{index}", group_id=self.group_id, index=index, prompt=self.prompt,
                       params=self.params, max_tokens=self.max_tokens, seed=seed, token_ids=list(self.token_ids),
                       num_prompt_tokens=self.num_prompt_tokens, mrope_positions=self.mrope_positions,
                       rope_delta=self.rope_delta, media=self.media, arrival_time=self.arrival_time,
                       status=self.status, num_computed_tokens=self.num_computed_tokens,
                       num_cached_tokens=self.num_cached_tokens, block_hashes=list(self.block_hashes),
                       num_hashed_blocks=self.num_hashed_blocks, admitted=True, order=self.order,
                       prompt_scores=self.prompt_scores if index == 0 else None)

    # ---- views ----
    @property
    def num_tokens(self) -> int:
        return len(self.token_ids) + self.num_pending

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def finished(self) -> bool:
        return self.status.finished

    @property
    def scores_prompt(self) -> bool:
        """Its prefill must still score prompt positions, so it cannot take them from the prefix cache (which
        keeps KV, not hidden states: glmv/engine/prompt_logprobs.py)."""
        return self.prompt_scores is not None and self.prompt_scores.launched < self.num_prompt_tokens

    def positions(self, start: int, end: int) -> torch.Tensor:
        """(3, end-start) M-RoPE positions of tokens start..end-1 of this sequence (CPU, long)."""
        if self.mrope_positions is None:
            return text_positions(start, end, 0)
        prompt_len = self.num_prompt_tokens
        if end <= prompt_len:
            return self.mrope_positions[:, start:end]
        tail = text_positions(max(start, prompt_len), end, self.rope_delta)
        if start >= prompt_len:
            return tail
        return torch.cat([self.mrope_positions[:, start:prompt_len], tail], dim=1)

