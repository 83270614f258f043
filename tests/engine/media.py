"""Deterministic test media for the engine tests: random-noise images and a small mp4 written and read with PyAV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def noise_image(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def write_mp4(path: Path, frames: int = 4, fps: int = 2, size: tuple[int, int] = (112, 84)) -> Path:
    """A short mp4 (mpeg4 codec, which every PyAV wheel carries) of moving colour gradients."""
    import av

    width, height = size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(frames):
            rgb = np.stack([(xx * 2 + i * 40) % 256, (yy * 3 + i * 25) % 256, ((xx + yy) + i * 60) % 256], axis=-1)
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_mp4(path: Path) -> tuple[np.ndarray, object]:
    """All frames (T, H, W, 3) uint8 plus the metadata the processor needs for timestamps."""
    import av
    from transformers.video_utils import VideoMetadata

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 2)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    data = np.stack(frames)
    meta = VideoMetadata(total_num_frames=len(frames), fps=fps, width=data.shape[2], height=data.shape[1],
                         duration=len(frames) / fps, frames_indices=list(range(len(frames))))
    return data, meta
