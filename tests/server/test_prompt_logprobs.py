"""prompt_logprobs (vLLM's extra) through the real openai SDK and a live glmv server on the tiny model.

What comes back must be log_softmax of transformers' own forward pass over the same prompt tokens (float32 on the
CPU: within 1e-4), in vLLM's shape: None first, then per prompt token a dict keyed by token id (a string in JSON)
holding the prompt token and the top-k, each {logprob, rank, decoded_token}. The server prefills in small chunks
(--max-num-batched-tokens 32) so a long prompt is scored chunk by chunk; a second identical request (its prefix in
the cache) is scored the same.
"""

from __future__ import annotations

import httpx
import openai
import pytest
import torch

from tests.server.conftest import module_server

TOL = 1e-4  # float32 on the CPU: glmv's kernels against transformers' (tests/engine/test_model_parity.py: 1e-4)
PROMPT = list(range(100, 180))  # 80 tokens: three chunks of 32
USER = [{"role": "user", "content": "Describe a lighthouse at night in one long sentence, please."}]

server = module_server("glmv", "--served-model-name", "tiny", "--max-model-len", "256",
                       "--max-num-batched-tokens", "32")
reference_server = module_server("transformers", "--served-model-name", "tiny", "--max-model-len", "128")


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """log_softmax over every position of a prompt, from transformers' Glm4vForConditionalGeneration."""
    from transformers import Glm4vForConditionalGeneration

    model = Glm4vForConditionalGeneration.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()

    def run(ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)

    return run


def check(scores: list, ids: list[int], ref: torch.Tensor, k: int, tokenizer) -> None:
    """`scores` is vLLM's prompt_logprobs for prompt `ids`; `ref` the reference log_softmax [len(ids), vocab]."""
    assert len(scores) == len(ids) and scores[0] is None
    for j in range(1, len(ids)):
        entry, row = scores[j], ref[j - 1]
        own = entry[str(ids[j])]
        assert abs(own["logprob"] - row[ids[j]].item()) < TOL, (j, own, row[ids[j]].item())
        assert own["rank"] == int((row >= row[ids[j]]).sum()), (j, own)
        assert own["decoded_token"] == tokenizer.decode([ids[j]])
        top = row.topk(k)
        for r, (value, tid) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True), start=1):
            alt = entry[str(tid)]
            assert abs(alt["logprob"] - value) < TOL
            if tid != ids[j]:
                assert alt["rank"] == r
        assert set(entry) <= {str(ids[j])} | {str(t) for t in top.indices.tolist()}


def chat_prompt_ids(server) -> list[int]:
    r = httpx.post(server.base_url + "/tokenize", json={"model": "tiny", "messages": USER}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def test_completions_scores_the_prompt_chunk_by_chunk_and_from_the_cache(server, reference):
    client = server.client()
    ref = reference(PROMPT)
    tok = server.state.tokenizer
    first = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=2, n=2, temperature=0.8, seed=1,
                                      extra_body={"prompt_logprobs": 3})
    for choice in first.choices:
        check(choice.prompt_logprobs, PROMPT, ref, 3, tok)
    second = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=2, extra_body={"prompt_logprobs": 3})
    check(second.choices[0].prompt_logprobs, PROMPT, ref, 3, tok)
    # a request that does not ask reads its prefix from the cache the scored ones left, and carries no scores
    plain = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
    assert plain.usage.prompt_tokens_details.cached_tokens > 0
    assert plain.choices[0].prompt_logprobs is None
    # ... and one that asks after it is scored in full again (the cache has KV, not hidden states)
    again = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=2, extra_body={"prompt_logprobs": 0})
    assert again.usage.prompt_tokens_details.cached_tokens == 0
    check(again.choices[0].prompt_logprobs, PROMPT, ref, 0, tok)
    assert all(len(e) == 1 for e in again.choices[0].prompt_logprobs[1:])


def test_completions_stream_carries_them_on_each_choice_once(server, reference):
    client = server.client()
    ref = reference(PROMPT)
    seen: dict[int, list] = {}
    for chunk in client.completions.create(model="tiny", prompt=PROMPT, max_tokens=3, n=2, temperature=0.8,
                                           stream=True, extra_body={"prompt_logprobs": 2}):
        for choice in chunk.choices:
            scores = (choice.model_extra or {}).get("prompt_logprobs")
            if scores is not None:
                assert choice.index not in seen
                seen[choice.index] = scores
    assert sorted(seen) == [0, 1]
    for scores in seen.values():
        check(scores, PROMPT, ref, 2, server.state.tokenizer)


def test_chat_has_them_top_level_streamed_or_not(server, reference):
    client = server.client()
    ids = chat_prompt_ids(server)
    ref = reference(ids)
    tok = server.state.tokenizer
    for _ in range(2):  # the second time the prefix is in the cache
        body = client.chat.completions.create(model="tiny", messages=USER, max_tokens=3,
                                              extra_body={"prompt_logprobs": 4})
        assert body.usage.prompt_tokens == len(ids)
        check(body.prompt_logprobs, ids, ref, 4, tok)
    chunks = list(client.chat.completions.create(model="tiny", messages=USER, max_tokens=3, stream=True,
                                                 extra_body={"prompt_logprobs": 1}))
    carried = [c.model_extra["prompt_logprobs"] for c in chunks if (c.model_extra or {}).get("prompt_logprobs")]
    assert len(carried) == 1
    check(carried[0], ids, ref, 1, tok)
    plain = client.chat.completions.create(model="tiny", messages=USER, max_tokens=2)
    assert plain.prompt_logprobs is None


def test_limits_are_those_of_logprobs(server):
    client = server.client()
    for bad in (21, -1):
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model="tiny", prompt="hello", max_tokens=2, extra_body={"prompt_logprobs": bad})
        assert "prompt_logprobs" in str(err.value)
    one = client.completions.create(model="tiny", prompt=[7], max_tokens=1, extra_body={"prompt_logprobs": 20})
    assert one.choices[0].prompt_logprobs == [None]  # a one-token prompt has nothing to score


def test_the_reference_engine_refuses_clearly(reference_server):
    client = reference_server.client()
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt="hello", max_tokens=2, extra_body={"prompt_logprobs": 2})
    assert err.value.body["param"] == "prompt_logprobs"
    assert "--engine transformers" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=USER, max_tokens=2, extra_body={"prompt_logprobs": 0})
    assert client.completions.create(model="tiny", prompt="hello", max_tokens=2).choices[0].finish_reason
