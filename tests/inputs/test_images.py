"""Images: every listed format decodes; orientation, transparency, animation and bit depth handled; bad files 4xx."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from glmv.inputs.errors import InvalidInputError
from glmv.inputs.image import decode_image
from glmv.inputs.mediatype import sniff
from tests.inputs.media import IMAGE_FORMATS, data_uri, image_bytes, image_part, png_declaring, text_part, user

MAX = 89_478_485


def _decode(data: bytes, max_pixels: int = MAX) -> Image.Image:
    mtype = sniff(data)
    assert mtype is not None and mtype.kind == "image"
    return decode_image(data, mtype.format, "messages[0].content[0]", max_pixels)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", sorted(IMAGE_FORMATS))
def test_every_format_decodes_to_rgb(fmt):
    data = image_bytes(fmt, 150, 100, seed=1)
    assert sniff(data).format == {"jpg": "jpeg"}.get(fmt, fmt)
    img = _decode(data)
    assert img.mode == "RGB" and img.size == (150, 100)
    if fmt in ("png", "bmp", "tiff"):  # lossless: the very pixels
        original = np.random.default_rng(1).integers(0, 255, (100, 150, 3), dtype=np.uint8)
        assert np.array_equal(np.asarray(img), original)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (120, 60), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 20, 60))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = _decode(_save(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (60, 120)
    top = np.asarray(out)[:15].reshape(-1, 3).mean(0)
    assert top[2] > 200 and top[0] < 60  # the left strip is now on top


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF"])
def test_transparency_is_flattened_onto_white(fmt):
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent black
    img.paste((200, 10, 10, 255), (0, 0, 32, 64))
    if fmt == "GIF":  # a palette image: index 0 red, index 1 black and marked transparent
        img = Image.new("P", (64, 64), 1)
        img.putpalette([200, 10, 10, 0, 0, 0] + [0, 0, 0] * 254)
        img.paste(0, (0, 0, 32, 64))
        data = _save(img, fmt, transparency=1)
    else:
        data = _save(img, fmt, lossless=True) if fmt == "WEBP" else _save(img, fmt)
    out = np.asarray(_decode(data))
    assert (out[:, 40:] >= 250).all()  # the transparent half is white, not black
    assert out[:, :20, 0].mean() > 150 and out[:, :20, 1].mean() < 60


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (40, 40), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = np.asarray(_decode(data))
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 50


def test_sixteen_bit_png_is_scaled_not_clipped():
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    out = np.asarray(_decode(_save(Image.fromarray(ramp), "PNG")))
    assert out.shape == (64, 64, 3)
    assert 0 < out.mean() < 255 and out.max() > 200 and out.min() < 5


def test_declared_huge_png_is_refused_before_decoding():
    with pytest.raises(InvalidInputError) as err:
        _decode(png_declaring(100_000, 100_000))
    assert err.value.status == 413 and "10000000000 pixels" in str(err.value)
    assert err.value.param == "messages[0].content[0]"


def test_pixel_cap_is_configurable():
    with pytest.raises(InvalidInputError) as err:
        _decode(image_bytes("png", 150, 100), max_pixels=10_000)
    assert err.value.status == 413 and "10,000" in str(err.value)


def test_truncated_image_is_a_400():
    data = image_bytes("png", 200, 200)
    with pytest.raises(InvalidInputError) as err:
        _decode(data[: len(data) // 2])
    assert err.value.status == 400 and "truncated" in str(err.value).lower()


def test_garbage_after_a_jpeg_header_is_a_400():
    with pytest.raises(InvalidInputError) as err:
        _decode(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    assert err.value.status == 400


def test_extreme_aspect_ratio_is_a_400():
    with pytest.raises(InvalidInputError) as err:
        _decode(_save(Image.new("RGB", (4000, 10)), "PNG"))
    assert err.value.status == 400 and "aspect ratio" in str(err.value)


def test_bad_images_through_the_loader(build_prompt):
    cases = [
        (b"", 400, "empty"),
        (b"hello, I am a text file named cat.png\n", 415, "text"),
        (image_bytes("png")[:300], 400, "truncated"),
        (png_declaring(100_000, 100_000), 413, "pixels"),
    ]
    for data, status, words in cases:
        with pytest.raises(InvalidInputError) as err:
            build_prompt(user(text_part("look"), image_part(data_uri(data, "image/png"))))
        assert err.value.status == status, (words, err.value)
        assert words in str(err.value).lower() and err.value.param == "messages[0].content[1]"


def test_declared_type_is_ignored(build_prompt):
    """A JPEG sent as data:image/png still decodes: the bytes decide."""
    prompt, media, _ = build_prompt(user(image_part(data_uri(image_bytes("jpg"), "image/png"))))
    assert len(media.images) == 1 and prompt.mm.pixel_values is not None


def test_mm_processor_kwargs_bound_the_token_count(builder, build_prompt):
    data = data_uri(image_bytes("png", 560, 560, seed=4))
    image_id = builder.processor.image_token_id
    default, _, _ = build_prompt(user(image_part(data)))
    small, _, _ = build_prompt(user(image_part(data)), mm_processor_kwargs={"max_pixels": 112 * 112})
    sized, _, _ = build_prompt(user(image_part(data)),
                               mm_processor_kwargs={"size": {"shortest_edge": 12544, "longest_edge": 2 * 224 * 224}})
    assert default.token_ids.count(image_id) == 400  # 560/28 squared
    assert small.token_ids.count(image_id) == 16  # 112x112 px
    assert sized.token_ids.count(image_id) == 64  # 224x224 px
    big, _, _ = build_prompt(user(image_part(data_uri(image_bytes("png", 30, 30)))),
                             mm_processor_kwargs={"min_pixels": 280 * 280})
    assert big.token_ids.count(image_id) == 100  # upscaled to at least 280x280 px


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"max_pixels": 10 ** 12}, "at most"),
    ({"min_pixels": 5000, "max_pixels": 100}, "must not exceed"),
    ({"max_pixels": "big"}, "integer"),
    ({"min_pixel": 100}, "unknown key"),
    ({"size": {"longest": 5}}, "unknown key"),
])
def test_bad_mm_processor_kwargs_are_400(builder, kwargs, words):
    from glmv.inputs.policy import MediaPolicy

    with pytest.raises(InvalidInputError) as err:
        builder.media_options(MediaPolicy(), mm_processor_kwargs=kwargs)
    assert err.value.status == 400 and words in str(err.value)
    assert err.value.param.startswith("mm_processor_kwargs")
