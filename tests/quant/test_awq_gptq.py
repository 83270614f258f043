"""AutoAWQ GEMM, GPTQ (gptqmodel) and Hugging Face fine-grained FP8 checkpoints of the tiny model, packed as their writers pack them
(tests/quant/packers.py), read by glmv against the same weights dequantized to a dense folder."""

from __future__ import annotations

import shutil

import pytest
import torch

from glmv.layers.quant.schemes import AwqGemm, Gptq, scheme_from_config
from tests.quant import packers
from tests.quant.helpers import PROMPTS, greedy_tokens, load_model, prompt_logits

AWQ_CONFIG = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm",
              "modules_to_not_convert": ["visual"]}


def gptq_config(sym: bool, desc_act: bool, v1: bool, dynamic: dict | None = None) -> dict:
    return {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": desc_act, "sym": sym,
            "checkpoint_format": "gptq" if v1 else "gptq_v2", "dynamic": dynamic or {}, "true_sequential": True}


# gptqmodel's mixed int4/int8 recipe: the MLP's down projections in 8 bits, one layer's o_proj left in bf16
MIXED = {r"+:.*\.mlp\.down_proj": {"bits": 8}, r"-:.*layers\.1\.self_attn\.o_proj": {}}


def mixed_bits(module: str):
    if module.endswith("mlp.down_proj"):
        return 8
    if module.endswith("layers.1.self_attn.o_proj"):
        return None
    return 4


FP8_BLOCK_CONFIG = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                    "weight_block_size": [128, 128], "modules_to_not_convert": ["lm_head"]}

CASES = {
    "fp8-block": (FP8_BLOCK_CONFIG, packers.fp8_block_module),
    "awq": (AWQ_CONFIG, packers.awq_module),
    "gptq-sym": (gptq_config(True, False, True), packers.gptq_module(lambda m: 4, True, False, True)),
    "gptq-asym": (gptq_config(False, False, True), packers.gptq_module(lambda m: 4, False, False, True)),
    "gptq-desc-act": (gptq_config(True, True, True), packers.gptq_module(lambda m: 4, True, True, True)),
    "gptq-v2-asym-desc-act": (gptq_config(False, True, False), packers.gptq_module(lambda m: 4, False, True, False)),
    "gptq-int4-int8-mix": (gptq_config(True, False, True, MIXED), packers.gptq_module(mixed_bits, True, False, True)),
}


@pytest.fixture(scope="module")
def pairs(tiny_model_dir, tmp_path_factory):
    made = {}

    def get(case: str):
        if case not in made:
            root = tmp_path_factory.mktemp(case)
            config, pack = CASES[case]
            packers.write_pair(tiny_model_dir, root / "q", root / "d", config, pack)
            made[case] = (root / "q", root / "d")
        return made[case]

    return get


@pytest.mark.parametrize("case", list(CASES))
def test_weights_and_logits_match_dequantized(case, pairs):
    quant, dense = pairs(case)
    mq, md = load_model(quant, dtype=torch.bfloat16), load_model(dense, dtype=torch.bfloat16)
    for lq, ld in zip(mq.w.layers, md.w.layers, strict=True):
        for a, b in zip(lq.linears(), ld.linears(), strict=True):
            assert torch.equal(a.dequantized(), b.dequantized())
    for ids in PROMPTS:
        torch.testing.assert_close(prompt_logits(mq, ids), prompt_logits(md, ids), atol=1e-5, rtol=0)


def test_float32_logits_within_tolerance(pairs):
    """float32 models: glmv's dequantization rounds differently from the reference only at the last bit."""
    quant, dense = pairs("gptq-desc-act")
    mq, md = load_model(quant), load_model(dense)
    for ids in PROMPTS:
        torch.testing.assert_close(prompt_logits(mq, ids), prompt_logits(md, ids), atol=1e-4, rtol=1e-4)


def test_schemes(pairs):
    import json

    quant, _ = pairs("gptq-int4-int8-mix")
    s = scheme_from_config(json.loads((quant / "config.json").read_text()), None)
    assert isinstance(s, Gptq) and s.zero_offset == 1
    assert s.layer_for("model.language_model.layers.0.mlp.down_proj").bits == 8
    assert s.layer_for("model.language_model.layers.0.mlp.gate_up_proj").bits == 4
    assert s.layer_for("model.language_model.layers.1.self_attn.o_proj") is None
    a = scheme_from_config({"quantization_config": AWQ_CONFIG}, None)
    assert isinstance(a, AwqGemm) and a.ignore == ("visual",)


@pytest.mark.parametrize("case", ["awq", "gptq-int4-int8-mix"])
def test_engine_greedy_tokens_equal_dequantized_model(case, pairs):
    quant, dense = pairs(case)
    assert greedy_tokens(quant) == greedy_tokens(dense)


def test_a_quantized_lm_head_is_refused_not_replaced_by_the_embedding(tiny_model_dir, tmp_path):
    """A checkpoint whose quantizer packed the lm_head too (no lm_head.weight left) stops the load with the
    sentence; the fallback for tied embeddings must not pick the embedding up in its place."""
    from safetensors.torch import load_file, save_file

    from glmv.layers.checkpoint import CheckpointError

    config, pack = CASES["awq"]
    quant = tmp_path / "q"
    packers.write_pair(tiny_model_dir, quant, tmp_path / "d", config, pack)
    tensors = load_file(str(quant / "model.safetensors"))
    name = next(n for n in tensors if n.endswith("lm_head.weight"))
    packed, _ = packers.awq_module(name.removesuffix(".weight"), tensors.pop(name))
    tensors.update({f"{name.removesuffix('.weight')}.{k}": v for k, v in packed.items()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(quant / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"lm_head' is stored quantized \(.*lm_head\.qweight"):
        load_model(quant, None)


def test_a_quantized_vision_weight_is_refused_not_read_without_its_scale(tiny_model_dir, tmp_path):
    """An FP8 vision linear (its E4M3 weight beside a weight_scale, as llm-compressor writes a module it was not
    told to ignore): read as a plain weight it would lose its scale, so the load stops with the sentence."""
    from safetensors.torch import load_file, save_file

    from glmv.layers.checkpoint import CheckpointError

    folder = tmp_path / "fp8-vision"
    shutil.copytree(tiny_model_dir, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    name = next(n for n in tensors if "visual" in n and n.endswith("attn.qkv.weight"))
    weight = tensors[name].float()
    scale = weight.abs().amax(dim=1, keepdim=True) / 448
    tensors[name] = (weight / scale).to(torch.float8_e4m3fn)
    tensors[name.removesuffix("weight") + "weight_scale"] = scale
    save_file(tensors, str(folder / "model.safetensors"))
    from glmv.config import ModelConfig
    from glmv.models.glm4v import Glm4vModel

    with pytest.raises(CheckpointError, match=r"attn\.qkv' is stored quantized \(.*weight_scale"):
        Glm4vModel.load(ModelConfig.from_dir(folder), "cpu", torch.float32, max_positions=64)
