"""compressed-tensors checkpoints written by the real llm-compressor, read by glmv, against compressed-tensors' own
decompression of the same files (FP8 W8A8 dynamic and static, W4A16 symmetric and asymmetric, group 128)."""

from __future__ import annotations

import pytest
import torch

from glmv.layers.quant.schemes import CompressedFp8, CompressedInt, scheme_from_config
from tests.quant.helpers import PROMPTS, greedy_tokens, load_model, prompt_logits

SCHEMES = ["FP8_DYNAMIC", "FP8", "W4A16", "W4A16_ASYM"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_glmv_reads_what_llm_compressor_writes(scheme, llmc_checkpoints):
    quant, dense = llmc_checkpoints(scheme)
    mq = load_model(quant, dtype=torch.bfloat16)
    md = load_model(dense, dtype=torch.bfloat16)
    # bf16 weights are bit-identical to compressed-tensors' dequantization: (q - zero) * scale rounds once either way
    for lq, ld in zip(mq.w.layers, md.w.layers, strict=True):
        for a, b in zip(lq.linears(), ld.linears(), strict=True):
            assert torch.equal(a.dequantized(), b.dequantized())
    for ids in PROMPTS:
        torch.testing.assert_close(prompt_logits(mq, ids), prompt_logits(md, ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_schemes_detected(scheme, llmc_checkpoints):
    import json

    quant, _ = llmc_checkpoints(scheme)
    config = json.loads((quant / "config.json").read_text())
    found = scheme_from_config(config, None)
    if scheme.startswith("FP8"):
        strategy = config["quantization_config"]["config_groups"]["group_0"]["weights"]["strategy"]
        assert found == CompressedFp8(strategy, scheme == "FP8", found.ignore)
        assert "lm_head" in found.ignore
    else:
        assert isinstance(found, CompressedInt)
        assert (found.layer.bits, found.layer.group_size, found.layer.symmetric) == (4, 128, scheme == "W4A16")


def test_quantized_logits_near_bf16(llmc_checkpoints, tiny_model_dir):
    """The quantization itself costs little even on the tiny random model: FP8 logits differ from bf16's by under
    12% of their mean magnitude on average (measured 7%)."""
    quant, _ = llmc_checkpoints("FP8_DYNAMIC")
    mq, m0 = load_model(quant), load_model(tiny_model_dir)
    for ids in PROMPTS:
        q, ref = prompt_logits(mq, ids), prompt_logits(m0, ids)
        assert (q - ref).abs().mean() < 0.12 * ref.abs().mean()


@pytest.mark.parametrize("scheme", ["FP8_DYNAMIC", "W4A16_ASYM"])
def test_engine_greedy_tokens_equal_dequantized_model(scheme, llmc_checkpoints):
    quant, dense = llmc_checkpoints(scheme)
    assert greedy_tokens(quant) == greedy_tokens(dense)
