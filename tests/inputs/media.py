"""Real media made by real encoders for the inputs tests: Pillow images, PyAV videos, PDFs, a PPTX, bad files."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
from PIL import Image

# Every container the model's documentation lists, with a codec the PyAV wheel carries.
VIDEO_CASES = {
    "mp4": ("mp4", "libx264"),
    "avi": ("avi", "mpeg4"),
    "mkv": ("matroska", "libvpx-vp9"),
    "mov": ("mov", "mjpeg"),
    "wmv": ("asf", "wmv2"),
    "flv": ("flv", "flv"),
    "webm": ("webm", "libvpx"),
    "mpeg": ("mpeg", "mpeg1video"),
    "m4v": ("ipod", "mpeg4"),
}
IMAGE_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF",
                 "webp": "WEBP"}


def noise(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def image_bytes(fmt: str, width: int = 150, height: int = 100, seed: int = 0, mode: str = "RGB", **save) -> bytes:
    img = Image.fromarray(noise(width, height, seed))
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=IMAGE_FORMATS.get(fmt, fmt), **save)
    return buf.getvalue()


def frame_of(index: int, width: int, height: int) -> np.ndarray:
    """A frame whose mean brightness encodes its index (so decoded frames can be told apart after lossy codecs)."""
    value = (index * 23) % 200 + 20
    frame = np.full((height, width, 3), value, dtype=np.uint8)
    frame[: height // 4, : width // 4] = 255 - value
    return frame


def video_bytes(container: str, codec: str, frames: int = 12, fps: int = 6, width: int = 112, height: int = 84,
                pts_seconds: list[float] | None = None, audio: bool = False) -> bytes:
    """Encode `frames` frames; `pts_seconds` gives each frame's own time (variable frame rate) when set."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if pts_seconds is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if audio:
            sound = out.add_stream("aac", rate=16000)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(frame_of(i, width, height), format="rgb24")
            if pts_seconds is not None:
                frame.pts, frame.time_base = int(round(pts_seconds[i] * 1000)), Fraction(1, 1000)
            else:
                frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if audio:
            _encode_audio(out, sound, seconds=frames / fps)
    return buf.getvalue()


def audio_only_bytes(container: str = "mp4", seconds: float = 1.0) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        _encode_audio(out, out.add_stream("aac", rate=16000), seconds)
    return buf.getvalue()


def _encode_audio(out, stream, seconds: float) -> None:
    rate, chunk = 16000, 1024
    t = np.arange(int(rate * seconds)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for start in range(0, len(samples), chunk):
        piece = samples[start:start + chunk]
        if len(piece) < chunk:
            piece = np.pad(piece, (0, chunk - len(piece)))
        frame = av.AudioFrame.from_ndarray(piece[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def pdf_bytes(pages: int = 3, size: tuple[int, int] = (595, 842)) -> bytes:
    """A multi-page PDF (A4 in points by default) written by Pillow, one distinct grey level per page."""
    width, height = int(size[0]), int(size[1])
    images = [Image.new("RGB", (width, height), (40 + 50 * i % 200,) * 3) for i in range(pages)]
    buf = io.BytesIO()
    images[0].save(buf, format="PDF", save_all=True, append_images=images[1:], resolution=72.0)
    return buf.getvalue()


def encrypted_pdf_bytes(password: str = "secret") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(io.BytesIO(pdf_bytes(2))).pages:
        writer.add_page(page)
    writer.encrypt(password, algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def pptx_bytes(slides: int = 3) -> bytes:
    from pptx import Presentation

    deck = Presentation()
    for i in range(slides):
        slide = deck.slides.add_slide(deck.slide_layouts[5])
        slide.shapes.title.text = f"Slide number {i + 1}"
    buf = io.BytesIO()
    deck.save(buf)
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's calling card)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


def data_uri(data: bytes, mime: str = "application/octet-stream") -> str:
    import base64

    return f"data:{mime};base64," + base64.b64encode(data).decode()


# Content parts in OpenAI's shapes.
def user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def video_part(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


def file_part(url: str, filename: str = "doc.pdf") -> dict:
    if url.startswith("data:"):
        return {"type": "file", "file": {"file_data": url, "filename": filename}}
    return {"type": "file", "file": {"url": url}}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}
