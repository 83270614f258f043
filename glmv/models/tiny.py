"""Builds complete, deterministic, offline Hugging Face folders of the GLM-4.1V architecture with random weights.

`tiny` (a few MB) is for tests, `small` (~150 M params) for CPU benchmarks, `full` (the real 9B dimensions) for GPU
benchmarks. The folder has everything a real checkpoint has: config.json, generation_config.json, safetensors,
a tokenizer with the GLM special tokens, the chat template and the processor configs, so every loader in glmv and
transformers treats it like the real model. Building twice gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from glmv.models.constants import (
    CHAT_TEMPLATE_PATH,
    GLM46V_CHAT_TEMPLATE_PATH,
    SPECIAL_TOKENS,
    THINK_TOKENS,
    TOOL_TOKENS,
)
from glmv.models.tiny_vocab import grow_bpe


@dataclass(frozen=True)
class Preset:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int  # model vocab (>= tokenizer size); the real model pads too
    bpe_vocab: int  # size the tokenizer is trained to
    vision_depth: int
    vision_hidden: int
    vision_heads: int
    vision_intermediate: int
    max_position_embeddings: int
    init_std: float
    # The checkpoint family's shape: GLM-4.1V-Thinking by default; GLM-4.6V-Flash renders tools, writes
    # `<think>..</think>answer` (no <answer> tags, so </answer> is no end token) and knows the call tokens.
    chat_template: Path = CHAT_TEMPLATE_PATH
    added_tokens: tuple[str, ...] = THINK_TOKENS
    eos_tokens: tuple[str, ...] = ("<|endoftext|>", "<|user|>", "<|observation|>", "</answer>")
    rope_theta: float = 10000.0
    # Ordinary (non-special) tokens the tokenizer holds; 0 keeps what the corpus trains. The real GLM vocabulary
    # has 151,329 (its special tokens start at that id); glmv/models/tiny_vocab.py says why the size matters.
    ordinary_tokens: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def mrope_section(self) -> list[int]:
        half_rotary = self.head_dim // 4  # partial rotary 0.5 -> head_dim/2 rotating dims -> head_dim/4 frequencies
        t = half_rotary // 4
        h = (half_rotary - t) // 2
        return [t, h, half_rotary - t - h]


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", 128, 2, 4, 2, 256, 1024, 1000, 2, 64, 2, 256, 4096, 0.08),
    "small": Preset("small", 1024, 12, 16, 2, 2816, 8192, 4000, 4, 256, 4, 1024, 32768, 0.02),
    "full": Preset("full", 4096, 40, 32, 2, 13696, 151552, 4000, 24, 1536, 12, 13696, 65536, 0.02,
                   ordinary_tokens=151_329),
    # GLM-4.6V-Flash: the same Glm4v architecture at tiny dims, its 128k context, tools and enable_thinking.
    "tiny-4.6v": Preset("tiny-4.6v", 128, 2, 4, 2, 256, 1024, 1000, 2, 64, 2, 256, 131072, 0.08,
                        chat_template=GLM46V_CHAT_TEMPLATE_PATH, added_tokens=(*THINK_TOKENS, *TOOL_TOKENS),
                        eos_tokens=("<|endoftext|>", "<|user|>", "<|observation|>")),
}

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A picture is worth a thousand words.
What is in this image? Describe the video frame by frame. Read the document and answer the question.
Let me think step by step. First, I look at the image. Then I count the objects. The answer is 42.
456*123 = 56088. 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 2.71828 0.5 seconds.
图片里有什么？请描述这个视频。456*123等于多少？我们一步一步地思考。答案是：五万六千零八十八。
猫 狗 鸟 树 山 水 天空 城市 汽车 人 文字 表格 图表 文档 页面。
def add(a, b):\n    return a + b\nprint(add(2, 3))\n{"key": [1, 2, 3]}
Bounding boxes are given as [x1, y1, x2, y2] in 0-1000 coordinates, for example [[120, 340, 560, 780]].
"""


def _train_tokenizer(bpe_vocab: int, added: tuple[str, ...], ordinary_tokens: int = 0):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers import processors as tk_processors

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = tk_processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    if ordinary_tokens:
        tok = Tokenizer.from_str(grow_bpe(tok.to_str(), ordinary_tokens))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.add_tokens(list(added))
    return tok


def _text_config(p: Preset, ids: dict[str, int], vocab: int) -> dict:
    return {
        "model_type": "glm4v_text",
        "attention_bias": True,
        "attention_dropout": 0.0,
        "eos_token_id": [ids[t] for t in p.eos_tokens],
        "hidden_act": "silu",
        "hidden_size": p.hidden,
        "initializer_range": 0.02,
        "intermediate_size": p.intermediate,
        "max_position_embeddings": p.max_position_embeddings,
        "num_attention_heads": p.heads,
        "num_hidden_layers": p.layers,
        "num_key_value_heads": p.kv_heads,
        "pad_token_id": ids["<|endoftext|>"],
        "rms_norm_eps": 1e-05,
        "dtype": "bfloat16",
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": p.rope_theta,
            "partial_rotary_factor": 0.5,
            "mrope_section": p.mrope_section,
        },
        "tie_word_embeddings": False,
        "use_cache": True,
        "vocab_size": vocab,
    }


