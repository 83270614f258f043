"""glmv.LLM as a new user meets it: the same split, parameters, limits and prompt rules as the server."""

from __future__ import annotations

from pathlib import Path

import pytest

import glmv
from glmv.inputs.errors import InvalidInputError
from glmv.llm import LLM
from glmv.sampling import SamplingParams
from tests.cli.scripted_model import make_scripted_model
from tests.media_factory import make_image


@pytest.fixture(scope="module")
def scripted(tiny_model_dir, tmp_path_factory):
    return make_scripted_model(tiny_model_dir, tmp_path_factory.mktemp("llm-scripted") / "model")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("llm-media")
    make_image(folder / "photo.png")
    return folder


@pytest.fixture(scope="module")
def llm(scripted, media):
    return LLM(scripted.path, allowed_local_media_path=media, device="cpu", dtype="float32", max_model_len=512)


def ask(text: str, image: str | None = None) -> list[dict]:
    content = [{"type": "text", "text": text}]
    if image is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": image}})
    return [{"role": "user", "content": content}]


def test_chat_returns_reasoning_and_answer_apart(llm, scripted):
    (out,) = llm.chat(ask("hi"), {"max_tokens": 64})
    choice = out.outputs[0]
    assert (choice.reasoning, choice.answer) == (scripted.reasoning, scripted.answer)
    assert "<think>" in choice.text  # the whole text is still there


def test_sampling_params_from_the_package_and_as_a_dict(llm):
    assert glmv.SamplingParams is SamplingParams
    (a,) = llm.chat(ask("hi"), glmv.SamplingParams(max_tokens=5, temperature=0))
    (b,) = llm.chat(ask("hi"), {"max_tokens": 5, "temperature": 0})
    assert a.outputs[0].token_ids == b.outputs[0].token_ids and len(a.outputs[0].token_ids) == 5
    with pytest.raises(ValueError, match="Unknown sampling parameter 'temprature'"):
        llm.chat(ask("hi"), {"temprature": 0.5})


def test_the_servers_limits(llm):
    with pytest.raises(ValueError, match="temperature must be between 0 and 2"):
        llm.chat(ask("hi"), {"temperature": 3})
    with pytest.raises(ValueError, match="maximum context length is 512"):
        llm.chat(ask("hi"), {"max_tokens": 600})


def test_a_plain_path_is_read_under_the_allowed_folder(llm, media, tmp_path):
    (out,) = llm.chat(ask("what?", str(media / "photo.png")), {"max_tokens": 64})
    image_id = llm.tokenizer.convert_tokens_to_ids("<|image|>")
    assert out.prompt_token_ids.count(image_id) > 4
    make_image(tmp_path / "elsewhere.png")
    with pytest.raises(InvalidInputError, match="outside"):
        llm.chat(ask("what?", str(tmp_path / "elsewhere.png")))


def test_local_files_default_to_the_current_folder_only(scripted):
    llm = LLM(scripted.path, device="cpu", dtype="float32", max_model_len=256)
    assert llm.media_policy.allowed_local_media_path == Path.cwd().resolve()
    with pytest.raises(InvalidInputError, match="outside"):
        llm.chat(ask("what?", "/etc/hostname"))


def test_history_sends_answers_only(llm):
    history = [*ask("first"), {"role": "assistant", "content": "<think>SECRETTHOUGHT</think><answer>ok</answer>",
                               "reasoning_content": "SECRETTHOUGHT"}, *ask("second")]
    (out,) = llm.chat(history, {"max_tokens": 64})
    prompt = llm.tokenizer.decode(out.prompt_token_ids)
    assert "SECRET" not in prompt and "ok" in prompt
