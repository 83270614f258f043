"""Fixtures for the engine tests: the tiny model (built once per session, run in float32), its processor, the
transformers reference model, test media, and a factory for engines that share one loaded copy of the weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

from glmv.config import EngineConfig, ModelConfig  # noqa: E402
from glmv.engine.engine import LLMEngine  # noqa: E402
from glmv.engine.model_runner import ModelRunner  # noqa: E402
from glmv.engine.outputs import CompletionOutput  # noqa: E402
from glmv.inputs.processor import LoadedMedia, PromptBuilder  # noqa: E402
from glmv.inputs.prompt import Prompt  # noqa: E402
from glmv.models.glm4v import Glm4vModel  # noqa: E402
from glmv.models.tiny import make_tiny_model  # noqa: E402
from glmv.sampling import SamplingParams  # noqa: E402

from .media import noise_image  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("engine") / "tiny"
    make_tiny_model(path, preset="tiny")
    return path


@pytest.fixture(scope="session")
def model_config(tiny_dir) -> ModelConfig:
    return ModelConfig.from_dir(tiny_dir)


@pytest.fixture(scope="session")
def builder(tiny_dir) -> PromptBuilder:
    return PromptBuilder(tiny_dir)


@pytest.fixture(scope="session")
def tokenizer(builder):
    return builder.tokenizer


@pytest.fixture(scope="session")
def glmv_model(model_config) -> Glm4vModel:
    return Glm4vModel.load(model_config, "cpu", torch.float32, max_positions=2048)


@pytest.fixture(scope="session")
def hf_model(tiny_dir):
    from transformers import Glm4vForConditionalGeneration

    return Glm4vForConditionalGeneration.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def make_engine(tiny_dir, model_config, tokenizer, glmv_model):
    """LLMEngine factory; keyword arguments override EngineConfig (float32 on CPU, max_model_len 512 by default)."""

    def make(**overrides) -> LLMEngine:
        kw = {"model": str(tiny_dir), "device": "cpu", "dtype": "float32", "max_model_len": 512,
              "max_num_seqs": 16, "max_num_batched_tokens": 256} | overrides
        config = EngineConfig(**kw)
        runner = ModelRunner(model_config, config, config.max_model_len, model=glmv_model)
        return LLMEngine(model_config, config, tokenizer, runner=runner)

    return make


@pytest.fixture(scope="session")
def images():
    return [noise_image(1, 140, 90), noise_image(2, 60, 120), noise_image(3, 112, 112)]


@pytest.fixture(scope="session")
def video(tmp_path_factory):
    from .media import read_mp4, write_mp4

    return read_mp4(write_mp4(tmp_path_factory.mktemp("video") / "clip.mp4"))


@pytest.fixture(scope="session")
def prompts(builder, images, video) -> dict[str, Prompt]:
    """The parity prompts: text, one image, two images, one video."""

    def chat(parts, media=None) -> Prompt:
        text = builder.render([{"role": "user", "content": parts}])
        return builder.build(text, media)

    frames, meta = video
    return {
        "text": chat("Hello there. What is 456*123? Let me think step by step."),
        "image": chat([{"type": "image"}, {"type": "text", "text": "What is in this image?"}],
                      LoadedMedia([images[0]], ["img-a"], [], [], [])),
        "two_images": chat([{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"},
                            {"type": "text", "text": "Compare them."}],
                           LoadedMedia([images[0], images[1]], ["img-a", "img-b"], [], [], [])),
        "video": chat([{"type": "video"}, {"type": "text", "text": "Describe the video."}],
                      LoadedMedia([], [], [frames], [meta], ["vid-a"])),
    }


def greedy(max_tokens: int = 24, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kw)


def run_to_completion(engine: LLMEngine, arrivals: dict[int, list[tuple[str, Prompt, SamplingParams]]] | None = None,
                      max_steps: int = 10_000) -> dict[str, dict[int, CompletionOutput]]:
    """Step the engine until idle; `arrivals` maps a step number to requests added just before that step.
    Returns accumulated (non-delta) completions per request id and index."""
    arrivals = dict(arrivals or {})
    done: dict[str, dict[int, CompletionOutput]] = {}
    step = 0
    while engine.has_unfinished_requests() or any(k >= step for k in arrivals):
        for rid, prompt, params in arrivals.pop(step, []):
            engine.add_request(rid, prompt, params)
        for out in engine.step():
            for c in out.outputs:
                done.setdefault(out.request_id, {}).setdefault(c.index, CompletionOutput.empty(c.index)).absorb(c)
        step += 1
        if step > max_steps:
            raise AssertionError("the engine did not finish")
    return done


def tokens_of(done, rid: str, index: int = 0) -> list[int]:
    return done[rid][index].token_ids
