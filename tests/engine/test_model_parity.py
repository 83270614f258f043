"""glmv's own model against transformers' Glm4vForConditionalGeneration on the tiny checkpoint (float32)."""

from __future__ import annotations

import pytest
import torch

from glmv.engine.request import find_media_items
from glmv.layers.attention import AttentionMetadata
from glmv.models.mrope import get_rope_index

MM_PROMPTS = ["image", "two_images", "video"]


def full_prompt_logits(model, prompt) -> torch.Tensor:
    """All-position logits of one prompt through glmv's paged model (one prefill, blocks 1..n)."""
    n = len(prompt)
    block = 16
    blocks = n // block + 2
    t = model.dims
    caches = [(torch.zeros(blocks, block, t.num_kv_heads, t.head_dim), torch.zeros(blocks, block, t.num_kv_heads,
                                                                                   t.head_dim))
              for _ in range(t.num_layers)]
    hidden = model.embed(torch.tensor(prompt.token_ids))
    positions = torch.arange(n).expand(3, -1)
    items = find_media_items(prompt, 2)
    if items:
        positions, _ = get_rope_index(prompt.type_ids, prompt.mm.image_grid_thw, prompt.mm.video_grid_thw, 2)
        for item in items:
            pixels = prompt.mm.pixel_values if item.kind == "image" else prompt.mm.pixel_values_videos
            hidden[item.positions] = model.vision.encode(pixels[item.patch_start:item.patch_end], [item.grid])
    meta = AttentionMetadata(
        slot_mapping=torch.arange(n) + block, num_prefill_tokens=n,
        prefill_block_tables=torch.arange(1, blocks, dtype=torch.int32).unsqueeze(0),
        prefill_cu_seqlens_q=torch.tensor([0, n], dtype=torch.int32),
        prefill_seq_lens=torch.tensor([n], dtype=torch.int32), prefill_max_seqlen_q=n)
    return model.logits(model.forward(hidden, positions, caches, meta))



def check_chunked_prompt_logprobs(model_dir, device: str, glmv_model, prompt, tolerance: float) -> None:
    """glmv.LLM on `device` prefills `prompt` in chunks of 16 tokens with n=2 (the group forks after its shared
    blocks) and prompt_logprobs=2: every prompt token's logprob equals log_softmax of one whole-prompt forward of
    glmv's model on the CPU within `tolerance`, and the clear top 2 (no near-tie that the sums' order could flip)
    are among the returned alternatives."""
    from glmv.llm import LLM
    from glmv.sampling import SamplingParams

    llm = LLM(str(model_dir), device=device, dtype="float32", max_model_len=512, max_num_batched_tokens=16)
    out = llm.generate(prompt, SamplingParams(max_tokens=2, n=2, prompt_logprobs=2))[0]
    ref = full_prompt_logits(glmv_model, prompt).log_softmax(-1)
    ids = prompt.token_ids
    scores = out.prompt_logprobs
    assert len(scores) == len(ids) and scores[0] is None and len(out.outputs) == 2
    worst = max(abs(scores[j][ids[j]].logprob - ref[j - 1, ids[j]].item()) for j in range(1, len(ids)))
    assert worst < tolerance, worst
    for j in range(1, len(ids)):
        top = ref[j - 1].topk(3)
        if top.values[1] - top.values[2] > tolerance:
            assert set(top.indices[:2].tolist()) <= set(scores[j])

@pytest.mark.parametrize("name", ["text", "image", "two_images", "video"])
def test_logits_match_transformers(name, prompts, glmv_model, hf_model):
    from glmv.engine.reference import hf_inputs

    prompt = prompts[name]
    ours = full_prompt_logits(glmv_model, prompt)
    with torch.inference_mode():
        ref = hf_model(**hf_inputs(prompt, "cpu", torch.float32)).logits[0]
    assert ours.shape == ref.shape
    diff = (ours - ref).abs().max().item()
    assert diff < 1e-4, f"max abs logit difference {diff}"
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("name", MM_PROMPTS)
def test_mrope_positions_match_get_rope_index(name, prompts, hf_model):
    prompt = prompts[name]
    mm = prompt.mm
    ours, delta = get_rope_index(prompt.type_ids, mm.image_grid_thw, mm.video_grid_thw, 2)
    ref, ref_delta = hf_model.model.get_rope_index(
        torch.tensor([prompt.token_ids]), torch.tensor([prompt.type_ids]),
        image_grid_thw=mm.image_grid_thw.clone() if mm.image_grid_thw is not None else None,
        video_grid_thw=mm.video_grid_thw.clone() if mm.video_grid_thw is not None else None)
    assert torch.equal(ours, ref[:, 0])
    assert delta == int(ref_delta) and delta < 0  # vision grids advance positions by less than their token count


def test_vision_tower_matches_transformers_batched(builder, images, glmv_model, hf_model):
    """Three images of different sizes in ONE encoder call equal transformers' per-image embeddings."""
    from glmv.inputs.processor import LoadedMedia

    text = builder.render([{"role": "user", "content": [{"type": "image"}] * 3}])
    prompt = builder.build(text, LoadedMedia(images, ["a", "b", "c"], [], [], []))
    grids = [tuple(g) for g in prompt.mm.image_grid_thw.tolist()]
    assert len(set(grids)) == 3
    ours = glmv_model.vision.encode(prompt.mm.pixel_values, grids)
    with torch.inference_mode():
        ref = torch.cat(hf_model.model.get_image_features(prompt.mm.pixel_values,
                                                          prompt.mm.image_grid_thw).pooler_output)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-4


def test_vision_tower_matches_transformers_video(prompts, glmv_model, hf_model):
    mm = prompts["video"].mm
    ours = glmv_model.vision.encode(mm.pixel_values_videos, [tuple(g) for g in mm.video_grid_thw.tolist()])
    with torch.inference_mode():
        ref = torch.cat(hf_model.model.get_video_features(mm.pixel_values_videos, mm.video_grid_thw).pooler_output)
    assert (ours - ref).abs().max().item() < 1e-4


def test_media_items_layout(prompts):
    items = find_media_items(prompts["two_images"], 2)
    assert [i.kind for i in items] == ["image", "image"]
    assert items[0].last < items[1].first
    assert items[0].key != items[1].key and items[0].key.startswith("image:img-a:")
    video = find_media_items(prompts["video"], 2)
    assert len(video) == 1 and video[0].grid[0] == 2
    # a video's tokens are two frame groups separated by timestamp text
    assert video[0].num_tokens == video[0].grid[0] * video[0].grid[1] * video[0].grid[2] // 4
    assert video[0].last - video[0].first + 1 > video[0].num_tokens
