"""MediaPolicy: the server's rules for media (where it may come from, how big, how many), fixed at startup."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20


@dataclass(frozen=True)
class MediaPolicy:
    """Limits and safety rules every media part of every prompt is held to.

    Built once by the doors (ServerConfig.media_policy, glmv.LLM, the CLI); requests may only narrow what it allows
    (see options.py for the per-request overrides and their bounds).
    """

    # Sources
    allowed_local_media_path: Path | None = None  # file:// is off unless set
    # A URL with no scheme is a local path (under allowed_local_media_path): glmv.LLM, where scripts name files by
    # path. Off for the server, whose clients' paths would mean nothing on the server's disk.
    plain_paths: bool = False
    allowed_media_domains: tuple[str, ...] = ()  # when set: only these hosts; they may resolve to private addresses
    fetch_timeout_s: float = 20.0  # whole download of one URL, redirects included
    max_redirects: int = 5
    max_media_bytes: int = 128 * MiB  # one image / video / document, however it arrives
    max_prompt_media_bytes: int = 512 * MiB  # all media bytes of one prompt together
    # Counts per prompt (--limit-mm-per-prompt)
    max_images: int = 300
    max_videos: int = 1
    max_documents: int = 1
    # Decoding
    max_image_pixels: int = 89_478_485  # Pillow's own decompression-bomb threshold (width * height)
    max_prompt_decoded_bytes: int = 2048 * MiB  # decoded RGB of all images, frames and pages of one prompt
    video_fps: float = 2.0
    max_video_fps: float = 60.0
    max_video_duration_s: float = 300.0  # longer videos are sampled uniformly over their whole length
    max_video_frames: int = 600
    video_decode_timeout_s: float = 120.0
    document_dpi: float = 180.0
    max_document_pages: int = 100
    min_document_page_tokens: int = 768  # below this a page is unreadable: read fewer pages instead
    document_generation_reserve: int = 8192  # tokens kept for the answer when a request sets no max_tokens
    office_convert_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        positive = {
            "fetch_timeout_s": self.fetch_timeout_s, "max_media_bytes": self.max_media_bytes,
            "max_prompt_media_bytes": self.max_prompt_media_bytes, "max_image_pixels": self.max_image_pixels,
            "max_prompt_decoded_bytes": self.max_prompt_decoded_bytes, "video_fps": self.video_fps,
            "max_video_fps": self.max_video_fps, "max_video_duration_s": self.max_video_duration_s,
            "max_video_frames": self.max_video_frames, "video_decode_timeout_s": self.video_decode_timeout_s,
            "document_dpi": self.document_dpi, "max_document_pages": self.max_document_pages,
            "min_document_page_tokens": self.min_document_page_tokens,
            "office_convert_timeout_s": self.office_convert_timeout_s,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"MediaPolicy.{name} must be positive, got {value}.")
        for name in ("max_images", "max_videos", "max_documents", "max_redirects", "document_generation_reserve"):
            if getattr(self, name) < 0:
                raise ValueError(f"MediaPolicy.{name} must be >= 0, got {getattr(self, name)}.")
        if self.max_video_frames < 2:
            raise ValueError(f"MediaPolicy.max_video_frames must be at least 2, got {self.max_video_frames}.")
        if self.allowed_local_media_path is not None and not Path(self.allowed_local_media_path).is_dir():
            raise ValueError(f"--allowed-local-media-path {self.allowed_local_media_path}: no such folder.")
        object.__setattr__(self, "allowed_media_domains",
                           tuple(d.strip().lower().rstrip(".") for d in self.allowed_media_domains if d.strip()))