def _vision_config(p: Preset) -> dict:
    return {
        "model_type": "glm4v_vision",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "depth": p.vision_depth,
        "hidden_act": "silu",
        "hidden_size": p.vision_hidden,
        "image_size": 336,
        "in_channels": 3,
        "initializer_range": 0.02,
        "intermediate_size": p.vision_intermediate,
        "num_heads": p.vision_heads,
        "out_hidden_size": p.hidden,
        "patch_size": 14,
        "rms_norm_eps": 1e-05,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "rope_parameters": {"rope_type": "axial", "rope_theta": 10000.0},
    }


def build_config(p: Preset, ids: dict[str, int]) -> dict:
    vocab = max(p.vocab, max(ids.values()) + 1)
    return {
        "architectures": ["Glm4vForConditionalGeneration"],
        "model_type": "glm4v",
        "text_config": _text_config(p, ids, vocab),
        "vision_config": _vision_config(p),
        "image_start_token_id": ids["<|begin_of_image|>"],
        "image_end_token_id": ids["<|end_of_image|>"],
        "video_start_token_id": ids["<|begin_of_video|>"],
        "video_end_token_id": ids["<|end_of_video|>"],
        "image_token_id": ids["<|image|>"],
        "video_token_id": ids["<|video|>"],
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
        "glmv_preset": p.name,
    }


def _param_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of transformers' Glm4vForConditionalGeneration, read off a meta-device model."""
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    cfg = Glm4vConfig(**{k: v for k, v in config.items() if k not in ("architectures", "glmv_preset", "dtype")})
    with torch.device("meta"):
        model = Glm4vForConditionalGeneration(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _random_tensor(name: str, shape: tuple[int, ...], std: float, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Deterministic per-name values: norm weights 1, norm biases 0, everything else N(0, std)."""
    is_norm = "norm" in name and len(shape) == 1
    if is_norm:
        return (torch.ones if name.endswith("weight") else torch.zeros)(shape, dtype=dtype, device=device)
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") & ((1 << 63) - 1)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = torch.empty(shape, dtype=torch.float32, device=device)
    out.normal_(0.0, std, generator=gen)
    if name.endswith("position_embedding.weight"):
        out.mul_(0.25)
    return out.to(dtype)


def _write_weights(out: Path, shapes: dict[str, tuple[int, ...]], p: Preset, dtype: torch.dtype, device: str) -> None:
    from safetensors.torch import save_file

    shard_bytes = 4 << 30
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(shapes):
        n = 1
        for d in shapes[name]:
            n *= d
        nbytes = n * torch.finfo(dtype).bits // 8
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    if len(shards) == 1:
        names = ["model.safetensors"]
    weight_map: dict[str, str] = {}
    total = 0
    iterator = list(zip(names, shards, strict=True))
    try:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=f"writing {p.name} weights", unit="shard", disable=len(shards) == 1)
    except ImportError:  # pragma: no cover
        pass
    for fname, keys in iterator:
        tensors = {k: _random_tensor(k, shapes[k], p.init_std, dtype, device).cpu() for k in keys}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, fname))
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _write_tokenizer_and_processor(out: Path, p: Preset) -> dict[str, int]:
    tok = _train_tokenizer(p.bpe_vocab, p.added_tokens, p.ordinary_tokens)
    ids = {t: tok.token_to_id(t) for t in (*SPECIAL_TOKENS, *p.added_tokens)}
    tok.save(str(out / "tokenizer.json"))
    added = {}
    for t in (*SPECIAL_TOKENS, *p.added_tokens):
        added[str(ids[t])] = {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": t in SPECIAL_TOKENS,
        }
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "added_tokens_decoder": added,
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "clean_up_tokenization_spaces": False,
            "model_max_length": p.max_position_embeddings,
            "padding_side": "left",
            "remove_space": False,
            "do_lower_case": False,
            "extra_special_tokens": {"image_token": "<|image|>", "video_token": "<|video|>"},
        },
    )
    _write_json(out / "special_tokens_map.json", {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})
    (out / "chat_template.jinja").write_text(p.chat_template.read_text())
    # The released checkpoint's preprocessing: CLIP mean/std, 14 px patches, 2x2 merge, 2-frame temporal patches.
    shared = {
        "processor_class": "Glm4vProcessor",
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "merge_size": 2,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": 12544, "longest_edge": 47040000},
    }
    _write_json(out / "preprocessor_config.json", {"image_processor_type": "Glm4vImageProcessor", **shared})
    video = {"do_sample_frames": True, "fps": 2.0, "max_duration": 300, "max_image_size": {"longest_edge": 47040000}}
    _write_json(out / "video_preprocessor_config.json", {"video_processor_type": "Glm4vVideoProcessor", **shared, **video})
    _write_json(out / "processor_config.json", {"processor_class": "Glm4vProcessor"})
    return ids


def make_tiny_model(out_dir: str | os.PathLike, preset: str = "tiny", device: str = "cpu") -> Path:
    """Write a complete model folder for `preset` into out_dir (created or replaced). Returns the folder."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    p = PRESETS[preset]
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        ids = _write_tokenizer_and_processor(tmp, p)
        config = build_config(p, ids)
        _write_json(tmp / "config.json", config)
        _write_json(
            tmp / "generation_config.json",
            {
                "do_sample": True,
                "eos_token_id": config["text_config"]["eos_token_id"],
                "pad_token_id": ids["<|endoftext|>"],
                "temperature": 1.0,
                "top_k": 2,
                "top_p": 0.6,
            },
        )
        with torch.no_grad():
            _write_weights(tmp, _param_shapes(config), p, torch.bfloat16 if preset == "full" else torch.float32, device)
        if out.exists():
            shutil.rmtree(out)
        tmp.chmod(0o755)
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
