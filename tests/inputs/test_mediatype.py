"""Sniffing: what bytes are is decided from the bytes; names and declared types never matter."""

from __future__ import annotations

import pytest

from glmv.inputs.mediatype import describe_unknown, sniff
from tests.inputs.media import (
    IMAGE_FORMATS,
    VIDEO_CASES,
    audio_only_bytes,
    image_bytes,
    pdf_bytes,
    pptx_bytes,
    video_bytes,
)

VIDEO_FORMATS = {"mp4": "mp4", "avi": "avi", "mkv": "matroska", "mov": "mov", "wmv": "asf", "flv": "flv",
                 "webm": "webm", "mpeg": "mpeg-ps", "m4v": "m4v"}


@pytest.mark.parametrize("fmt", sorted(IMAGE_FORMATS))
def test_images(fmt):
    got = sniff(image_bytes(fmt))
    assert got.kind == "image" and got.format == {"jpg": "jpeg"}.get(fmt, fmt)


@pytest.mark.parametrize("name", sorted(VIDEO_CASES))
def test_video_containers(name):
    container, codec = VIDEO_CASES[name]
    fps = 24 if name == "mpeg" else 6
    got = sniff(video_bytes(container, codec, frames=4, fps=fps))
    assert got.kind == "video" and got.format == VIDEO_FORMATS[name]


def test_mpeg_transport_stream():
    got = sniff(video_bytes("mpegts", "libx264", frames=4, fps=6))
    assert (got.kind, got.format) == ("video", "mpeg-ts")


def test_documents():
    assert sniff(pdf_bytes(1)).format == "pdf"
    assert sniff(pptx_bytes(1)).format == "pptx"
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500) + "PowerPoint Document".encode("utf-16-le") + bytes(100)
    assert sniff(ole).format == "ppt"


@pytest.mark.parametrize(("data", "words"), [
    (b"just text named cat.png\n", "text"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "text"),
    (b"PK\x03\x04" + bytes(60), "ZIP"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600), "OLE"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
    (bytes(range(256)), "unknown"),
])
def test_unsupported_bytes_are_described(data, words):
    assert sniff(data) is None
    assert words in describe_unknown(data)


def test_audio_in_an_mp4_box_is_a_video_container():
    """It is then refused by the decoder, which says the file has no video stream."""
    assert sniff(audio_only_bytes("mp4")).kind == "video"
