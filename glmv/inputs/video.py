"""Decodes a video with PyAV into sampled RGB frames plus the VideoMetadata that gives the processor its timestamps.

Sampling follows GLM-4.1V's own rule (its video processor's `sample_frames`): `fps` frames a second (default 2)
over the first `max_duration` seconds, uniformly over the whole video when it is longer, an even frame count
(frames go to the model in pairs). We sample by presentation time, not by frame number, so variable frame rates and
files without a frame-rate field get right timestamps too. Frames are decoded in one pass and only the chosen ones
are kept, already shrunk to the size the processor would resize them to: a 5-minute 1080p clip never sits in
memory at full size. Audio streams are never decoded.

transformers' own video loading needs torchcodec (absent here), so callers hand these frames and metadata to the
processor with `do_sample_frames=False`.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass

import av
import numpy as np
from transformers.video_utils import VideoMetadata

from glmv.inputs.errors import InvalidInputError
from glmv.inputs.sizing import PixelBounds, VisionGeometry, resized_hw

# Which FFmpeg demuxer reads each sniffed container; nothing else is ever probed.
_DEMUXERS = {
    "mp4": "mov", "mov": "mov", "m4v": "mov", "avi": "avi", "matroska": "matroska", "webm": "matroska",
    "asf": "asf", "flv": "flv", "mpeg-ps": "mpeg", "mpeg-ts": "mpegts", "mpeg-es": "mpegvideo",
}
_EPS = 1e-4  # seconds: presentation times this close count as equal (float rounding of rational time bases)


@dataclass(frozen=True)
class VideoSampling:
    """How frames are picked: `fps` over at most `max_duration_s`, or exactly `num_frames` spread evenly."""

    fps: float = 2.0
    num_frames: int | None = None
    max_duration_s: float = 300.0
    max_frames: int = 600
    decode_timeout_s: float = 120.0


@dataclass
class DecodedVideo:
    frames: np.ndarray  # (T, H, W, 3) uint8, T even
    metadata: VideoMetadata  # fps, frames_indices (on the fps grid), total_num_frames, duration
    source_size: tuple[int, int]  # (height, width) as stored

    @property
    def timestamps(self) -> list[float]:
        return list(self.metadata.timestamps)


def decode_video(data: bytes, fmt: str, where: str, sampling: VideoSampling, bounds: PixelBounds,
                 geometry: VisionGeometry, max_frame_pixels: int) -> DecodedVideo:
    """Sampled frames of the first video stream of `data` (container `fmt`), or InvalidInputError (400/413/415)."""
    demuxer = _DEMUXERS.get(fmt)
    if demuxer is None:
        raise InvalidInputError(f"{where}: '{fmt}' is not a video format glmv reads.", status=415, param=where,
                                code="unsupported_media_type")
    try:
        with av.open(io.BytesIO(data), format=demuxer, mode="r") as container:
            stream = _video_stream(container, where)
            width, height = stream.codec_context.width, stream.codec_context.height
            if width and height and width * height > max_frame_pixels:
                raise InvalidInputError(
                    f"{where}: the video's frames are {width}x{height}, over this server's limit of "
                    f"{max_frame_pixels:,} pixels a frame.", status=413, param=where, code="video_too_large")
            rates = [stream.average_rate, stream.base_rate, stream.guessed_rate]
            declared = _declared_duration(container, stream)
            stamps = _packet_times(container, stream)
        fps = grid_fps(stamps, rates)
        duration = _duration(stamps, fps, declared, where)
        targets = sample_times(duration, sampling)
        with av.open(io.BytesIO(data), format=demuxer, mode="r") as container:
            stream = _video_stream(container, where)
            picked, times, size = _decode_targets(container, stream, targets, fps, sampling, bounds, geometry,
                                                  max_frame_pixels, where)
    except InvalidInputError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, MemoryError, ZeroDivisionError) as exc:
        raise InvalidInputError(f"{where}: the video could not be decoded ({type(exc).__name__}: {exc}).",
                                param=where, code="invalid_video") from None
    return _assemble(picked, times, fps, duration, size, where)


def sample_times(duration: float, sampling: VideoSampling) -> list[float]:
    """Presentation times (seconds from the first frame) to take frames at, before de-duplication."""
    duration = max(duration, 0.0)
    if sampling.num_frames is not None:
        n = min(sampling.num_frames, sampling.max_frames)
        return [i * duration / n for i in range(n)]
    if duration <= sampling.max_duration_s:
        n = max(int(math.floor(duration * sampling.fps)), 1)
        times = [i / sampling.fps for i in range(n)]
    else:
        n = int(sampling.max_duration_s * sampling.fps)
        times = list(np.linspace(0.0, duration, n, endpoint=True)) if n > 1 else [0.0]
    if len(times) > sampling.max_frames:
        n = sampling.max_frames
        times = [i * duration / n for i in range(n)]
    return times


def _video_stream(container, where: str):
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
        raise InvalidInputError(f"{where}: the file has no video stream ({kinds}); send a video with picture.",
                                param=where, code="invalid_video")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def grid_fps(stamps: list[float], rates: list) -> float:
    """The frame rate whose grid every frame time lands on: the stream's declared rates in turn, else milliseconds.

    VideoMetadata states timestamps as frame_index / fps, so for variable frame rates (phones) a rate that puts
    frames between grid points would shift them; a 1 ms grid then keeps them exact.
    """
    times = np.asarray(stamps, dtype=np.float64) - (stamps[0] if stamps else 0.0)
    for rate in rates:
        if rate is None or not 0 < float(rate) <= 1000:
            continue
        position = times * float(rate)
        if np.all(np.abs(position - np.round(position)) < 0.05):
            return float(rate)
    return 1000.0


def _packet_times(container, stream) -> list[float]:
    """Presentation times of the video stream's packets, sorted (demuxing only: nothing is decoded)."""
    times = []
    for packet in container.demux(stream):
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is not None and packet.time_base is not None and packet.size:
            times.append(float(stamp * packet.time_base))
    return sorted(times)


