"""Online FP8 (`--quantization fp8`) and `glmv quantize --method fp8`: what glmv writes is read back by glmv and
by compressed-tensors' own parser and decompressor, and online FP8 serves exactly those weights."""

from __future__ import annotations

import json

import pytest
import torch

from glmv.cli.main import main
from glmv.layers.linear import DenseLinear
from tests.quant.helpers import PROMPTS, greedy_tokens, load_model, prompt_logits, run_tool


@pytest.fixture(scope="module")
def fp8_folders(tiny_model_dir, tmp_path_factory, quant_python):
    root = tmp_path_factory.mktemp("glmv-fp8")
    out, dense = root / "fp8", root / "dequantized"
    assert main(["quantize", str(tiny_model_dir), str(out), "--method", "fp8"]) == 0
    summary = json.loads(run_tool(quant_python, "dequantize", str(out), str(dense)))
    return out, dense, summary


def test_written_checkpoint_parses_in_compressed_tensors(fp8_folders, quant_python):
    out, _, summary = fp8_folders
    assert summary == {"modules": 2 * 6, "format": "float-quantized"}  # 2 layers x q, k, v, o, gate_up, down
    assert json.loads(run_tool(quant_python, "check", str(out)))["format"] == "float-quantized"


def test_glmv_reads_its_fp8_and_online_fp8_is_the_same_weights(fp8_folders, tiny_model_dir):
    out, dense, _ = fp8_folders
    written = load_model(out, dtype=torch.bfloat16)
    online = load_model(tiny_model_dir, "fp8", dtype=torch.bfloat16)
    reference = load_model(dense, dtype=torch.bfloat16)
    for lw, lo, lr in zip(written.w.layers, online.w.layers, reference.w.layers, strict=True):
        for a, b, c in zip(lw.linears(), lo.linears(), lr.linears(), strict=True):
            assert torch.equal(a.dequantized(), c.dequantized())
            assert torch.equal(b.dequantized(), c.dequantized())
    for ids in PROMPTS:
        torch.testing.assert_close(prompt_logits(online, ids), prompt_logits(reference, ids), atol=1e-5, rtol=0)


def test_what_stays_dense(tiny_model_dir):
    """Embeddings, norms and lm_head stay bf16 under online FP8; the FP8 weights differ from the bf16 ones."""
    online, dense = load_model(tiny_model_dir, "fp8"), load_model(tiny_model_dir)
    assert torch.equal(online.w.embed, dense.w.embed) and torch.equal(online.w.lm_head.weight, dense.w.lm_head.weight)
    assert torch.equal(online.w.layers[0].input_norm, dense.w.layers[0].input_norm)
    a, b = online.w.layers[0].down, dense.w.layers[0].down
    assert isinstance(a, DenseLinear) and not torch.equal(a.weight, b.weight)  # CPU: dequantized at load
    assert (a.weight - b.weight).abs().max() <= b.weight.abs().max() / 16  # E4M3 keeps 3 mantissa bits


def test_engine_online_fp8_greedy_equals_dequantized(fp8_folders, tiny_model_dir):
    _, dense, _ = fp8_folders
    assert greedy_tokens(tiny_model_dir, "fp8") == greedy_tokens(dense)


def test_quantize_refuses_a_quantized_source(fp8_folders, tmp_path, capsys):
    out, _, _ = fp8_folders
    assert main(["quantize", str(out), str(tmp_path / "again"), "--method", "fp8"]) == 2
    assert "already quantized" in capsys.readouterr().err
