"""Normalizes OpenAI chat messages and loads the media they reference, in order.

This is the skeleton version: images by `data:` URI or `file://` under an allowed folder. The media issue
extends it (http(s) with an SSRF guard, video, documents, limits).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from glmv.inputs.processor import InvalidInputError, LoadedMedia, content_hash


@dataclass(frozen=True)
class MediaPolicy:
    allowed_local_media_path: Path | None = None
    allowed_media_domains: tuple[str, ...] = ()
    max_images: int = 300
    max_videos: int = 1
    max_documents: int = 1


def _decode_image(data: bytes, where: str):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidInputError(f"{where}: not a readable image ({exc}).", status=400, param="messages") from None
    return img.convert("RGB")


def _read_url(url: str, policy: MediaPolicy, where: str) -> bytes:
    if url.startswith("data:"):
        try:
            _header, b64 = url.split(",", 1)
            return base64.b64decode(b64, validate=False)
        except (ValueError, base64.binascii.Error) as exc:
            raise InvalidInputError(f"{where}: malformed data URI ({exc}).", param="messages") from None
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if policy.allowed_local_media_path is None:
            raise InvalidInputError(
                f"{where}: file:// URLs are off; start the server with --allowed-local-media-path DIR.",
                status=400,
                param="messages",
            )
        root = policy.allowed_local_media_path.resolve()
        path = Path(unquote(parsed.path)).resolve()
        if not path.is_relative_to(root):
            raise InvalidInputError(f"{where}: {path} is outside --allowed-local-media-path {root}.", status=403)
        if not path.is_file():
            raise InvalidInputError(f"{where}: no such file {path}.", status=400, param="messages")
        return path.read_bytes()
    raise InvalidInputError(f"{where}: unsupported URL scheme '{parsed.scheme}'.", status=400, param="messages")


def load_messages(messages: list[dict[str, Any]], policy: MediaPolicy) -> tuple[list[dict[str, Any]], LoadedMedia]:
    """Return template-ready messages (media parts reduced to their type) and the decoded media."""
    media = LoadedMedia(images=[], image_hashes=[], videos=[], video_metadata=[], video_hashes=[])
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        content = msg.get("content")
        if content is None or isinstance(content, str):
            out.append({**msg, "content": content or ""})
            continue
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type")
            where = f"messages[{i}].content[{j}]"
            if kind == "text":
                parts.append({"type": "text", "text": part.get("text", "")})
            elif kind in ("image_url", "image"):
                ref = part.get("image_url") or part.get("image")
                url = ref.get("url") if isinstance(ref, dict) else ref
                if not isinstance(url, str):
                    raise InvalidInputError(f"{where}: image_url.url is missing.", param="messages")
                data = _read_url(url, policy, where)
                media.images.append(_decode_image(data, where))
                media.image_hashes.append(content_hash(data))
                parts.append({"type": "image"})
            else:
                raise InvalidInputError(f"{where}: unsupported content part type '{kind}'.", status=400)
        out.append({**msg, "content": parts})
    if len(media.images) > policy.max_images:
        raise InvalidInputError(f"At most {policy.max_images} images per prompt; got {len(media.images)}.")
    return out, media
