"""PromptBuilder: OpenAI-style messages -> Prompt, through the chat template and the checkpoint's processor.

The processor (transformers' Glm4vProcessor) expands each `<|image|>` into one token per 28x28 pixels and
returns mm_token_type_ids for M-RoPE; glmv keeps that as the single source of truth for placeholder counts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
import torch

from glmv.inputs.prompt import MultiModalInputs, Prompt
from glmv.models.constants import CHAT_TEMPLATE_PATH


class InvalidInputError(ValueError):
    """Bad input a user can fix. `status` is the HTTP code doors answer with; `param` names the field."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code


@dataclass
class LoadedMedia:
    """Decoded media of one prompt, in message order."""

    images: list[Any]
    image_hashes: list[str]
    videos: list[Any]  # decoded frames, (T, H, W, C) uint8 arrays
    video_metadata: list[Any]
    video_hashes: list[str]


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


class PromptBuilder:
    """Builds Prompts for one checkpoint. Thread-safe for concurrent use (the processor is stateless per call)."""

    def __init__(self, model_dir: Path, chat_template: str | None = None):
        from transformers import AutoProcessor

        self.model_dir = Path(model_dir)
        self.processor = AutoProcessor.from_pretrained(str(model_dir))
        self.tokenizer = self.processor.tokenizer
        self.chat_template_text = load_chat_template(self.model_dir, chat_template)
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._template = env.from_string(self.chat_template_text)

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

    def build(
        self,
        text: str,
        media: LoadedMedia | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> Prompt:
        """Run the processor over rendered prompt text plus decoded media."""
        if media is None or (not media.images and not media.videos):
            return self.from_text(text)
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if media.images:
            kwargs["images"] = media.images
        if media.videos:
            kwargs["videos"] = media.videos
            kwargs["video_metadata"] = media.video_metadata
            kwargs["do_sample_frames"] = False
        try:
            out = self.processor(**kwargs, **(mm_processor_kwargs or {}))
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(f"Could not process the media: {exc}", param="messages") from None
        mm = MultiModalInputs(
            pixel_values=out.get("pixel_values"),
            image_grid_thw=out.get("image_grid_thw"),
            pixel_values_videos=out.get("pixel_values_videos"),
            video_grid_thw=out.get("video_grid_thw"),
            image_hashes=list(media.image_hashes),
            video_hashes=list(media.video_hashes),
        )
        ids = out["input_ids"][0].tolist()
        types = out["mm_token_type_ids"][0].tolist() if "mm_token_type_ids" in out else None
        return Prompt(token_ids=ids, mm_token_type_ids=types, mm=mm, text=text)


def content_hash(data: bytes | torch.Tensor) -> str:
    if isinstance(data, torch.Tensor):
        data = data.contiguous().view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:32]
