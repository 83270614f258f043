"""glmv's quantized matmuls (glmv/kernels/triton_fp8.py, triton_w4a16.py) through their Linear objects, against
dequantize + torch.matmul: the 9B decoder's shapes and batch sizes 1-256 on CUDA, small shapes under
TRITON_INTERPRET=1 on the CPU (float32 activations there: the interpreter's 16-bit dot is unreliable)."""

from __future__ import annotations

import pytest
import torch

from tests.gpu.where import DEVICE, GPU_TEST_MARKS, ON_GPU

pytestmark = GPU_TEST_MARKS

# (out, in) of qkv, o, gate_up and down in GLM-4.1V-9B
SHAPES = [(4608, 4096), (4096, 4096), (27392, 4096), (4096, 13696)] if ON_GPU else [(96, 256), (64, 384)]
BATCHES = [1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 512] if ON_GPU else [1, 3, 17, 260]
DTYPE = torch.bfloat16 if ON_GPU else torch.float32
TOL = 1.5e-2 if ON_GPU else 1e-4  # of the reference's largest magnitude: bf16 outputs / float32 in the interpreter


def kernels():
    from glmv.layers.quant.loaders import QuantKernels

    return QuantKernels.for_device(torch.device(DEVICE))


def check(y: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> None:
    err = (y.float() - ref).abs().max().item()
    assert err <= tol * ref.abs().max().item(), f"max error {err} vs |ref| {ref.abs().max().item()}"


def int_weight(out: int, in_: int, bits: int, act_order: bool, gen: torch.Generator):
    from glmv.layers.quant.unpack import IntWeight

    groups = in_ // 128
    q = torch.randint(0, 1 << bits, (out, in_), generator=gen, dtype=torch.uint8)
    scales = torch.rand(out, groups, generator=gen) * 0.02 / (1 << (bits - 4)) + 1e-3
    zeros = torch.randint(0, 1 << bits, (out, groups), generator=gen).float()
    g_idx = torch.arange(in_) // 128
    if act_order:
        g_idx = g_idx[torch.randperm(in_, generator=gen)]
    return IntWeight(q.to(DEVICE), scales.to(DEVICE), zeros.to(DEVICE), g_idx.to(DEVICE), bits, 128)


@pytest.mark.parametrize("bits,act_order", [(4, False), (4, True), (8, False)])
@pytest.mark.parametrize("shape", SHAPES)
def test_int_linear(shape, bits, act_order):
    from glmv.layers.quant.linears import IntLinear

    gen = torch.Generator().manual_seed(0)
    w = int_weight(*shape, bits, act_order, gen)
    bias = torch.randn(shape[0], generator=gen).to(DEVICE, DTYPE)
    k = kernels()
    lin = IntLinear(w, bias, k.int_matmul, DTYPE, prompt_matmul=k.int_prompt_matmul)
    dense = w.dense(torch.float32)
    assert torch.equal(lin.dequantized(), dense.to(DTYPE))
    out, in_ = shape
    expected = out * in_ * bits // 8 + 2 * (in_ // 128) * out * 4 + bias.numel() * bias.element_size()
    assert lin.nbytes == expected + (in_ * 8 if act_order else 0)  # words, float32 scales and zeros, bias, perm
    for rows in BATCHES:
        x = torch.randn(rows, shape[1], generator=gen).to(DEVICE, DTYPE)
        check(lin(x), x.float() @ dense.T + bias.float())


@pytest.mark.parametrize("shape", SHAPES)
def test_fp8_linear_per_channel(shape):
    """Weight-only below TENSOR_CORE_MIN_ROWS; FP8 tensor cores with per-token activation scales above it on sm89+
    (a looser bound there: the activations are rounded to E4M3 too)."""
    from glmv.layers.quant.linears import TENSOR_CORE_MIN_ROWS, Fp8Linear
    from glmv.layers.quant.unpack import quantize_fp8_rows

    gen = torch.Generator().manual_seed(1)
    w = quantize_fp8_rows(torch.randn(shape, generator=gen).to(DEVICE) * 0.02)
    bias = torch.randn(shape[0], generator=gen).to(DEVICE, DTYPE)
    k = kernels()
    lin = Fp8Linear(w, bias, k.fp8_weight_only, k.fp8_tensor_core, DTYPE)
    dense = w.dense(torch.float32)
    for rows in BATCHES:
        x = torch.randn(rows, shape[1], generator=gen).to(DEVICE, DTYPE)
        tensor_cores = k.fp8_tensor_core is not None and rows >= TENSOR_CORE_MIN_ROWS
        check(lin(x), x.float() @ dense.T + bias.float(), 6e-2 if tensor_cores else TOL)


@pytest.mark.parametrize("shape", SHAPES)
def test_fp8_linear_block_scales(shape):
    from glmv.layers.quant.linears import Fp8Linear
    from glmv.layers.quant.unpack import fp8_block

    gen = torch.Generator().manual_seed(2)
    out, in_ = shape
    weight = (torch.randn(shape, generator=gen) * 100).clamp(-448, 448).to(torch.float8_e4m3fn).to(DEVICE)
    scale_inv = (torch.rand(-(-out // 128), -(-in_ // 128), generator=gen) * 1e-4 + 1e-5).to(DEVICE)
    w = fp8_block(weight, scale_inv, 128)
    k = kernels()
    lin = Fp8Linear(w, None, k.fp8_weight_only, k.fp8_tensor_core, DTYPE)
    dense = w.dense(torch.float32)
    for rows in BATCHES:
        x = torch.randn(rows, in_, generator=gen).to(DEVICE, DTYPE)
        check(lin(x), x.float() @ dense.T)


def test_quantize_rows():
    from glmv.kernels.triton_fp8 import quantize_rows

    x = torch.randn(5, 3000, generator=torch.Generator().manual_seed(3)).to(DEVICE, DTYPE) * 7
    q, s = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (5, 1)
    torch.testing.assert_close(s.flatten(), x.float().abs().amax(dim=1) / 448)
    if ON_GPU:  # the interpreter's float->E4M3 cast mis-rounds at binade tops (127.6 -> -64); the GPU's does not
        check(q.float() * s, x.float(), 1 / 16)


@pytest.mark.parametrize("case", ["awq", "gptq-desc-act", "fp8-block", "online-fp8"])
def test_model_on_quantized_kernels_matches_dequantized(case, tiny_model_dir, tmp_path):
    """The tiny model with its decoder on these kernels (IntLinear / Fp8Linear, not dequantized at load) against
    the same weights dense: the CUDA path's wiring (fused parts, bias, act-order gather) end to end."""
    from glmv.config import ModelConfig
    from glmv.layers.quant.loaders import QuantLinearLoader
    from glmv.layers.quant.schemes import scheme_from_config
    from glmv.models.glm4v import Glm4vModel
    from tests.quant import test_awq_gptq as formats
    from tests.quant.packers import write_pair

    if case == "online-fp8":
        quant, quantization = tiny_model_dir, "fp8"
    else:
        config, pack = formats.CASES[case]
        quant, quantization = tmp_path / "q", None
        write_pair(tiny_model_dir, quant, tmp_path / "d", config, pack)
    cfg = ModelConfig.from_dir(quant)
    loader = QuantLinearLoader(scheme_from_config(cfg.raw, quantization), kernels())
    on_kernels = Glm4vModel.load(cfg, DEVICE, torch.float32, max_positions=256, load_vision=False,
                                 linear_loader=loader)
    linears = [lin for lw in on_kernels.w.layers for lin in lw.linears()]
    assert not any(type(lin).__name__ == "DenseLinear" for lin in linears)
    if ON_GPU:  # the decode matmul where its plan wins, and the gate/up laid out for its gating epilogue
        on_kernels.plan_gemv([1, 3, 5])
        assert all(lw.gate_up.gate_up_interleaved for lw in on_kernels.w.layers)
    dense = [lin.dequantized().float() for lin in linears]
    gen = torch.Generator().manual_seed(4)
    for rows in (1, 3, 5):
        for lin, w in zip(linears, dense, strict=True):
            x = torch.randn(rows, lin.in_features, generator=gen).to(DEVICE)
            bias = lin.bias.float() if lin.bias is not None else 0
            check(lin(x), x @ w.T + bias)
        if ON_GPU:
            from glmv.kernels.triton_swiglu import silu_mul_pairs

            layer = on_kernels.w.layers[0]
            x = torch.randn(rows, layer.gate_up.in_features, generator=gen).to(DEVICE)
            check(on_kernels.gate_up_act(x, layer.gate_up), silu_mul_pairs(x @ layer.gate_up.dequantized().float().T))
    if not ON_GPU:  # and the whole model's logits against the CPU loader's dequantized-at-load model
        from tests.quant.helpers import PROMPTS, load_model, prompt_logits

        reference = load_model(quant, quantization)
        for ids in PROMPTS:
            check(prompt_logits(on_kernels, ids), prompt_logits(reference, ids))
