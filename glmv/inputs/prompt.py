"""Prompt: the typed hand-off from `inputs/` to every engine (token ids plus processed media)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from glmv.inputs.loaded import LoadedMedia


@dataclass
class MultiModalInputs:
    """Processor outputs for the media of one prompt, in the order they appear in the token ids.

    `image_hashes` / `video_hashes` are content hashes (one per image / video) used as prefix-cache and
    vision-embedding cache keys, so two prompts with equal token ids but different pictures never share KV.
    """

    pixel_values: torch.Tensor | None = None  # (num_patches, C*T*P*P)
    image_grid_thw: torch.Tensor | None = None  # (num_images, 3) long
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None  # (num_videos, 3) long
    image_hashes: list[str] = field(default_factory=list)
    video_hashes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.pixel_values is None and self.pixel_values_videos is None

    def staged(self, dtype: torch.dtype, pin_memory: bool) -> MultiModalInputs:
        """A copy whose pixel tensors are already in the model's dtype (and in pinned memory, for an asynchronous
        upload to a GPU): see `stage_pixels`."""

        def stage(pixels: torch.Tensor | None) -> torch.Tensor | None:
            return None if pixels is None else stage_pixels(pixels, dtype, pin_memory)

        return replace(self, pixel_values=stage(self.pixel_values), pixel_values_videos=stage(self.pixel_values_videos))


def stage_pixels(pixels: torch.Tensor, dtype: torch.dtype, pin_memory: bool) -> torch.Tensor:
    """Pixels in `dtype` (pinned when asked), converted on the CPU (float32 -> bf16 rounds to nearest even, as the
    device would); the same tensor when it already is so."""
    if pixels.dtype == dtype and (pixels.is_pinned() or not pin_memory):
        return pixels
    return torch.empty(pixels.shape, dtype=dtype, pin_memory=pin_memory).copy_(pixels)


@dataclass
class Prompt:
    """What an engine needs to run one request's prefill.

    token_ids already hold the expanded image placeholders (one `<|image|>` id per vision token);
    mm_token_type_ids marks them (0 text, 1 image, 2 video frame) for M-RoPE.
    """

    token_ids: list[int]
    mm_token_type_ids: list[int] | None = None
    mm: MultiModalInputs = field(default_factory=MultiModalInputs)
    text: str | None = None  # the rendered prompt text, for echo and logs
    # Documents report what they contributed (e.g. "pages_read") so doors can tell the user.
    info: dict[str, object] = field(default_factory=dict)
    # The decoded media before glmv's processor ran, with `text` (one placeholder per item): for engines that run
    # their own processor (the vLLM backend, glmv/backends/vllm.py). None for text-only prompts.
    raw_media: LoadedMedia | None = None
    mm_processor_kwargs: dict[str, Any] = field(default_factory=dict)  # the request's, for such engines

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def type_ids(self) -> list[int]:
        return self.mm_token_type_ids if self.mm_token_type_ids is not None else [0] * len(self.token_ids)