def _declared_duration(container, stream) -> float | None:
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
        if seconds > 0:
            return seconds
    if container.duration and container.duration > 0:
        return container.duration / av.time_base
    return None


def _duration(stamps: list[float], fps: float, declared: float | None, where: str) -> float:
    """First frame to the end of the last one, from the packets' own times (headers can be estimates, e.g. MPEG-PS)."""
    if len(stamps) >= 2:
        step = float(np.median(np.diff(stamps)))
        return stamps[-1] - stamps[0] + (step if step > 0 else 1.0 / fps)
    if len(stamps) == 1:
        return 1.0 / fps
    if declared:
        return declared
    raise InvalidInputError(f"{where}: the video stream holds no frames.", param=where, code="invalid_video")


def _decode_targets(container, stream, targets: list[float], fps: float, sampling: VideoSampling,
                    bounds: PixelBounds, geometry: VisionGeometry, max_frame_pixels: int, where: str):
    """One decoding pass; for each target time the first frame at or after it (the last frame for late targets)."""
    deadline = time.monotonic() + sampling.decode_timeout_s
    picked: list[np.ndarray] = []
    times: list[float] = []
    out_size: tuple[int, int] | None = None
    source: tuple[int, int] | None = None
    start: float | None = None
    last = None
    next_target = 0
    for count, frame in enumerate(container.decode(stream)):
        if time.monotonic() > deadline:
            raise InvalidInputError(
                f"{where}: decoding the video took longer than {sampling.decode_timeout_s:g} s; send a shorter or "
                "smaller video.", status=413, param=where, code="video_too_large")
        if frame.width * frame.height > max_frame_pixels:
            raise InvalidInputError(f"{where}: a frame is {frame.width}x{frame.height}, over this server's limit of "
                                    f"{max_frame_pixels:,} pixels.", status=413, param=where, code="video_too_large")
        stamp = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else None
        if stamp is None:
            stamp = count / fps
        if start is None:
            start = stamp
        t = stamp - start
        if out_size is None:
            source = (frame.height, frame.width)
            out_size = _decode_size(frame, len(targets), bounds, geometry)
        last = (frame, t)
        while next_target < len(targets) and targets[next_target] <= t + _EPS:
            picked.append(_to_rgb(frame, out_size))
            times.append(t)
            next_target += 1
        if next_target >= len(targets):
            break
    if last is None:
        raise InvalidInputError(f"{where}: the video stream holds no decodable frames.", param=where,
                                code="invalid_video")
    if next_target < len(targets):  # targets past the end take the last frame, as the processor's sampler does
        rgb = _to_rgb(last[0], out_size)
        for _ in range(len(targets) - next_target):
            picked.append(rgb)
            times.append(last[1])
    return picked, times, source


def _decode_size(frame, num_frames: int, bounds: PixelBounds, geometry: VisionGeometry) -> tuple[int, int]:
    """(height, width) to keep frames at: the processor's target when smaller than the source, else the source."""
    height, width = frame.height, frame.width
    frames = max(num_frames + num_frames % 2, geometry.temporal_patch_size)
    try:
        h, w = resized_hw(height, width, bounds, geometry, num_frames=frames)
    except ValueError:
        return height, width  # extreme aspect ratio: let the processor report it
    if h * w < height * width:
        return h, w
    return height, width


def _to_rgb(frame, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    rotation = int(round((getattr(frame, "rotation", 0) or 0) / 90)) % 4
    if (height, width) == (frame.height, frame.width):
        rgb = frame.to_ndarray(format="rgb24")
    else:
        rgb = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
    if rotation:  # the display matrix turns the picture counterclockwise; show it as the camera meant
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation))
    return rgb


def _assemble(picked: list[np.ndarray], times: list[float], fps: float, duration: float,
              size: tuple[int, int] | None, where: str) -> DecodedVideo:
    """De-duplicate frames by their index on the fps grid, pad to an even count, and write the metadata."""
    frames: list[np.ndarray] = []
    indices: list[int] = []
    for rgb, t in zip(picked, times, strict=True):
        index = int(round(t * fps))
        if indices and index <= indices[-1]:
            continue
        frames.append(rgb)
        indices.append(index)
    if not frames:
        raise InvalidInputError(f"{where}: the video stream holds no decodable frames.", param=where,
                                code="invalid_video")
    if len(frames) % 2:
        frames.append(frames[-1])
        indices.append(indices[-1])
    stacked = np.stack(frames)
    total = max(int(round(duration * fps)), indices[-1] + 1)
    metadata = VideoMetadata(total_num_frames=total, fps=fps, width=stacked.shape[2], height=stacked.shape[1],
                             duration=duration, video_backend="pyav", frames_indices=indices)
    return DecodedVideo(frames=stacked, metadata=metadata, source_size=size or stacked.shape[1:3])
