"""OpenAI chat messages -> template-ready messages plus the decoded media they reference, in prompt order.

The loader checks the cheap things first (part shapes, counts per prompt, mixing rules, reserved tokens in text)
so a bad request is refused before a byte is downloaded; then it fetches every part at once, decodes images and
the video in worker threads, and renders documents last, because their page resolution depends on how many tokens
the rest of the prompt leaves them. Every refusal names its part, e.g. `messages[1].content[2]`.

Mixing rule (matches the model): a video cannot share a prompt with images or a document. GLM-4.1V was not trained
on that mix, and transformers' implementation fails on it (video frames are marked with the image token id).
Images and one document together are allowed: the document's pages are images too.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from glmv.inputs.cache import MediaCache, content_hash, sizeof
from glmv.inputs.document import RenderedDocument, document_to_pdf, render_document
from glmv.inputs.errors import InvalidInputError
from glmv.inputs.fetch import ByteBudget, FetchedMedia, fetch_media
from glmv.inputs.image import decode_image
from glmv.inputs.loaded import LoadedMedia
from glmv.inputs.mediatype import SUPPORTED_TEXT, MediaKind, describe_unknown, sniff
from glmv.inputs.options import MediaOptions, resolve_media_options
from glmv.inputs.policy import MediaPolicy
from glmv.inputs.sizing import image_tokens, video_tokens
from glmv.inputs.video import DecodedVideo, decode_video

__all__ = ["MediaPolicy", "load_messages", "load_messages_async", "RESERVED_TOKENS"]

# Markers the processor and M-RoPE rely on; in user text they would shift or fake media placeholders.
RESERVED_TOKENS = ("<|image|>", "<|video|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
                   "<|end_of_video|>")
_PART_KINDS: dict[str, MediaKind] = {
    "image_url": "image", "image": "image", "input_image": "image",
    "video_url": "video", "video": "video",
    "file": "document", "file_url": "document", "input_file": "document",
}
_ARTICLE = {"image": "an", "video": "a", "document": "a"}
_LIMIT_NAMES = {"image": "images", "video": "videos", "document": "documents"}
_TEMPLATE_OVERHEAD = 16  # [gMASK]<sop>, the generation prompt and a little slack
_MESSAGE_OVERHEAD = 4  # the role marker and newline of each turn


@dataclass
class _MediaPart:
    kind: MediaKind
    url: str
    where: str
    message: int
    part: int


def load_messages(messages: list[dict[str, Any]], policy: MediaPolicy, options: MediaOptions | None = None,
                  cache: MediaCache | None = None) -> tuple[list[dict[str, Any]], LoadedMedia]:
    """Blocking form of load_messages_async, for threads and scripts (not for a running event loop's thread)."""
    return asyncio.run(load_messages_async(messages, policy, options, cache))


async def load_messages_async(messages: list[dict[str, Any]], policy: MediaPolicy,
                              options: MediaOptions | None = None,
                              cache: MediaCache | None = None) -> tuple[list[dict[str, Any]], LoadedMedia]:
    """Template-ready messages (media parts reduced to `{"type": "image"|"video"}`) and their decoded media."""
    options = options or resolve_media_options(policy)
    texts, parts = _scan(messages)
    _check_counts(parts, policy)
    budget = ByteBudget(policy.max_prompt_media_bytes)
    fetched = await _all(fetch_media(p.url, policy, p.where, budget) for p in parts)
    decoded_bytes = ByteBudget(policy.max_prompt_decoded_bytes,
                               f"decode to more than {policy.max_prompt_decoded_bytes >> 20} MiB of pixels; send fewer "
                               "or smaller images, or a shorter video.")
    decoded: dict[int, Any] = {}
    jobs = [(i, p, f) for i, (p, f) in enumerate(zip(parts, fetched, strict=True)) if p.kind != "document"]
    results = await _all(asyncio.to_thread(_decode_one, p, f, policy, options, cache, decoded_bytes)
                         for _, p, f in jobs)
    for (i, _, _), result in zip(jobs, results, strict=True):
        decoded[i] = result
    _check_media_fit(parts, decoded, options)
    documents_left = sum(p.kind == "document" for p in parts)
    for i, (p, f) in enumerate(zip(parts, fetched, strict=True)):
        if p.kind == "document":
            room = _document_room(texts, messages, parts, decoded, options)
            if room is not None:  # several documents (when allowed) share what is left evenly
                room //= documents_left
            documents_left -= 1
            decoded[i] = await asyncio.to_thread(_render_one, p, f, policy, options, room, cache, decoded_bytes)
    return _assemble(messages, parts, decoded)


async def _all(coroutines) -> list[Any]:
    """Run concurrently; on the first failure cancel the rest (no download keeps running for a refused prompt) and
    raise that failure itself, not an ExceptionGroup."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coroutines]
    except BaseExceptionGroup as eg:
        first = eg.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [t.result() for t in tasks]


def _scan(messages: list[dict[str, Any]]) -> tuple[list[str], list[_MediaPart]]:
    """Check every message's shape and text; list the media parts in order."""
    if not isinstance(messages, list):
        raise InvalidInputError("messages must be a list.", param="messages")
    texts: list[str] = []
    parts: list[_MediaPart] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise InvalidInputError(f"messages[{i}] must be an object.", param=f"messages[{i}]")
        content = msg.get("content")
        if content is None or isinstance(content, str):
            texts.append(_checked_text(content or "", f"messages[{i}].content"))
            continue
        if not isinstance(content, list):
            raise InvalidInputError(f"messages[{i}].content must be a string or a list of parts.",
                                    param=f"messages[{i}].content")
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            if not isinstance(part, dict):
                raise InvalidInputError(f"{where} must be an object with a 'type'.", param=where)
            kind = part.get("type")
            if kind == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise InvalidInputError(f"{where}.text must be a string.", param=where)
                texts.append(_checked_text(text, where))
            elif kind in _PART_KINDS:
                parts.append(_MediaPart(_PART_KINDS[kind], _part_url(part, kind, where), where, i, j))
            elif kind in ("input_audio", "audio_url", "audio"):
                raise InvalidInputError(f"{where}: this model does not read audio (parts of type '{kind}').",
                                        status=415, param=where, code="unsupported_media_type")
            else:
                raise InvalidInputError(
                    f"{where}: unsupported content part type {kind!r}; use text, image_url, video_url or file.",
                    param=where)
    return texts, parts


def _checked_text(text: str, where: str) -> str:
    for token in RESERVED_TOKENS:
        if token in text:
            raise InvalidInputError(
                f"{where}: the text contains the reserved marker {token}; media go in image_url / video_url / file "
                "parts, not as markers in text.", param=where, code="reserved_token_in_text")
    return text


def _part_url(part: dict[str, Any], kind: str, where: str) -> str:
    """The URL (or data: URI) a media part points at, from any of the shapes clients send."""
    ref = part.get(kind)
    if kind == "input_image" and ref is None:
        ref = part.get("image_url")
    if kind in ("file", "input_file"):
        return _file_url(ref if ref is not None else part, where)
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str) or not url.strip():
        field = {"image_url": "image_url.url", "video_url": "video_url.url", "file_url": "file_url.url"}.get(kind, kind)
        raise InvalidInputError(f"{where}: {field} is missing; give the media's URL or a data: URI.", param=where)
    return url


