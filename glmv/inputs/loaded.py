"""LoadedMedia: the decoded media of one prompt, in the order their placeholders appear (loader -> PromptBuilder)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadedMedia:
    """Decoded media of one prompt, in message order.

    Hashes are content hashes of the source bytes (a document page adds its page number and resolution); the
    PromptBuilder keys its preprocessing cache and the Prompt's media hashes on them.
    """

    images: list[Any]  # RGB PIL images (document pages included, in place)
    image_hashes: list[str]
    videos: list[Any]  # decoded frames, (T, H, W, C) uint8 arrays, T even
    video_metadata: list[Any]  # transformers VideoMetadata: fps and frames_indices give the timestamps
    video_hashes: list[str]
    info: dict[str, Any] = field(default_factory=dict)  # e.g. {"document_pages": 12, "document_pages_total": 40}
    # Where each image / video came from ("messages[0].content[1]"), for error messages; may be left empty.
    image_parts: list[str] = field(default_factory=list)
    video_parts: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.images and not self.videos
