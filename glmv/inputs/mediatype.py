"""Sniffs what a blob of media bytes is from its leading bytes, never from its name or declared type.

A file named `cat.png` that holds text, or a `data:image/png` URI that holds a PDF, is judged by its bytes: the
decoders that run later (Pillow, PyAV's demuxers, pdfium, LibreOffice) are then chosen from a short allow-list, so
an unexpected format never reaches a parser we did not mean to expose (e.g. FFmpeg's playlist demuxers, which
would open URLs of their own).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import Literal

MediaKind = Literal["image", "video", "document"]


@dataclass(frozen=True)
class MediaType:
    """What the bytes are: a kind the model reads, a format name, and the MIME type we report."""

    kind: MediaKind
    format: str  # "jpeg", "png", ..., "mp4", "matroska", ..., "pdf", "pptx", "ppt"
    mime: str


IMAGE_FORMATS = ("jpeg", "png", "gif", "bmp", "tiff", "webp")
VIDEO_FORMATS = ("mp4", "mov", "m4v", "avi", "matroska", "webm", "asf", "flv", "mpeg-ps", "mpeg-ts", "mpeg-es")
DOCUMENT_FORMATS = ("pdf", "pptx", "ppt")

# What users call the formats, for error messages.
SUPPORTED_TEXT = {
    "image": "JPG, JPEG, PNG, GIF, BMP, TIFF, WEBP",
    "video": "MP4, AVI, MKV, MOV, WMV, FLV, WEBM, MPEG, M4V",
    "document": "PDF, PPT, PPTX",
}

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ASF_MAGIC = b"\x30\x26\xb2\x75\x8e\x66\xcf\x11\xa6\xd9\x00\xaa\x00\x62\xce\x6c"
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1", b"avif",
                b"avis")
_MOV_ATOMS = (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


def sniff(data: bytes) -> MediaType | None:
    """The media type of `data`, or None when it is none of the formats glmv reads."""
    head = data[:64]
    if head.startswith(b"\xff\xd8\xff"):
        return MediaType("image", "jpeg", "image/jpeg")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return MediaType("image", "png", "image/png")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return MediaType("image", "gif", "image/gif")
    if head.startswith(b"BM") and len(data) >= 26:
        return MediaType("image", "bmp", "image/bmp")
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return MediaType("image", "tiff", "image/tiff")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return MediaType("image", "webp", "image/webp")
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return MediaType("video", "avi", "video/x-msvideo")
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return None  # HEIC / AVIF photos share MP4's box format but are stills glmv does not decode
        if brand == b"qt  ":
            return MediaType("video", "mov", "video/quicktime")
        if brand.startswith(b"M4V"):
            return MediaType("video", "m4v", "video/x-m4v")
        return MediaType("video", "mp4", "video/mp4")
    if head[4:8] in _MOV_ATOMS:
        return MediaType("video", "mov", "video/quicktime")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        if b"webm" in data[:64]:
            return MediaType("video", "webm", "video/webm")
        return MediaType("video", "matroska", "video/x-matroska")
    if head.startswith(_ASF_MAGIC):
        return MediaType("video", "asf", "video/x-ms-wmv")
    if head.startswith(b"FLV\x01"):
        return MediaType("video", "flv", "video/x-flv")
    if head.startswith(b"\x00\x00\x01\xba"):
        return MediaType("video", "mpeg-ps", "video/mpeg")
    if head.startswith(b"\x00\x00\x01\xb3"):
        return MediaType("video", "mpeg-es", "video/mpeg")
    if _is_mpeg_ts(data):
        return MediaType("video", "mpeg-ts", "video/mp2t")
    if b"%PDF-" in data[:1024]:
        return MediaType("document", "pdf", "application/pdf")
    if head.startswith(b"PK\x03\x04") and _zip_has(data, "ppt/presentation.xml"):
        return MediaType("document", "pptx",
                         "application/vnd.openxmlformats-officedocument.presentationml.presentation")
    if head.startswith(_OLE_MAGIC) and "PowerPoint Document".encode("utf-16-le") in data[:1 << 20]:
        return MediaType("document", "ppt", "application/vnd.ms-powerpoint")
    return None


def describe_unknown(data: bytes) -> str:
    """A short guess at what unsupported bytes are, so the error message helps ("text", "a ZIP archive")."""
    head = data[:64]
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "a HEIC/AVIF image, which glmv does not decode; convert it to JPEG or PNG"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive (e.g. DOCX/XLSX), not a supported format"
    if head.startswith(_OLE_MAGIC):
        return "an OLE file (e.g. DOC/XLS), not a supported format"
    if (head[:4] == b"RIFF" and head[8:12] == b"WAVE") or head[:3] == b"ID3" or head[:4] in (b"OggS", b"fLaC"):
        return "audio, which this model does not read"
    sample = data[:2048]
    try:
        sample.decode("utf-8")
        return "text, not media"
    except UnicodeDecodeError:
        return "bytes of an unknown format"


def _is_mpeg_ts(data: bytes) -> bool:
    for start, step in ((0, 188), (4, 192)):
        if len(data) >= start + 3 * step and all(data[start + i * step] == 0x47 for i in range(3)):
            return True
    return False


def _zip_has(data: bytes, name: str) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return name in zf.namelist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return False
