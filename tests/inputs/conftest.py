"""Fixtures for the media-input tests: one PromptBuilder on the tiny model, and a helper that runs the whole road."""

from __future__ import annotations

import asyncio

import pytest

from glmv.inputs.messages import load_messages_async
from glmv.inputs.policy import MediaPolicy
from glmv.inputs.processor import PromptBuilder
from glmv.inputs.prompt import Prompt


@pytest.fixture(scope="session")
def builder(tiny_model_dir) -> PromptBuilder:
    return PromptBuilder(tiny_model_dir)


@pytest.fixture
def build_prompt(builder):
    """messages -> (Prompt, LoadedMedia, template messages), the way the server's build_chat_prompt does it."""

    def run(messages, policy: MediaPolicy | None = None, mm_processor_kwargs=None, media_io_kwargs=None,
            max_model_len: int | None = 4096, max_tokens: int | None = None) -> tuple[Prompt, object, list]:
        policy = policy or MediaPolicy()
        options = builder.media_options(policy, mm_processor_kwargs, media_io_kwargs, max_model_len, max_tokens)
        normalized, media = asyncio.run(load_messages_async(messages, policy, options, builder.media_cache))
        prompt = builder.build(builder.render(normalized), media, mm_processor_kwargs)
        return prompt, media, normalized

    return run
