"""The offline API: LLM(model).generate(...) and .chat(...) on the tiny model."""

from __future__ import annotations

import base64
import io

import pytest

from glmv.llm import LLM
from glmv.sampling import FinishReason, SamplingParams

from .conftest import greedy, run_to_completion


@pytest.fixture(scope="module")
def llm(tiny_dir):
    return LLM(str(tiny_dir), device="cpu", dtype="float32", max_model_len=256, max_num_seqs=4)


def test_generate_batch_in_order(llm, make_engine, builder):
    texts = ["[gMASK]<sop><|user|>\nHello<|assistant|>\n", "[gMASK]<sop><|user|>\nCount: 1 2 3<|assistant|>\n"]
    outs = llm.generate(texts, greedy(10))
    assert [len(o.outputs) for o in outs] == [1, 1]
    engine = make_engine()
    for i, t in enumerate(texts):
        engine.add_request(str(i), builder.from_text(t), greedy(10))
    expected = run_to_completion(engine)
    for i, out in enumerate(outs):
        assert out.outputs[0].token_ids == expected[str(i)][0].token_ids
        assert out.outputs[0].text == expected[str(i)][0].text
        assert out.outputs[0].finish_reason is FinishReason.LENGTH
    tokens = llm.generate(outs[0].prompt_token_ids, greedy(10))
    assert tokens[0].outputs[0].token_ids == outs[0].outputs[0].token_ids


def test_chat_with_an_image_and_n(llm, images, builder, make_engine):
    buf = io.BytesIO()
    images[0].save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "What is in this image?"}]}]
    out = llm.chat(messages, greedy(12))[0]
    assert out.outputs[0].num_tokens == 12 and out.outputs[0].text
    assert out.prompt_token_ids.count(builder.processor.tokenizer.convert_tokens_to_ids("<|image|>")) > 4
    two = llm.chat([messages, messages], SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=3))
    assert [sorted(c.index for c in o.outputs) for o in two] == [[0, 1], [0, 1]]
    assert two[1].num_cached_tokens > 0  # the second conversation reused the first one's prompt blocks
    assert llm.engine.pool.all_free()


def test_prompt_logprobs_of_an_image_prompt_match_a_whole_forward(tiny_dir, prompts, glmv_model):
    """Chunked, forked prompt scoring on the CPU equals one whole-prompt forward (tests/engine/test_model_parity.py
    checks that forward against transformers)."""
    from .test_model_parity import check_chunked_prompt_logprobs

    check_chunked_prompt_logprobs(tiny_dir, "cpu", glmv_model, prompts["image"], tolerance=1e-4)
