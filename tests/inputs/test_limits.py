"""Per-prompt limits, mixing rules and message shapes: every refusal a 400/413/415 naming the part and the limit."""

from __future__ import annotations

import pytest

from glmv.inputs.errors import InvalidInputError
from glmv.inputs.loaded import LoadedMedia
from glmv.inputs.policy import MediaPolicy
from tests.inputs.media import (
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

IMG = data_uri(image_bytes("png", 56, 56))
VID = data_uri(video_bytes("mp4", "mpeg4", frames=6, fps=6))
PDF = data_uri(pdf_bytes(1, size=(100, 100)))


def _refused(build_prompt, messages, status=400, **kw) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as err:
        build_prompt(messages, **kw)
    assert err.value.status == status, err.value
    return err.value


@pytest.mark.parametrize(("parts", "policy", "where", "words"), [
    ([image_part(IMG)] * 3, MediaPolicy(max_images=2), "messages[0].content[2]", "at most 2 images"),
    ([video_part(VID)] * 2, MediaPolicy(), "messages[0].content[1]", "at most 1 videos"),
    ([file_part(PDF)] * 2, MediaPolicy(), "messages[0].content[1]", "at most 1 documents"),
    ([image_part(IMG)], MediaPolicy(max_images=0), "messages[0].content[0]", "at most 0 images"),
])
def test_counts_per_prompt(build_prompt, parts, policy, where, words):
    err = _refused(build_prompt, user(*parts), policy=policy)
    assert err.param == where and words in str(err) and "--limit-mm-per-prompt" in str(err)


def test_counts_span_the_whole_conversation(build_prompt):
    messages = user(image_part(IMG)) + [{"role": "assistant", "content": "ok"}] + user(image_part(IMG))
    err = _refused(build_prompt, messages, policy=MediaPolicy(max_images=1))
    assert err.param == "messages[2].content[0]"


@pytest.mark.parametrize("other", [image_part(IMG), file_part(PDF)])
def test_a_video_does_not_mix_with_images_or_documents(build_prompt, other):
    err = _refused(build_prompt, user(other, text_part("and"), video_part(VID)))
    assert "messages[0].content[2] (a video)" in str(err) and "messages[0].content[0]" in str(err)
    assert err.code == "unsupported_media_mix"


def test_two_videos_when_the_operator_allows_them(build_prompt):
    prompt, media, _ = build_prompt(user(video_part(VID), video_part(VID)), policy=MediaPolicy(max_videos=2))
    assert len(media.videos) == 2 and prompt.mm.video_grid_thw.shape[0] == 2


@pytest.mark.parametrize("text", ["<|image|>", "look <|begin_of_video|> here", "<|end_of_image|>"])
def test_reserved_markers_in_text_are_refused(build_prompt, text):
    err = _refused(build_prompt, [{"role": "user", "content": text}])
    assert err.param == "messages[0].content" and "reserved marker" in str(err)
    err = _refused(build_prompt, user(image_part(IMG), text_part(text)))
    assert err.param == "messages[0].content[1]"


@pytest.mark.parametrize(("part", "status", "words"), [
    ({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}, 415, "audio"),
    ({"type": "audio_url", "audio_url": {"url": "x"}}, 415, "audio"),
    ({"type": "hologram"}, 400, "unsupported content part type"),
    ({"type": "image_url", "image_url": {}}, 400, "image_url.url is missing"),
    ({"type": "image_url"}, 400, "image_url.url is missing"),
    ({"type": "video_url", "video_url": {"url": ""}}, 400, "video_url.url is missing"),
    ({"type": "file", "file": {"file_id": "file-abc"}}, 400, "file_id"),
    ({"type": "file", "file": {"filename": "a.pdf"}}, 400, "file_data is missing"),
    ({"type": "text", "text": 5}, 400, "must be a string"),
    ("just a string", 400, "must be an object"),
])
def test_bad_part_shapes(build_prompt, part, status, words):
    err = _refused(build_prompt, [{"role": "user", "content": [part]}], status=status)
    assert words in str(err) and err.param.startswith("messages[0].content[0]")


def test_other_image_part_shapes_are_accepted(build_prompt):
    for part in ({"type": "image_url", "image_url": IMG}, {"type": "image", "image": IMG},
                 {"type": "input_image", "image_url": IMG}):
        _, media, _ = build_prompt(user(part))
        assert len(media.images) == 1


def test_decoded_pixels_per_prompt_are_capped(build_prompt):
    big = data_uri(image_bytes("png", 400, 400))
    err = _refused(build_prompt, user(image_part(big), image_part(big)), status=413,
                   policy=MediaPolicy(max_prompt_decoded_bytes=600_000))
    assert "decode to more than" in str(err)


def test_media_beyond_the_context_are_refused_before_processing(build_prompt):
    big = data_uri(image_bytes("png", 560, 560))  # 400 tokens
    err = _refused(build_prompt, user(image_part(big)), max_model_len=300)
    assert err.code == "context_length_exceeded" and "300" in str(err)


def test_placeholder_count_must_match_the_media(builder):
    media = LoadedMedia(images=[], image_hashes=[], videos=[], video_metadata=[], video_hashes=[])
    from PIL import Image

    media.images.append(Image.new("RGB", (56, 56)))
    media.image_hashes.append("x")
    text = builder.render(user({"type": "image"}, {"type": "image"}))
    with pytest.raises(InvalidInputError) as err:
        builder.build(text, media)
    assert "2 image" in str(err.value) and "1 images" in str(err.value)