def _file_url(ref: Any, where: str) -> str:
    """OpenAI's file part: `file_data` (a data: URI or bare base64) or, as a glmv extension, `url`."""
    if not isinstance(ref, dict):
        raise InvalidInputError(f"{where}: file must be an object with file_data (or url).", param=where)
    data = ref.get("file_data")
    if isinstance(data, str) and data.strip():
        data = data.strip()
        return data if data.startswith("data:") else "data:;base64," + data
    url = ref.get("url") or ref.get("file_url")
    if isinstance(url, str) and url.strip():
        return url
    if ref.get("file_id"):
        raise InvalidInputError(f"{where}: file_id needs a Files API, which this server does not have; send the file "
                                "inline as file_data (a data: URI).", param=where)
    raise InvalidInputError(f"{where}: file.file_data is missing; send the document as a data: URI.", param=where)


def _check_counts(parts: list[_MediaPart], policy: MediaPolicy) -> None:
    limits = {"image": policy.max_images, "video": policy.max_videos, "document": policy.max_documents}
    by_kind: dict[str, list[_MediaPart]] = {"image": [], "video": [], "document": []}
    for p in parts:
        by_kind[p.kind].append(p)
        if len(by_kind[p.kind]) > limits[p.kind]:
            raise InvalidInputError(
                f"{p.where}: at most {limits[p.kind]} {_LIMIT_NAMES[p.kind]} per prompt on this server "
                f"(--limit-mm-per-prompt); this is number {len(by_kind[p.kind])}.", param=p.where,
                code="too_many_media")
    if by_kind["video"] and (by_kind["image"] or by_kind["document"]):
        video = by_kind["video"][0]
        other = (by_kind["image"] or by_kind["document"])[0]
        raise InvalidInputError(
            f"{video.where} (a video) cannot share a prompt with {other.where} (an {other.kind}): GLM-4.1V reads "
            "either one video or images/a document per prompt. Send them in separate requests.",
            param=video.where, code="unsupported_media_mix")


