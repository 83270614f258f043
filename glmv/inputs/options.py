"""MediaOptions: one request's media settings, resolved from the server's policy plus the request's own overrides.

Requests may tune media within the server's bounds, never past them:
- `mm_processor_kwargs`: `min_pixels` / `max_pixels` (pixels of one image or page, width x height) or the
  processor's own `size: {"shortest_edge", "longest_edge"}`; capped by the checkpoint's processor config.
- `media_io_kwargs`: `{"video": {"fps", "num_frames"}}` and `{"document": {"dpi", "max_pages"}}`; capped by the
  MediaPolicy.
Anything else in those objects is refused with a 400 that lists what is accepted, so a typo is never silently a
no-op.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from glmv.inputs.document import DocumentSettings
from glmv.inputs.errors import InvalidInputError
from glmv.inputs.policy import MediaPolicy
from glmv.inputs.sizing import PixelBounds, VisionGeometry
from glmv.inputs.video import VideoSampling

# GLM-4.1V's processor defaults (preprocessor_config.json of the released checkpoint).
DEFAULT_IMAGE_BOUNDS = PixelBounds(min_pixels=112 * 112, max_pixels=28 * 28 * 2 * 30000)
DEFAULT_VIDEO_BOUNDS = PixelBounds(min_pixels=112 * 112, max_pixels=28 * 28 * 2 * 30000)

_PROCESSOR_KEYS = ("min_pixels", "max_pixels", "size")
_VIDEO_KEYS = ("fps", "num_frames")
_DOCUMENT_KEYS = ("dpi", "max_pages")


@dataclass(frozen=True)
class ProcessorDefaults:
    """What the checkpoint's processor config says; requests may narrow these bounds, not widen them."""

    geometry: VisionGeometry = VisionGeometry()
    image_bounds: PixelBounds = DEFAULT_IMAGE_BOUNDS
    video_bounds: PixelBounds = DEFAULT_VIDEO_BOUNDS


@dataclass(frozen=True)
class MediaOptions:
    """Everything the loader needs beyond the policy, for one request."""

    geometry: VisionGeometry = VisionGeometry()
    image_bounds: PixelBounds = DEFAULT_IMAGE_BOUNDS
    video_bounds: PixelBounds = DEFAULT_VIDEO_BOUNDS
    video: VideoSampling = VideoSampling()
    document: DocumentSettings = DocumentSettings()
    # Tokens the whole prompt may take (the context minus the answer's reserve); documents shrink to fit it.
    token_budget: int | None = None
    max_model_len: int | None = None
    # Counts the tokens of plain text (the tokenizer), to know what documents may use; None: 1 token per 2 chars.
    count_text_tokens: Callable[[str], int] | None = field(default=None, compare=False)


