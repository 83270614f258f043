"""The reference generator (HF transformers `generate` behind EngineClient) answers text, images and a video."""

from __future__ import annotations

import asyncio

import pytest
import torch
from PIL import Image

from glmv.config import EngineConfig, ModelConfig
from glmv.engine.reference import TransformersEngine, hf_inputs
from glmv.inputs.processor import LoadedMedia, PromptBuilder
from glmv.sampling import FinishReason, SamplingParams
from tests.media_factory import decode_video, make_image, make_video


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    builder = PromptBuilder(tiny_model_dir)
    mc = ModelConfig.from_dir(tiny_model_dir)
    engine = TransformersEngine(mc, EngineConfig(model=str(tiny_model_dir), engine="transformers", device="cpu",
                                                 dtype="float32"), builder.tokenizer)
    return builder, engine


def _media(tmp_path, images=0, video=False) -> tuple[list[dict], LoadedMedia]:
    parts: list[dict] = []
    media = LoadedMedia(images=[], image_hashes=[], videos=[], video_metadata=[], video_hashes=[])
    for i in range(images):
        media.images.append(Image.open(make_image(tmp_path / f"{i}.png", 150 + 28 * i, 100, seed=i)).convert("RGB"))
        media.image_hashes.append(f"img{i}")
        parts.append({"type": "image"})
    if video:
        frames, meta = decode_video(make_video(tmp_path / "v.mp4"))
        media.videos.append(frames)
        media.video_metadata.append(meta)
        media.video_hashes.append("vid")
        parts.append({"type": "video"})
    parts.append({"type": "text", "text": "Describe what you see."})
    return [{"role": "user", "content": parts}], media


async def _run(engine, prompt, params):
    text, ids, finish = "", [], None
    async for out in engine.generate(prompt, params, "r1"):
        c = out.outputs[0]
        text += c.text
        ids += c.token_ids
        finish = c.finish_reason or finish
    return text, ids, finish


@pytest.mark.parametrize(("images", "video"), [(0, False), (1, False), (2, False), (0, True)],
                         ids=["text", "1-image", "2-images", "1-video"])
def test_reference_matches_direct_generate(setup, tmp_path, images, video):
    builder, engine = setup
    messages, media = _media(tmp_path, images, video)
    prompt = builder.build(builder.render(messages), media)
    n_image_tokens = prompt.token_ids.count(builder.processor.image_token_id)
    assert (n_image_tokens > 0) == (images > 0 or video)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    text, ids, finish = asyncio.run(_run(engine, prompt, params))
    assert finish == FinishReason.LENGTH and len(ids) == 12
    with torch.inference_mode():
        direct = engine.model.generate(**hf_inputs(prompt, "cpu", torch.float32), max_new_tokens=12, do_sample=False,
                                       eos_token_id=None, temperature=None, top_p=None, top_k=None)
    assert ids == direct[0, len(prompt):].tolist()
    assert text == builder.tokenizer.decode(ids, skip_special_tokens=True)


def test_stop_string_cuts_the_text(setup, tmp_path):
    builder, engine = setup
    prompt = builder.from_text(builder.render([{"role": "user", "content": "Hello"}]))
    full, _, _ = asyncio.run(_run(engine, prompt, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)))
    stop = full[3:5]
    assert stop.strip()
    cut, _, finish = asyncio.run(_run(engine, prompt, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True,
                                                                     stop=[stop])))
    assert finish == FinishReason.STOP
    assert cut == full[: full.index(stop)]
