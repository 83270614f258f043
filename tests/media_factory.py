"""Real media made by real encoders for tests: Pillow images and PDFs, PyAV videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_image(path: Path, width: int = 150, height: int = 100, seed: int = 0, fmt: str | None = None) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def make_video(path: Path, frames: int = 8, fps: int = 4, width: int = 112, height: int = 84, seed: int = 0,
               codec: str = "mpeg4") -> Path:
    import av

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode_video(path: Path):
    """All frames as a (T, H, W, 3) uint8 array plus transformers VideoMetadata."""
    import av
    from transformers.video_utils import VideoMetadata

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    meta = VideoMetadata(total_num_frames=len(frames), fps=fps, duration=len(frames) / fps,
                         frames_indices=list(range(len(frames))), width=frames.shape[2], height=frames.shape[1])
    return frames, meta


def make_pdf(path: Path, pages: int = 5, size: tuple[int, int] = (120, 160)) -> Path:
    """A multi-page PDF written by Pillow's PDF encoder (size in points), one grey level per page."""
    from PIL import Image

    images = [Image.new("RGB", size, (40 + 50 * i % 200,) * 3) for i in range(pages)]
    images[0].save(path, format="PDF", save_all=True, append_images=images[1:], resolution=72.0)
    return path
