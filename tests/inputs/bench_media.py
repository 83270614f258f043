"""Micro-benchmark of the media layer (not a test): load + build times, first request and resent, on the tiny model.

    OMP_NUM_THREADS=1 .venv/bin/python -m tests.inputs.bench_media [MODEL_DIR]
"""

from __future__ import annotations

import asyncio
import io
import sys
import time

import numpy as np
import torch
from PIL import Image

from glmv.inputs.messages import MediaPolicy, load_messages_async
from glmv.inputs.processor import PromptBuilder
from tests.inputs.media import data_uri, pdf_bytes, video_bytes


def main(model_dir: str) -> None:
    torch.set_num_threads(1)
    builder = PromptBuilder(model_dir)
    policy = MediaPolicy()

    def run(label: str, part: dict) -> None:
        messages = [{"role": "user", "content": [part, {"type": "text", "text": "Describe it."}]}]
        for attempt in ("first", "resent"):
            options = builder.media_options(policy, max_model_len=65536, max_tokens=4096)
            start = time.perf_counter()
            normalized, media = asyncio.run(load_messages_async(messages, policy, options, builder.media_cache))
            loaded = time.perf_counter()
            prompt = builder.build(builder.render(normalized), media)
            built = time.perf_counter()
            print(f"{label:34s} {attempt:6s} load {1000 * (loaded - start):7.1f} ms  build "
                  f"{1000 * (built - loaded):7.1f} ms  {len(prompt):6d} tokens  {prompt.info or ''}")

    rng = np.random.default_rng(0)
    picture = Image.fromarray((rng.random((270, 480, 3)) * 255).astype(np.uint8)).resize((1920, 1080))
    buf = io.BytesIO()
    picture.save(buf, "JPEG", quality=90)
    run("1920x1080 JPEG", {"type": "image_url", "image_url": {"url": data_uri(buf.getvalue())}})
    clip = video_bytes("mp4", "libx264", frames=900, fps=30, width=640, height=360)
    run("30 s 640x360 H.264 MP4 (30 fps)", {"type": "video_url", "video_url": {"url": data_uri(clip)}})
    for pages in (10, 40):
        run(f"{pages}-page A4 PDF", {"type": "file", "file": {"file_data": data_uri(pdf_bytes(pages))}})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".cache/tiny-model")
