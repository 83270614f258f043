"""Video: PyAV decoding of every listed container, frame sampling and its overrides, timestamps, bad files."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from transformers.video_utils import VideoMetadata

from glmv.inputs.errors import InvalidInputError
from glmv.inputs.mediatype import sniff
from glmv.inputs.policy import MediaPolicy
from glmv.inputs.sizing import PixelBounds, VisionGeometry, resized_hw
from glmv.inputs.video import VideoSampling, decode_video, grid_fps
from tests.inputs.media import (
    VIDEO_CASES,
    audio_only_bytes,
    data_uri,
    frame_of,
    text_part,
    user,
    video_bytes,
    video_part,
)

BOUNDS = PixelBounds(12544, 47040000)
WHERE = "messages[0].content[0]"


def _decode(data: bytes, sampling: VideoSampling = VideoSampling(), bounds: PixelBounds = BOUNDS,
            max_frame_pixels: int = 10 ** 8):
    return decode_video(data, sniff(data).format, WHERE, sampling, bounds, VisionGeometry(), max_frame_pixels)


def _which_frames(frames: np.ndarray, candidates: int, width: int = 112, height: int = 84) -> list[int]:
    """Identify decoded (lossy) frames by comparing them with the frames that were encoded."""
    refs = np.stack([frame_of(i, width, height) for i in range(candidates)]).astype(np.float32)
    out = []
    for frame in frames.astype(np.float32):
        out.append(int(np.argmin(np.abs(refs - frame).mean(axis=(1, 2, 3)))))
    return out


@pytest.mark.parametrize("name", sorted(VIDEO_CASES))
def test_every_container_gives_the_right_frames(name):
    container, codec = VIDEO_CASES[name]
    fps = 24 if name == "mpeg" else 6
    video = _decode(video_bytes(container, codec, frames=2 * fps, fps=fps))
    assert video.frames.dtype == np.uint8 and video.frames.shape == (4, 84, 112, 3)
    assert video.metadata.fps == fps and video.metadata.duration == pytest.approx(2.0, abs=0.05)
    assert video.timestamps == pytest.approx([0.0, 0.5, 1.0, 1.5], abs=0.05)
    found = _which_frames(video.frames, 2 * fps)
    if name == "mpeg":  # FFmpeg's MPEG-PS demuxer interpolates some times one frame off (the file says so)
        assert np.abs(np.subtract(found, video.metadata.frames_indices)).max() <= 1
    else:
        assert found == video.metadata.frames_indices


def test_fps_and_num_frames_overrides(build_prompt):
    data = data_uri(video_bytes("mp4", "libx264", frames=12, fps=6))
    _, media, _ = build_prompt(user(video_part(data)), media_io_kwargs={"video": {"fps": 6}})
    assert media.video_metadata[0].frames_indices == list(range(12))
    _, media, _ = build_prompt(user(video_part(data)), media_io_kwargs={"video": {"num_frames": 6}})
    assert media.video_metadata[0].frames_indices == [0, 2, 4, 6, 8, 10]
    assert _which_frames(media.videos[0], 12) == [0, 2, 4, 6, 8, 10]


def test_odd_sample_counts_are_padded_to_pairs():
    video = _decode(video_bytes("matroska", "libx264", frames=9, fps=6))  # 1.5 s at 2 fps: 3 frames
    assert video.metadata.frames_indices == [0, 3, 6, 6]
    assert np.array_equal(video.frames[2], video.frames[3])


def test_long_videos_are_sampled_uniformly_like_the_processor(builder):
    data = video_bytes("mp4", "mpeg4", frames=24, fps=6)  # 4 s
    sampling = VideoSampling(fps=2.0, max_duration_s=2.0)
    video = _decode(data, sampling)
    reference = copy.copy(builder.processor.video_processor)
    reference.max_duration = 2
    meta = VideoMetadata(total_num_frames=24, fps=6.0, duration=4.0, frames_indices=list(range(24)))
    assert video.metadata.frames_indices == list(reference.sample_frames(meta)) == [0, 8, 16, 23]
    assert _which_frames(video.frames, 24) == [0, 8, 16, 23]


def test_frame_count_is_capped():
    video = _decode(video_bytes("mp4", "mpeg4", frames=24, fps=6), VideoSampling(fps=2.0, max_frames=4))
    assert video.metadata.frames_indices == [0, 6, 12, 18]


def test_variable_frame_rate_without_an_average_rate_keeps_true_timestamps():
    """WMV (ASF) with irregular frame times: the stream declares no average rate; times come from the packets."""
    import av

    times = [0.0, 0.1, 0.25, 0.3, 1.0, 1.05, 2.2, 2.3, 2.9, 3.5]
    data = video_bytes("asf", "wmv2", frames=len(times), fps=10, pts_seconds=times)
    with av.open(__import__("io").BytesIO(data)) as container:
        assert container.streams.video[0].average_rate is None
    video = _decode(data)
    assert video.timestamps == pytest.approx([0.0, 1.0, 2.2, 2.9, 3.5, 3.5], abs=1e-6)
    assert _which_frames(video.frames, len(times)) == [0, 4, 6, 8, 9, 9]


def test_grid_without_any_declared_rate_is_milliseconds():
    assert grid_fps([0.0, 0.5, 1.0], [None, None, None]) == 1000.0
    assert grid_fps([0.0, 0.5, 1.0], [None, 2, None]) == 2.0
    assert grid_fps([0.0, 0.25, 0.5], [2, 4, None]) == 4.0


def test_timestamps_reach_the_prompt(builder, build_prompt):
    data = data_uri(video_bytes("webm", "libvpx", frames=24, fps=6))  # 4 s: 8 frames, 4 pairs at 0,1,2,3 s
    prompt, media, _ = build_prompt(user(video_part(data), text_part("When?")))
    text = builder.tokenizer.decode(prompt.token_ids)
    stamps = [int(part.split("<|")[0]) for part in text.split("<|end_of_image|>")[1:]]
    assert stamps == [0, 1, 2, 3]
    assert prompt.mm.video_grid_thw.tolist() == [[4, 6, 8]]


def test_audio_is_ignored():
    video = _decode(video_bytes("mp4", "libx264", frames=12, fps=6, audio=True))
    assert video.frames.shape[0] == 4


def test_audio_only_file_is_a_400(build_prompt):
    with pytest.raises(InvalidInputError) as err:
        build_prompt(user(video_part(data_uri(audio_only_bytes("mp4")))))
    assert err.value.status == 400 and "no video stream" in str(err.value) and "audio" in str(err.value)
    assert err.value.param == WHERE


def test_damaged_video_is_a_400():
    data = video_bytes("mp4", "libx264")
    with pytest.raises(InvalidInputError) as err:
        _decode(data[:64] + bytes(1000))
    assert err.value.status == 400


def test_frames_are_kept_at_the_size_the_processor_wants():
    data = video_bytes("mp4", "mpeg4", frames=12, fps=6, width=640, height=480)
    small = PixelBounds(12544, 4 * 28 * 28 * 16)  # 4 frames of 16 tokens each
    video = _decode(data, bounds=small)
    assert video.frames.shape[1:3] == resized_hw(480, 640, small, VisionGeometry(), num_frames=4) == (84, 112)
    assert video.source_size == (480, 640)


def test_frame_pixel_cap_and_decode_deadline_are_413():
    data = video_bytes("mp4", "mpeg4", frames=12, fps=6)
    with pytest.raises(InvalidInputError) as err:
        _decode(data, max_frame_pixels=1000)
    assert err.value.status == 413
    with pytest.raises(InvalidInputError) as err:
        _decode(data, VideoSampling(decode_timeout_s=0.0))
    assert err.value.status == 413 and "longer than" in str(err.value)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"video": {"fps": 0}}, "fps must be in"),
    ({"video": {"fps": 500}}, "fps must be in"),
    ({"video": {"num_frames": 100000}}, "at most"),
    ({"video": {"frames": 4}}, "unknown key"),
    ({"audio": {}}, "unknown key"),
    ({"video": "fast"}, "must be an object"),
])
def test_bad_media_io_kwargs_are_400(builder, kwargs, words):
    with pytest.raises(InvalidInputError) as err:
        builder.media_options(MediaPolicy(), media_io_kwargs=kwargs)
    assert err.value.status == 400 and words in str(err.value) and err.value.param.startswith("media_io_kwargs")
