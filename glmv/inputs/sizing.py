"""The processor's resize rule as plain arithmetic: target sizes and vision-token counts before any pixel is touched.

GLM-4.1V's processors resize every image or clip to multiples of 28 px (patch 14 x merge 2) with the total pixel
count (frames x height x width) kept within [min_pixels, max_pixels]; one LLM token then covers 28x28 px of one
frame pair. Knowing the count up front lets the loader fit documents into the context and shrink video frames
while decoding. Tests check these numbers against transformers' own processor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class VisionGeometry:
    """The checkpoint's patching: read from its processor config (PromptBuilder.geometry)."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


@dataclass(frozen=True)
class PixelBounds:
    """The processor's `size` setting: total pixels (frames x height x width) after resizing, inclusive."""

    min_pixels: int
    max_pixels: int

    def as_size(self) -> dict[str, int]:
        return {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}


MAX_ASPECT_RATIO = 200


def resized_hw(height: int, width: int, bounds: PixelBounds, geometry: VisionGeometry,
               num_frames: int | None = None) -> tuple[int, int]:
    """(height, width) the processor resizes to. Images count as `temporal_patch_size` frames, like the processor.

    Raises ValueError for aspect ratios of 200 or more, as the processor does.
    """
    factor = geometry.factor
    frames = geometry.temporal_patch_size if num_frames is None else num_frames
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.0f}:1 is beyond "
                         f"{MAX_ASPECT_RATIO}:1")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(frames / geometry.temporal_patch_size) * geometry.temporal_patch_size
    if t_bar * h_bar * w_bar > bounds.max_pixels:
        beta = math.sqrt(frames * height * width / bounds.max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < bounds.min_pixels:
        beta = math.sqrt(bounds.min_pixels / (frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def image_tokens(height: int, width: int, bounds: PixelBounds, geometry: VisionGeometry) -> int:
    """LLM tokens of one image of this size (the `<|image|>` placeholders the processor writes)."""
    h, w = resized_hw(height, width, bounds, geometry)
    return (h // geometry.factor) * (w // geometry.factor)


def video_tokens(num_frames: int, height: int, width: int, bounds: PixelBounds, geometry: VisionGeometry) -> int:
    """LLM tokens of a clip's frames (placeholders only; each frame pair also has 2 markers and a timestamp)."""
    h, w = resized_hw(height, width, bounds, geometry, num_frames=num_frames)
    pairs = -(-num_frames // geometry.temporal_patch_size)
    return pairs * (h // geometry.factor) * (w // geometry.factor)
