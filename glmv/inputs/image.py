"""Decodes image bytes into the RGB picture the processor expects, with the guards untrusted files need.

What happens to a picture: only the sniffed format's decoder is used; the declared size is checked against a
pixel cap before any pixel is decoded (a PNG header can claim 100000x100000 in a few bytes); EXIF orientation is
applied so phone photos stand upright; transparency is flattened onto white (the processor would otherwise drop
alpha and show whatever color the transparent pixels hold, often black); animations give their first frame;
16-bit and float images are scaled to 8 bits.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from glmv.inputs.errors import InvalidInputError
from glmv.inputs.sizing import MAX_ASPECT_RATIO

_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF", "webp": "WEBP"}


def decode_image(data: bytes, fmt: str, where: str, max_pixels: int) -> Image.Image:
    """An RGB image decoded from `data` (whose format `fmt` was sniffed), or InvalidInputError (400 / 413)."""
    pil_format = _PIL_FORMATS.get(fmt)
    if pil_format is None:
        raise InvalidInputError(f"{where}: '{fmt}' is not an image format glmv reads.", status=415, param=where,
                                code="unsupported_media_type")
    try:
        img = Image.open(io.BytesIO(data), formats=[pil_format])  # reads the header only
        check_pixels(img.size, where, max_pixels)
        img.load()  # the first frame of an animation
    except InvalidInputError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own guard, at twice its threshold
        raise InvalidInputError(f"{where}: the image declares more pixels than this server's limit of "
                                f"{max_pixels:,} ({exc})", status=413, param=where, code="image_too_large") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as exc:
        raise InvalidInputError(f"{where}: the {fmt.upper()} image is damaged or truncated ({exc}).", param=where,
                                code="invalid_image") from None
    try:
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, TypeError):
        pass  # broken EXIF: keep the picture as stored
    rgb = to_rgb(img)
    width, height = rgb.size
    if max(width, height) / max(1, min(width, height)) > MAX_ASPECT_RATIO:
        raise InvalidInputError(f"{where}: the image is {width}x{height}; the model reads aspect ratios up to "
                                f"{MAX_ASPECT_RATIO}:1. Crop it.", param=where, code="invalid_image")
    return rgb


def check_pixels(size: tuple[int, int], where: str, max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidInputError(f"{where}: the image has no pixels ({width}x{height}).", param=where,
                                code="invalid_image")
    if width * height > max_pixels:
        raise InvalidInputError(
            f"{where}: the image is {width}x{height} = {width * height:,} pixels, over this server's limit of "
            f"{max_pixels:,}; send a smaller image.", status=413, param=where, code="image_too_large")


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB; transparent pixels become white; high bit depths are scaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if img.mode == "F" and arr.max() <= 1.0:
            top = 1.0
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if (img.mode == "P" and "transparency" in img.info) or img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "RGB":
        return img
    return img.convert("RGB")
