"""The tiny model folder: deterministic, loadable by transformers, with a working processor and template."""

from __future__ import annotations

import hashlib
import json

import torch

from glmv.models.tiny import PRESETS, make_tiny_model
from tests.media_factory import decode_video, make_image, make_video


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_builds_byte_identically_twice(tmp_path, tiny_model_dir):
    again = make_tiny_model(tmp_path / "again", "tiny")
    assert _digests(again) == _digests(tiny_model_dir)
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
            "preprocessor_config.json", "video_preprocessor_config.json"} <= set(_digests(again))


def test_generation_config_has_the_real_stop_list_shape(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    names = [tok.convert_ids_to_tokens(i) for i in gen["eos_token_id"]]
    assert names == ["<|endoftext|>", "<|user|>", "<|observation|>", "</answer>"]


def test_transformers_loads_and_runs_it(tiny_model_dir):
    from transformers import Glm4vForConditionalGeneration

    model = Glm4vForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert model.config.text_config.hidden_size == PRESETS["tiny"].hidden
    ids = torch.tensor([[1, 2, 3, 4]])
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, 4, model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_processor_expands_image_placeholders(tiny_model_dir, tmp_path):
    from PIL import Image
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    img = Image.open(make_image(tmp_path / "a.png", width=280, height=140))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    out = proc(text=[text], images=[img], return_tensors="pt")
    t, h, w = out["image_grid_thw"][0].tolist()
    assert (t, h, w) == (1, 140 // 14, 280 // 14)
    n_image = int((out["input_ids"][0] == proc.image_token_id).sum())
    assert n_image == t * h * w // 4 == 50  # one LLM token per 28x28 pixels
    assert int((out["mm_token_type_ids"][0] == 1).sum()) == n_image


def test_processor_expands_video_placeholders_per_frame_pair(tiny_model_dir, tmp_path):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    frames, meta = decode_video(make_video(tmp_path / "v.mp4", frames=8, fps=4, width=112, height=84))
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "hi"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    out = proc(text=[text], videos=[frames], video_metadata=[meta], do_sample_frames=False, return_tensors="pt")
    t, h, w = out["video_grid_thw"][0].tolist()
    assert t == 4  # 8 frames, temporal patch 2
    per_frame = h * w // 4
    ids = out["input_ids"][0]
    assert int((ids == proc.image_token_id).sum()) == t * per_frame
    begin = proc.tokenizer.convert_tokens_to_ids("<|begin_of_image|>")
    assert int((ids == begin).sum()) == t  # each frame pair is its own image block
    decoded = proc.tokenizer.decode(ids)
    assert "<|end_of_image|>0<|begin_of_image|>" in decoded and "<|end_of_image|>1<|end_of_video|>" in decoded
    assert int((out["mm_token_type_ids"][0] == 2).sum()) == t * per_frame


def test_full_preset_tokenizer_has_the_real_vocabulary_size_and_special_ids(tmp_path):
    """The `full` preset's tokenizer is as large as GLM's (151,329 ordinary tokens), so host costs that scale with
    the vocabulary (xgrammar's masks, detokenizing) are measured at the real size; its special tokens then sit at
    the real checkpoint's ids. Built twice it is the same, and it round-trips text."""
    from transformers import AutoTokenizer

    from glmv.models.tiny import _write_tokenizer_and_processor
    from glmv.models.tiny_vocab import MAX_PUNCT_CHARS, MAX_WORD_CHARS

    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    ids = _write_tokenizer_and_processor(first, PRESETS["full"])
    _write_tokenizer_and_processor(second, PRESETS["full"])
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
    assert ids["<|endoftext|>"] == 151329 and ids["[gMASK]"] == 151331 and ids["<|image|>"] == 151343
    tok = AutoTokenizer.from_pretrained(first)
    assert len(tok) <= PRESETS["full"].vocab
    text = 'Describe the image, then answer as JSON: {"count": 3}. 图片里有什么？'
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    grown = [tok.decode([i]) for i in range(150_000, 151_329, 7)]
    assert all(0 < len(piece) <= max(MAX_WORD_CHARS, MAX_PUNCT_CHARS) for piece in grown)
    assert sum('"' in tok.decode([i]) for i in range(0, 151_329, 13)) < 151_329 // 13 // 50
