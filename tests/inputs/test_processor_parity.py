"""For every format, glmv's prompts equal what transformers' Glm4vProcessor makes of the same frames.

glmv preprocesses one item at a time (to cache it) and writes the placeholders itself; these tests hold it to the
reference: token ids, token types (M-RoPE needs them), pixel tensors and grids, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glmv.inputs.policy import MediaPolicy
from glmv.inputs.sizing import image_tokens
from tests.inputs.media import (
    IMAGE_FORMATS,
    VIDEO_CASES,
    data_uri,
    file_part,
    image_bytes,
    image_part,
    pdf_bytes,
    text_part,
    user,
    video_bytes,
    video_part,
)


def _reference(builder, prompt, media, **kwargs):
    out = builder.processor(text=[prompt.text], images=media.images or None, videos=media.videos or None,
                            video_metadata=media.video_metadata or None, return_tensors="pt",
                            add_special_tokens=False, **({"do_sample_frames": False} if media.videos else {}), **kwargs)
    return out


def _assert_same(prompt, ref, image_token_id):
    assert prompt.token_ids == ref["input_ids"][0].tolist()
    assert prompt.mm_token_type_ids == ref["mm_token_type_ids"][0].tolist()
    for ours, theirs in ((prompt.mm.pixel_values, ref.get("pixel_values")),
                         (prompt.mm.image_grid_thw, ref.get("image_grid_thw")),
                         (prompt.mm.pixel_values_videos, ref.get("pixel_values_videos")),
                         (prompt.mm.video_grid_thw, ref.get("video_grid_thw"))):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)
    assert prompt.token_ids.count(image_token_id) > 0


@pytest.mark.parametrize("fmt", sorted(IMAGE_FORMATS))
def test_image_formats_match_the_processor(builder, build_prompt, fmt):
    data = image_bytes(fmt, 150, 100, seed=3)
    prompt, media, _ = build_prompt(user(image_part(data_uri(data)), text_part("What is this?")))
    ref = _reference(builder, prompt, media)
    _assert_same(prompt, ref, builder.processor.image_token_id)
    grid = prompt.mm.image_grid_thw[0]
    assert prompt.token_ids.count(builder.processor.image_token_id) == int(grid.prod()) // 4
    # The arithmetic the loader uses to budget documents agrees with the processor's count.
    options = builder.media_options(MediaPolicy())
    assert image_tokens(100, 150, options.image_bounds, options.geometry) == int(grid.prod()) // 4


@pytest.mark.parametrize("name", sorted(VIDEO_CASES))
def test_video_containers_match_the_processor(builder, build_prompt, name):
    container, codec = VIDEO_CASES[name]
    fps = 24 if name == "mpeg" else 6
    data = video_bytes(container, codec, frames=2 * fps, fps=fps)
    prompt, media, _ = build_prompt(user(video_part(data_uri(data)), text_part("What happens?")))
    ref = _reference(builder, prompt, media)
    _assert_same(prompt, ref, builder.processor.image_token_id)
    assert set(prompt.mm_token_type_ids) == {0, 2}  # frames are marked as video, not image
    meta = media.video_metadata[0]
    assert len(meta.frames_indices) == 4 and meta.fps == fps  # 2 s at 2 fps
    text = builder.tokenizer.decode(prompt.token_ids)
    assert "<|end_of_image|>0<|begin_of_image|>" in text and "<|end_of_image|>1<|end_of_video|>" in text


def test_our_sampling_equals_the_processors_own(builder):
    """Given every frame and the stream's metadata, the processor's own sampler picks the frames we decoded."""
    import av
    from transformers.video_utils import VideoMetadata

    from glmv.inputs.sizing import PixelBounds, VisionGeometry
    from glmv.inputs.video import VideoSampling, decode_video

    data = video_bytes("mp4", "libx264", frames=45, fps=9)
    with av.open(__import__("io").BytesIO(data)) as container:
        all_frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    ours = decode_video(data, "mp4", "v", VideoSampling(), PixelBounds(12544, 47040000), VisionGeometry(), 10 ** 8)
    meta = VideoMetadata(total_num_frames=len(all_frames), fps=9.0, duration=ours.metadata.duration,
                         frames_indices=list(range(len(all_frames))))
    sampled = builder.processor.video_processor.sample_frames(meta)
    assert list(sampled) == ours.metadata.frames_indices
    assert np.array_equal(ours.frames, all_frames[sampled])


def test_images_and_a_document_together_match(builder, build_prompt):
    parts = [image_part(data_uri(image_bytes("png", 90, 60, seed=1))), text_part("and"),
             file_part(data_uri(pdf_bytes(2, size=(200, 280)))), image_part(data_uri(image_bytes("jpg", 64, 64)))]
    prompt, media, normalized = build_prompt(user(*parts))
    assert [p["type"] for p in normalized[0]["content"]] == ["image", "text", "image", "image", "image"]
    assert prompt.info == {"document_pages": 2, "document_pages_total": 2, "document_dpi": 180.0}
    ref = _reference(builder, prompt, media)
    _assert_same(prompt, ref, builder.processor.image_token_id)
    assert len(prompt.mm.image_hashes) == 4 and len(set(prompt.mm.image_hashes)) == 4


def test_mm_processor_kwargs_match_the_processor_with_the_same_size(builder, build_prompt):
    data = image_bytes("png", 400, 300, seed=2)
    kwargs = {"max_pixels": 28 * 28 * 20}
    prompt, media, _ = build_prompt(user(image_part(data_uri(data))), mm_processor_kwargs=kwargs)
    ref = _reference(builder, prompt, media, size={"shortest_edge": 12544, "longest_edge": 2 * 28 * 28 * 20})
    _assert_same(prompt, ref, builder.processor.image_token_id)
    assert prompt.token_ids.count(builder.processor.image_token_id) <= 20
