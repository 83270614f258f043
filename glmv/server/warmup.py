"""warm_up: the shapes a first request would otherwise compile or record, run before the server says it is ready.

Why: on an H200 the first requests after start waited 1.6 s (10x a steady TTFT), the first picture 2 s: Triton
kernels compiled for new prompt lengths, cuBLAS chose its algorithms, the vision tower recorded its CUDA graph for a
1008x1008 grid, and the image processor and tokenizer warmed their own caches. Uvicorn answers nothing (so `/health`
neither) until the app's start-up has finished, and this runs inside it: text prompts of a short, a typical and a
full prefill chunk, several at once (packed prefill, then a few decode steps at more than one row), and one picture
built through the same prompt builder as a chat request. Synthetic ids leave no prefix cache entries a client could
hit by accident, and their media hashes are marked as warm-up. The HTTP side has two lazy pieces of its own, both
done here too (bench/notes/ttft.md): FastAPI prepares each route's request handling (its pydantic adapters) the
first time a request tries the route, and anyio imports its asyncio backend at its first task group, which
Starlette opens for every streamed answer.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from glmv.inputs.loaded import LoadedMedia
from glmv.sampling import SamplingParams
from glmv.server.state import ServingState

log = logging.getLogger("glmv.server")
WARMUP_IMAGE_SIDE = 1008  # the size whose tower graph the benchmarks' first picture needs; others record on use


def _text_ids(state: ServingState, n: int, seed: int) -> list[int]:
    import torch

    vocab = len(state.builder.tokenizer)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, max(101, min(vocab, 150_000) - 1), (n,), generator=g).tolist()


async def warm_up(state: ServingState) -> float:
    """Run the engine's warm-up requests; returns their wall seconds."""
    from glmv.inputs.prompt import Prompt

    engine, t0 = state.engine, time.perf_counter()
    chunk = min(state.engine_config.max_num_batched_tokens, state.max_model_len - 8)
    lengths = sorted({n for n in (16, 510, chunk) if 0 < n <= chunk})
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)

    async def run(prompt: Prompt, tag: str) -> None:
        async for _ in engine.generate(prompt, params, f"warmup-{tag}-{time.time_ns()}"):
            pass

    for i, n in enumerate(lengths):
        await run(Prompt(token_ids=_text_ids(state, n, i)), f"text{n}")
    batch_len = min(64, chunk)  # a short context (48 tokens) still warms the packed prefill
    if batch_len > 0:
        await asyncio.gather(*(run(Prompt(token_ids=_text_ids(state, batch_len, 100 + i)), f"batch{i}")
                               for i in range(8)))
    if state.max_model_len > 1400:  # room for a 1008x1008 picture's 1,296 tokens
        await run(await asyncio.to_thread(_image_prompt, state), "image")
    return time.perf_counter() - t0


async def warm_http(app: Starlette) -> None:
    """The HTTP side's lazy pieces, whatever the engine behind it."""
    await prepare_routes(app)
    await load_stream_backend()


async def prepare_routes(app: Starlette) -> None:
    """Send one request that no route takes through the app's router (every route is tried, so FastAPI prepares
    each), skipping the middlewares, so that no metric or log line counts it."""
    path = "/.glmv-warm-up"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "headers": [], "root_path": "",
             "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0), "app": app}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_message: dict) -> None:
        pass

    try:
        await app.router(scope, receive, send)
    except HTTPException as exc:  # the router's 404, left to the middlewares it skipped
        if exc.status_code != 404:
            raise


async def load_stream_backend() -> None:
    """Open (and close) one anyio task group on this loop, as a streaming response does, so that anyio's asyncio
    backend is imported now rather than inside the first client's streamed answer."""
    import anyio

    async with anyio.create_task_group():
        pass


def _image_prompt(state: ServingState):
    import numpy as np
    from PIL import Image

    builder = state.builder
    rng = np.random.default_rng(0)
    side = WARMUP_IMAGE_SIDE
    img = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
    media = LoadedMedia(images=[img], image_hashes=[f"warmup-{time.time_ns()}"], videos=[], video_metadata=[],
                        video_hashes=[])
    text = builder.render([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "warm-up"}]}])
    return state.engine.stage_prompt(builder.build(text, media))
