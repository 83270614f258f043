"""prompt_logprobs (vLLM's extra) is not computed yet: a request with it is a clear 400, never silently ignored."""

from __future__ import annotations

import openai
import pytest

from tests.server.conftest import serve_args, start_server


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    s = start_server(serve_args(tiny_model_dir, "glmv", "--served-model-name", "tiny", "--max-model-len", "256"))
    yield s
    s.stop()


def test_prompt_logprobs_is_refused_clearly(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt="hello", max_tokens=2, extra_body={"prompt_logprobs": 2})
    assert err.value.body["param"] == "prompt_logprobs"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       extra_body={"prompt_logprobs": 0})
    assert client.completions.create(model="tiny", prompt="hello", max_tokens=2).choices[0].finish_reason
