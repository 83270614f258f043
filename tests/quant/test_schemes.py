"""Which quantization_config variants glmv serves, and the one sentence that refuses each of the others."""

from __future__ import annotations

import json
import shutil

import pytest

from glmv.layers.quant.schemes import BlockFp8, OnlineFp8, QuantizationError, scheme_from_config


def ct(weights: dict, fmt: str = "pack-quantized", acts: dict | None = None, **extra) -> dict:
    return {"quant_method": "compressed-tensors", "format": fmt,
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": acts}},
            **extra}


W4 = {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128, "symmetric": True}
REFUSED = {
    "awq gemv": ({"quant_method": "awq", "version": "gemv", "bits": 4, "group_size": 128}, "AWQ version 'gemv'"),
    "awq marlin": ({"quant_method": "awq", "version": "marlin", "bits": 4, "group_size": 128},
                   "AWQ version 'marlin'"),
    "awq group 64": ({"quant_method": "awq", "version": "gemm", "bits": 4, "group_size": 64},
                     "AWQ with group_size 64"),
    "awq no zero point": ({"quant_method": "awq", "version": "gemm", "zero_point": False}, "without zero points"),
    "gptq 3-bit": ({"quant_method": "gptq", "bits": 3, "group_size": 128}, "3-bit"),
    "gptq group 32": ({"quant_method": "gptq", "bits": 4, "group_size": 32}, "group_size 32"),
    "gptq marlin": ({"quant_method": "gptq", "bits": 4, "group_size": 128, "checkpoint_format": "marlin"},
                    "checkpoint_format 'marlin'"),
    "gptq lm_head": ({"quant_method": "gptq", "bits": 4, "group_size": 128, "lm_head": True}, "lm_head true"),
    "gptq dynamic 2-bit": ({"quant_method": "gptq", "bits": 4, "group_size": 128,
                            "dynamic": {"+:.*down_proj": {"bits": 2}}}, "2-bit"),
    "fp8 per-tensor": ({"quant_method": "fp8", "activation_scheme": "dynamic"}, "without weight_block_size"),
    "fp8 block 64": ({"quant_method": "fp8", "weight_block_size": [64, 64]}, "weight_block_size [64, 64]"),
    "fp8 static acts": ({"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "static"},
                        "activation_scheme 'static'"),
    "bitsandbytes": ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "quant_method 'bitsandbytes'"),
    "ct w8a8 int": (ct({"num_bits": 8, "type": "int", "strategy": "channel"}, "int-quantized",
                       {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True}),
                    "compressed-tensors format 'int-quantized'"),
    "ct nvfp4": (ct({"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16},
                    "nvfp4-pack-quantized"), "nvfp4-pack-quantized"),
    "ct w4a16 group 64": (ct({**W4, "group_size": 64}), "group_size 64"),
    "ct w4a16 channel": (ct({**W4, "strategy": "channel", "group_size": None}), "by 'channel'"),
    "ct w4a16 actorder group": (ct({**W4, "actorder": "group"}), "actorder 'group'"),
    "ct w8a16": (ct({**W4, "num_bits": 8}), "8-bit"),
    "ct fp8 block": (ct({"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128, 128]},
                        "float-quantized"), "weight strategy 'block'"),
    "ct 2:4 sparse": (ct(W4, sparsity_config={"format": "sparse-24-bitmask"}), "sparsity"),
    "ct two groups": ({"quant_method": "compressed-tensors", "format": "pack-quantized",
                       "config_groups": {"a": {"targets": ["Linear"], "weights": W4},
                                         "b": {"targets": ["Linear"], "weights": W4}}}, "2 config groups"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_in_one_sentence(name):
    qc, what = REFUSED[name]
    with pytest.raises(QuantizationError) as err:
        scheme_from_config({"quantization_config": qc}, None)
    msg = str(err.value)
    assert what in msg and "glmv serves" in msg
    assert msg.count(". ") == 0 and msg.endswith(".")  # one sentence


def test_flags():
    assert scheme_from_config({}, None) is None
    assert scheme_from_config({}, "fp8") == OnlineFp8()
    block = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    assert scheme_from_config({"quantization_config": block}, "fp8") == BlockFp8()
    with pytest.raises(QuantizationError, match="already quantized"):
        scheme_from_config({"quantization_config": {"quant_method": "awq"}}, "fp8")
    with pytest.raises(QuantizationError, match="--quantization 'int4'"):
        scheme_from_config({}, "int4")


def test_engine_refuses_before_loading(tiny_model_dir, tmp_path):
    """An unsupported checkpoint stops the engine at start-up with the sentence, not with a missing tensor."""
    from glmv.llm import LLM

    folder = tmp_path / "gemv"
    shutil.copytree(tiny_model_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = REFUSED["awq gemv"][0]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(QuantizationError, match="AWQ version 'gemv'"):
        LLM(str(folder), device="cpu", dtype="float32", max_model_len=64)