def _sniffed(p: _MediaPart, f: FetchedMedia, expected: MediaKind) -> tuple[str, str]:
    """(format, content hash) of the fetched bytes, refusing empty files and kinds the part did not promise."""
    if not f.data:
        raise InvalidInputError(f"{p.where}: {f.source} is empty.", param=p.where, code="empty_media")
    mtype = sniff(f.data)
    if mtype is None:
        raise InvalidInputError(
            f"{p.where}: {f.source} holds {describe_unknown(f.data)}. Supported {expected}s: "
            f"{SUPPORTED_TEXT[expected]}.", status=415, param=p.where, code="unsupported_media_type")
    if mtype.kind != expected:
        hint = {"image": "image_url", "video": "video_url", "document": "file"}[mtype.kind]
        raise InvalidInputError(
            f"{p.where}: {f.source} holds a {mtype.format.upper()} {mtype.kind}, but was sent as {_ARTICLE[p.kind]} "
            f"{p.kind}; send it as a '{hint}' part.", status=415, param=p.where, code="unsupported_media_type")
    return mtype.format, content_hash(f.data)


def _decode_one(p: _MediaPart, f: FetchedMedia, policy: MediaPolicy, options: MediaOptions,
                cache: MediaCache | None, decoded_bytes: ByteBudget) -> tuple[Any, str]:
    fmt, digest = _sniffed(p, f, p.kind)
    if p.kind == "image":
        key = ("image", digest, policy.max_image_pixels)
        value = cache.get(key) if cache is not None else None
        if value is None:
            value = decode_image(f.data, fmt, p.where, policy.max_image_pixels)
            if cache is not None:
                cache.put(key, value)
    else:
        key = ("video", digest, options.video, options.video_bounds, options.geometry, policy.max_image_pixels)
        value = cache.get(key) if cache is not None else None
        if value is None:
            value = decode_video(f.data, fmt, p.where, options.video, options.video_bounds, options.geometry,
                                 policy.max_image_pixels)
            if cache is not None:
                cache.put(key, value)
    decoded_bytes.take(sizeof(value), p.where)
    return value, digest


def _render_one(p: _MediaPart, f: FetchedMedia, policy: MediaPolicy, options: MediaOptions, room: int | None,
                cache: MediaCache | None, decoded_bytes: ByteBudget) -> tuple[RenderedDocument, str]:
    fmt, digest = _sniffed(p, f, "document")
    pdf = cache.get(("pdf", digest)) if cache is not None and fmt != "pdf" else None
    if pdf is None:
        pdf = document_to_pdf(f.data, fmt, p.where, options.document)  # LibreOffice for PPT/PPTX: seconds
        if cache is not None and fmt != "pdf":
            cache.put(("pdf", digest), pdf, len(pdf))
    doc = render_document(pdf, p.where, options.document, room, options.image_bounds, options.geometry,
                          policy.max_image_pixels, cache, digest)
    decoded_bytes.take(sizeof(doc.pages), p.where)
    return doc, digest


