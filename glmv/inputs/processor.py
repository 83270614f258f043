"""PromptBuilder: rendered chat text + decoded media -> Prompt, through the checkpoint's own image/video processors.

The checkpoint's processors (transformers' Glm4vImageProcessor / Glm4vVideoProcessor) turn each picture or clip
into patches; glmv calls them one item at a time so each item's patches can be cached by content hash (a chat that
resends a picture is not resized and normalized again), then writes the placeholders exactly as Glm4vProcessor does:
one `<|image|>` per 28x28 px, and for a video, per frame pair `<|begin_of_image|>` + tokens + `<|end_of_image|>` +
the pair's timestamp in whole seconds. tests/inputs/test_processor_parity.py checks token ids, token types and
tensors against Glm4vProcessor itself for every format.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
import numpy as np
import torch

from glmv.inputs.cache import MediaCache, content_hash
from glmv.inputs.errors import InvalidInputError
from glmv.inputs.loaded import LoadedMedia
from glmv.inputs.options import MediaOptions, ProcessorDefaults, resolve_image_bounds, resolve_media_options
from glmv.inputs.policy import MediaPolicy
from glmv.inputs.prompt import MultiModalInputs, Prompt
from glmv.inputs.sizing import PixelBounds, VisionGeometry
from glmv.models.constants import CHAT_TEMPLATE_PATH

__all__ = ["InvalidInputError", "LoadedMedia", "PromptBuilder", "content_hash", "load_chat_template"]


def load_chat_template(model_dir: Path, override: str | None) -> str:
    """The template to render: --chat-template FILE (or inline text), the checkpoint's own, or glmv's."""
    if override:
        p = Path(override)
        if p.is_file():
            return p.read_text()
        if "{%" in override or "{{" in override:
            return override
        raise ValueError(f"--chat-template {override}: no such file.")
    for name in ("chat_template.jinja",):
        if (model_dir / name).is_file():
            return (model_dir / name).read_text()
    return CHAT_TEMPLATE_PATH.read_text()


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """The `tojson` filter as transformers' chat templates know it (plain json.dumps, no HTML escaping)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class PromptBuilder:
    """Builds Prompts for one checkpoint. Thread-safe: the processors are stateless per call, the cache is locked."""

    def __init__(self, model_dir: Path, chat_template: str | None = None, media_cache_bytes: int = 512 << 20,
                 patch_cache_bytes: int = 1 << 30):
        from transformers import AutoProcessor

        self.model_dir = Path(model_dir)
        self.processor = AutoProcessor.from_pretrained(str(model_dir))
        self.tokenizer = self.processor.tokenizer
        self.chat_template_text = load_chat_template(self.model_dir, chat_template)
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = _tojson  # Hugging Face's spelling: checkpoints' templates pass ensure_ascii etc.
        self._template = env.from_string(self.chat_template_text)
        # Two caches, so that a long document's patches (24 bytes a pixel) cannot flush the compact decoded media
        # (3 bytes a pixel) that load_messages_async keeps in the first.
        self.media_cache = MediaCache(media_cache_bytes)  # decoded images, video frames, rendered pages
        self.patch_cache = MediaCache(patch_cache_bytes)  # the processor's pixel_values per item
        self.defaults = processor_defaults(self.processor)
        self.image_token = self.processor.image_token
        self.video_token = self.processor.video_token
        self._placeholder = re.compile(f"({re.escape(self.image_token)}|{re.escape(self.video_token)})")
        self._ids = {name: self.tokenizer.convert_tokens_to_ids(name) for name in (
            self.image_token, "<|begin_of_video|>", "<|end_of_video|>")}

    # -- text ---------------------------------------------------------------------------------------------------
    def render(self, messages: list[dict], add_generation_prompt: bool = True, **template_kwargs: Any) -> str:
        try:
            return self._template.render(
                messages=messages, add_generation_prompt=add_generation_prompt, **template_kwargs
            )
        except jinja2.TemplateError as exc:
            raise InvalidInputError(f"The chat template failed to render these messages: {exc}") from None

    def from_text(self, text: str) -> Prompt:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return Prompt(token_ids=list(ids), text=text)

    def from_token_ids(self, ids: list[int]) -> Prompt:
        vocab = len(self.tokenizer)
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise InvalidInputError(f"Token id {bad[0]} is out of range [0, {vocab}).", param="prompt")
        return Prompt(token_ids=list(ids), text=None)

    def count_text_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    # -- media --------------------------------------------------------------------------------------------------
    def media_options(self, policy: MediaPolicy, mm_processor_kwargs: dict[str, Any] | None = None,
                      media_io_kwargs: dict[str, Any] | None = None, max_model_len: int | None = None,
                      max_tokens: int | None = None) -> MediaOptions:
        """One request's media settings (validated; 400 on bad overrides), for load_messages_async."""
        return resolve_media_options(policy, self.defaults, mm_processor_kwargs, media_io_kwargs, max_model_len,
                                     max_tokens, self.count_text_tokens)

    def build(
        self,
        text: str,
        media: LoadedMedia | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> Prompt:
        """Expand the media placeholders of rendered prompt text and attach the media's patches."""
        if media is None or media.empty:
            prompt = self.from_text(text)
            if media is not None:
                prompt.info.update(media.info)
            return prompt
        bounds = resolve_image_bounds(mm_processor_kwargs, self.defaults)
        pieces = self._placeholder.split(text)
        n_images = pieces.count(self.image_token)
        n_videos = pieces.count(self.video_token)
        if n_images != len(media.images) or n_videos != len(media.videos):
            raise InvalidInputError(
                f"The prompt has {n_images} image and {n_videos} video placeholders but {len(media.images)} images "
                f"and {len(media.videos)} videos were given.", param="messages")
        images = [self._image_features(media, i, bounds) for i in range(len(media.images))]
        videos = [self._video_features(media, i) for i in range(len(media.videos))]
        expanded, next_image, next_video = [], iter(images), iter(videos)
        for piece in pieces:
            if piece == self.image_token:
                expanded.append(self.image_token * next(next_image)[2])
            elif piece == self.video_token:
                expanded.append(next(next_video)[2])
            else:
                expanded.append(piece)
        full = "".join(expanded)
        ids = self.tokenizer(full, add_special_tokens=False, verbose=False)["input_ids"]
        mm = MultiModalInputs(
            pixel_values=_cat([f[0] for f in images]),
            image_grid_thw=_cat([f[1] for f in images]),
            pixel_values_videos=_cat([f[0] for f in videos]),
            video_grid_thw=_cat([f[1] for f in videos]),
            image_hashes=[f[3] for f in images],
            video_hashes=[f[3] for f in videos],
        )
        return Prompt(token_ids=list(ids), mm_token_type_ids=self.mm_token_type_ids(ids), mm=mm, text=text,
                      info=dict(media.info), raw_media=media, mm_processor_kwargs=dict(mm_processor_kwargs or {}))

    def mm_token_type_ids(self, ids: list[int]) -> list[int]:
        """0 text, 1 image token, 2 image token inside a video (between the video markers), as the processor."""
        arr = np.asarray(ids)
        starts = np.cumsum(arr == self._ids["<|begin_of_video|>"])
        inside_video = starts > np.cumsum(arr == self._ids["<|end_of_video|>"])
        is_media = arr == self._ids[self.image_token]
        types = np.zeros_like(arr)
        types[is_media & inside_video] = 2
        types[is_media & ~inside_video] = 1
        return types.tolist()

    def _image_features(self, media: LoadedMedia, index: int,
                        bounds: PixelBounds) -> tuple[torch.Tensor, torch.Tensor, int, str]:
        """(pixel_values, grid_thw, placeholder count, media hash) of one image, cached by content and bounds."""
        image = media.images[index]
        digest = media.image_hashes[index] if index < len(media.image_hashes) else _pixels_hash(image)
        key = ("image-patches", digest, image.size, bounds)
        cached = self.patch_cache.get(key)
        if cached is not None:
            return cached
        try:
            out = self.processor.image_processor(images=[image], size=bounds.as_size(), return_tensors="pt")
        except (ValueError, TypeError, RuntimeError) as exc:
            where = media.image_parts[index] if index < len(media.image_parts) else f"image {index + 1}"
            raise InvalidInputError(f"{where}: the image could not be processed ({exc}).", param=where) from None
        grid = out["image_grid_thw"]
        tokens = int(grid[0].prod()) // self.defaults.geometry.merge_size ** 2
        result = (out["pixel_values"], grid, tokens, _media_key(digest, grid))
        self.patch_cache.put(key, result)
        return result

    def _video_features(self, media: LoadedMedia, index: int) -> tuple[torch.Tensor, torch.Tensor, str, str]:
        """(pixel_values_videos, grid_thw, placeholder text with timestamps, media hash) of one clip, cached."""
        frames, metadata = media.videos[index], media.video_metadata[index]
        digest = media.video_hashes[index] if index < len(media.video_hashes) else _pixels_hash(frames)
        indices = tuple(metadata.frames_indices or ())
        key = ("video-patches", digest, tuple(np.shape(frames)), indices, metadata.fps)
        cached = self.patch_cache.get(key)
        if cached is not None:
            return cached
        try:
            out = self.processor.video_processor(videos=[frames], video_metadata=[metadata], do_sample_frames=False,
                                                 return_tensors="pt")
        except (ValueError, TypeError, RuntimeError) as exc:
            where = media.video_parts[index] if index < len(media.video_parts) else f"video {index + 1}"
            raise InvalidInputError(f"{where}: the video could not be processed ({exc}).", param=where) from None
        grid = out["video_grid_thw"]
        text = self._video_placeholder(grid[0], metadata)
        result = (out["pixel_values_videos"], grid, text, _media_key(digest, grid))
        self.patch_cache.put(key, result)
        return result

    def _video_placeholder(self, grid: torch.Tensor, metadata: Any) -> str:
        """Per frame pair: begin marker, its tokens, end marker, its timestamp in whole seconds (Glm4vProcessor)."""
        pairs = int(grid[0])
        per_pair = int(grid.prod()) // self.defaults.geometry.merge_size ** 2 // pairs
        fps = metadata.fps if metadata.fps is not None else 24  # what Glm4vProcessor assumes without metadata
        indices = list(metadata.frames_indices or range(2 * pairs))
        stamps = [i / fps for i in indices][::2][:pairs]
        while len(stamps) < pairs:
            stamps.append(stamps[-1] if stamps else 0)
        body = self.image_token * per_pair
        return "".join(f"<|begin_of_image|>{body}<|end_of_image|>{int(t)}" for t in stamps)


def processor_defaults(processor: Any) -> ProcessorDefaults:
    """Geometry and pixel bounds from the checkpoint's processor configs."""
    image, video = processor.image_processor, processor.video_processor
    geometry = VisionGeometry(patch_size=int(image.patch_size), merge_size=int(image.merge_size),
                              temporal_patch_size=int(image.temporal_patch_size))
    return ProcessorDefaults(geometry=geometry, image_bounds=_bounds(image.size), video_bounds=_bounds(video.size))


def _bounds(size: Any) -> PixelBounds:
    get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    return PixelBounds(min_pixels=int(get("shortest_edge")), max_pixels=int(get("longest_edge")))


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """Concatenated; a single (possibly cached) tensor is shared, not copied: engines treat inputs as read-only."""
    if not tensors:
        return None
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _media_key(digest: str, grid: torch.Tensor) -> str:
    """The Prompt's media hash: the source's content hash plus the patch grid it was processed to."""
    return f"{digest}:{'x'.join(str(int(v)) for v in grid[0])}"


def _pixels_hash(value: Any) -> str:
    if hasattr(value, "tobytes"):
        return content_hash(value.tobytes())
    return content_hash(np.asarray(value).tobytes())