def resolve_media_options(
    policy: MediaPolicy,
    defaults: ProcessorDefaults | None = None,
    mm_processor_kwargs: Mapping[str, Any] | None = None,
    media_io_kwargs: Mapping[str, Any] | None = None,
    max_model_len: int | None = None,
    max_tokens: int | None = None,
    count_text_tokens: Callable[[str], int] | None = None,
) -> MediaOptions:
    """Validate a request's overrides against the policy and the processor; 400 naming the field if they fail."""
    defaults = defaults or ProcessorDefaults()
    io_kwargs = _mapping(media_io_kwargs, "media_io_kwargs")
    _only(io_kwargs, ("video", "document", "image"), "media_io_kwargs")
    if io_kwargs.get("image"):
        raise InvalidInputError("media_io_kwargs.image: images take no loading options; resize them with "
                                "mm_processor_kwargs min_pixels / max_pixels.", param="media_io_kwargs.image")
    budget = None
    if max_model_len is not None:
        reserve = max_tokens if max_tokens is not None else min(policy.document_generation_reserve, max_model_len // 4)
        budget = max_model_len - reserve
    return MediaOptions(
        geometry=defaults.geometry,
        image_bounds=resolve_image_bounds(mm_processor_kwargs, defaults),
        video_bounds=defaults.video_bounds,
        video=_video_sampling(policy, _mapping(io_kwargs.get("video"), "media_io_kwargs.video")),
        document=_document_settings(policy, _mapping(io_kwargs.get("document"), "media_io_kwargs.document")),
        token_budget=budget,
        max_model_len=max_model_len,
        count_text_tokens=count_text_tokens,
    )


def resolve_image_bounds(mm_processor_kwargs: Mapping[str, Any] | None, defaults: ProcessorDefaults) -> PixelBounds:
    """Pixel bounds for images and pages: the processor's, narrowed by `min_pixels`/`max_pixels` or `size`."""
    kwargs = _mapping(mm_processor_kwargs, "mm_processor_kwargs")
    _only(kwargs, _PROCESSOR_KEYS, "mm_processor_kwargs")
    base = defaults.image_bounds
    frames = defaults.geometry.temporal_patch_size  # the processor counts an image as this many frames
    low, high = base.min_pixels, base.max_pixels
    if "size" in kwargs:
        size = _mapping(kwargs["size"], "mm_processor_kwargs.size")
        _only(size, ("shortest_edge", "longest_edge"), "mm_processor_kwargs.size")
        low = _int(size.get("shortest_edge", low), "mm_processor_kwargs.size.shortest_edge", 1)
        high = _int(size.get("longest_edge", high), "mm_processor_kwargs.size.longest_edge", 1)
    if "min_pixels" in kwargs:
        low = _int(kwargs["min_pixels"], "mm_processor_kwargs.min_pixels", 1) * frames
    if "max_pixels" in kwargs:
        high = _int(kwargs["max_pixels"], "mm_processor_kwargs.max_pixels", 1) * frames
    if high > base.max_pixels:
        raise InvalidInputError(
            f"mm_processor_kwargs: at most {base.max_pixels // frames:,} pixels an image (max_pixels; size."
            f"longest_edge {base.max_pixels:,}), the checkpoint's own bound.", param="mm_processor_kwargs")
    if low > high:
        raise InvalidInputError("mm_processor_kwargs: min_pixels must not exceed max_pixels.",
                                param="mm_processor_kwargs")
    return PixelBounds(min_pixels=low, max_pixels=high)


def _video_sampling(policy: MediaPolicy, kwargs: Mapping[str, Any]) -> VideoSampling:
    _only(kwargs, _VIDEO_KEYS, "media_io_kwargs.video")
    fps = _positive_up_to(kwargs, "fps", policy.max_video_fps, policy.video_fps, "media_io_kwargs.video")
    num_frames = _count_up_to(kwargs, "num_frames", policy.max_video_frames, None, "media_io_kwargs.video")
    return VideoSampling(fps=fps, num_frames=num_frames, max_duration_s=policy.max_video_duration_s,
                         max_frames=policy.max_video_frames, decode_timeout_s=policy.video_decode_timeout_s)


def _document_settings(policy: MediaPolicy, kwargs: Mapping[str, Any]) -> DocumentSettings:
    _only(kwargs, _DOCUMENT_KEYS, "media_io_kwargs.document")
    dpi = _positive_up_to(kwargs, "dpi", policy.document_dpi, policy.document_dpi, "media_io_kwargs.document")
    max_pages = _count_up_to(kwargs, "max_pages", policy.max_document_pages, policy.max_document_pages,
                             "media_io_kwargs.document")
    return DocumentSettings(dpi=dpi, max_pages=max_pages, min_page_tokens=policy.min_document_page_tokens,
                            convert_timeout_s=policy.office_convert_timeout_s)


def _positive_up_to(kwargs: Mapping[str, Any], key: str, high: float, default: float, where: str) -> float:
    """kwargs[key], a number in (0, high], or `default` where it is absent."""
    if key not in kwargs:
        return default
    name = f"{where}.{key}"
    value = _number(kwargs[key], name)
    if not 0 < value <= high:
        raise InvalidInputError(f"{name} must be in (0, {high:g}], got {value:g}.", param=name)
    return value


def _count_up_to(kwargs: Mapping[str, Any], key: str, high: int, default: int | None, where: str) -> int | None:
    """kwargs[key], an integer in [1, high], or `default` where it is absent."""
    if key not in kwargs:
        return default
    name = f"{where}.{key}"
    value = _int(kwargs[key], name, 1)
    if value > high:
        raise InvalidInputError(f"{name} must be at most {high}, got {value}.", param=name)
    return value


def _mapping(value: Any, name: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{name} must be an object, got {type(value).__name__}.", param=name)
    return value


def _only(kwargs: Mapping[str, Any], allowed: tuple[str, ...], name: str) -> None:
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise InvalidInputError(f"{name}: unknown key(s) {', '.join(map(repr, unknown))}; accepted: "
                                f"{', '.join(allowed)}.", param=name)


def _int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}.", param=name)
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{name} must be a number, got {value!r}.", param=name)
    return float(value)