def _media_tokens(parts: list[_MediaPart], decoded: dict[int, Any], options: MediaOptions) -> int:
    """LLM tokens of the decoded images and video (placeholders, markers and timestamps), exactly as processed."""
    used = 0
    for i, p in enumerate(parts):
        if i not in decoded:
            continue
        value = decoded[i][0]
        if p.kind == "document":  # an earlier document of the same prompt (when the limit allows several)
            used += sum(image_tokens(page.height, page.width, options.image_bounds, options.geometry) + 2
                        for page in value.pages)
        elif p.kind == "image":
            used += image_tokens(value.height, value.width, options.image_bounds, options.geometry) + 2
        else:
            frames, height, width = value.frames.shape[:3]
            used += video_tokens(frames, height, width, options.video_bounds, options.geometry) + 5 * frames // 2 + 2
    return used


def _check_media_fit(parts: list[_MediaPart], decoded: dict[int, Any], options: MediaOptions) -> None:
    """Refuse before preprocessing when the media alone overflow the context (the engine would refuse later)."""
    if options.max_model_len is None:
        return
    used = _media_tokens(parts, decoded, options)
    if used > options.max_model_len:
        raise InvalidInputError(
            f"The media of this prompt need {used} tokens, more than this model's maximum context length of "
            f"{options.max_model_len} tokens; send fewer or smaller images (or lower mm_processor_kwargs "
            "max_pixels), or a shorter video.", param="messages", code="context_length_exceeded")


def _document_room(texts: list[str], messages: list[dict[str, Any]], parts: list[_MediaPart],
                   decoded: dict[int, Any], options: MediaOptions) -> int | None:
    """Tokens left for a document: the prompt's budget minus text, other media and template overhead."""
    if options.token_budget is None:
        return None
    joined = "\n".join(texts)
    text_tokens = options.count_text_tokens(joined) if options.count_text_tokens else len(joined) // 2 + 1
    used = text_tokens + _TEMPLATE_OVERHEAD + _MESSAGE_OVERHEAD * len(messages)
    return options.token_budget - used - _media_tokens(parts, decoded, options)


def _assemble(messages: list[dict[str, Any]], parts: list[_MediaPart],
              decoded: dict[int, Any]) -> tuple[list[dict[str, Any]], LoadedMedia]:
    media = LoadedMedia(images=[], image_hashes=[], videos=[], video_metadata=[], video_hashes=[])
    slots = {(p.message, p.part): i for i, p in enumerate(parts)}
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        content = msg.get("content")
        if content is None or isinstance(content, str):
            out.append({**msg, "content": content or ""})
            continue
        new_parts: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            if part.get("type") == "text":
                new_parts.append({"type": "text", "text": part["text"]})
                continue
            p = parts[slots[(i, j)]]
            value, digest = decoded[slots[(i, j)]]
            if p.kind == "image":
                media.images.append(value)
                media.image_hashes.append(digest)
                media.image_parts.append(p.where)
                new_parts.append({"type": "image"})
            elif p.kind == "video":
                video: DecodedVideo = value
                media.videos.append(video.frames)
                media.video_metadata.append(video.metadata)
                media.video_hashes.append(digest)
                media.video_parts.append(p.where)
                new_parts.append({"type": "video"})
            else:
                doc: RenderedDocument = value
                for k, page in enumerate(doc.pages):
                    media.images.append(page)
                    media.image_hashes.append(f"{digest}:page{k}@{doc.dpi:.3f}")
                    media.image_parts.append(f"{p.where} page {k + 1}")
                    new_parts.append({"type": "image"})
                info = media.info  # several documents (when allowed) add up; the lowest resolution is reported
                info["document_pages"] = info.get("document_pages", 0) + doc.pages_read
                info["document_pages_total"] = info.get("document_pages_total", 0) + doc.pages_total
                info["document_dpi"] = min(info.get("document_dpi", 1e9), round(doc.dpi, 1))
        out.append({**msg, "content": new_parts})
    return out, media
