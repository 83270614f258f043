"""AutoAWQ's and GPTQModel's checkpoint packing, reproduced as their code lays it out (neither installs here: both
need CUDA to build), to write test checkpoints of the tiny model that glmv's readers must unpack.

- AWQ: casper-hansen/AutoAWQ awq/quantize/quantizer.py (pseudo_quantize_tensor: min/max per group of 128,
  zero = -round(min/scale)) and awq/modules/linear/gemm.py (WQLinear_GEMM.from_linear: intweight
  [in, out], eight columns per int32 in the order 0,2,4,6,1,3,5,7; qzeros the same; scales [in/group, out] fp16).
- GPTQ: ModelCloud/GPTQModel gptqmodel/quantization/quantizer.py (sym zero (maxq+1)/2, asym zero
  round(-min/scale)) and gptqmodel/nn_modules/qlinear/__init__.py (PackableQuantLinear.pack: intweight [in, out],
  32/bits consecutive input rows per int32 word, lowest first; qzeros packed the same way along the output dim;
  v1 checkpoints store zero - 1; g_idx int32 per input channel, perm_inv // group with desc_act).
The loops below follow those functions step by step (written for clarity, not speed; the tiny model is small).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DECODER_LINEAR = re.compile(r"^model\.language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate_up|down)_proj)$")
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def awq_quantize(w: torch.Tensor, group: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pseudo_quantize_tensor with zero_point: -> int weight [out, in], zeros [out, groups], fp16 scales."""
    out, in_ = w.shape
    g = w.float().reshape(-1, group)
    max_val, min_val = g.amax(dim=1, keepdim=True), g.amin(dim=1, keepdim=True)
    scales = ((max_val - min_val).clamp(min=1e-5) / 15).half().float()
    zeros = (-torch.round(min_val / scales)).clamp(0, 15)
    q = torch.clamp(torch.round(g / scales) + zeros, 0, 15)
    return q.reshape(out, in_).int(), zeros.reshape(out, -1).int(), scales.reshape(out, -1)


def awq_pack(intweight: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor) -> dict[str, torch.Tensor]:
    """WQLinear_GEMM.from_linear's packing of [out, in] ints, [out, groups] zeros and scales."""
    iw = intweight.t().contiguous()  # [in, out]
    out = iw.shape[1]
    qweight = torch.zeros((iw.shape[0], out // 8), dtype=torch.int32)
    for col in range(out // 8):
        for i in range(8):
            qweight[:, col] |= iw[:, col * 8 + AWQ_ORDER[i]] << (i * 4)
    z = zeros.t().contiguous()  # [groups, out]
    qzeros = torch.zeros((z.shape[0], out // 8), dtype=torch.int32)
    for col in range(out // 8):
        for i in range(8):
            qzeros[:, col] |= z[:, col * 8 + AWQ_ORDER[i]] << (i * 4)
    return {"qweight": qweight, "qzeros": qzeros, "scales": scales.t().contiguous().half()}


def gptq_quantize(w: torch.Tensor, bits: int, sym: bool, group: int, perm: torch.Tensor | None):
    """Per-group min/max quantization in GPTQ's processing order (`perm`: act order) -> int weight [out, in],
    zeros and scales [out, groups] (fp16), g_idx [in]."""
    out, in_ = w.shape
    maxq = (1 << bits) - 1
    order = perm if perm is not None else torch.arange(in_)
    g_idx = torch.empty(in_, dtype=torch.int32)
    g_idx[order] = (torch.arange(in_) // group).int()  # perm_inv // group
    scales = torch.empty(out, in_ // group)
    zeros = torch.empty(out, in_ // group)
    for gi in range(in_ // group):
        cols = w.float()[:, order[gi * group:(gi + 1) * group]]
        xmin, xmax = cols.amin(dim=1).clamp(max=0), cols.amax(dim=1).clamp(min=0)
        if sym:
            xmax = torch.maximum(xmin.abs(), xmax)
            xmin = -xmax
        scale = ((xmax - xmin).clamp(min=1e-5) / maxq).half().float()
        zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
        scales[:, gi], zeros[:, gi] = scale, zero
    s, z = scales[:, g_idx.long()], zeros[:, g_idx.long()]
    q = torch.clamp(torch.round(w.float() / s) + z, 0, maxq).int()
    return q, zeros.int(), scales, g_idx


def gptq_pack(intweight: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor, bits: int,
              v1: bool) -> dict[str, torch.Tensor]:
    """PackableQuantLinear.pack for 4 and 8 bits."""
    per = 32 // bits
    iw = intweight.t().contiguous()  # [in, out]
    qweight = torch.zeros((iw.shape[0] // per, iw.shape[1]), dtype=torch.int32)
    i = row = 0
    while row < qweight.shape[0]:
        for j in range(i, i + per):
            qweight[row] |= iw[j] << (bits * (j - i))
        i += per
        row += 1
    z = zeros.t().contiguous()  # [groups, out]
    if v1:
        z = z - 1
    qzeros = torch.zeros((z.shape[0], z.shape[1] // per), dtype=torch.int32)
    i = col = 0
    while col < qzeros.shape[1]:
        for j in range(i, i + per):
            qzeros[:, col] |= (z[:, j] & ((1 << bits) - 1)) << (bits * (j - i))
        i += per
        col += 1
    return {"qweight": qweight, "qzeros": qzeros, "scales": scales.t().contiguous().half(), "g_idx": g_idx}


def write_pair(src: Path, quant_dir: Path, dense_dir: Path, quantization_config: dict, pack_module) -> None:
    """Quantize every decoder linear of `src` with pack_module(name, weight) -> (tensors or None, dense weight);
    write the packed checkpoint and a float32 folder of the same dequantized weights."""
    tensors = load_file(str(src / "model.safetensors"))
    quant, dense = {}, {}
    for name, t in tensors.items():
        module = name[: -len(".weight")] if name.endswith(".weight") else None
        if module is not None and DECODER_LINEAR.match(module):
            packed, deq = pack_module(module, t)
            if packed is None:
                quant[name] = t
            else:
                quant.update({f"{module}.{k}": v for k, v in packed.items()})
            dense[name] = deq
        else:
            quant[name] = dense[name] = t
    for folder, ts, qc in ((quant_dir, quant, quantization_config), (dense_dir, dense, None)):
        folder.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in ts.items()}, str(folder / "model.safetensors"))
        for f in src.iterdir():
            if f.is_file() and f.suffix != ".safetensors":
                shutil.copy(f, folder / f.name)
        if qc is not None:
            cfg = json.loads((folder / "config.json").read_text())
            cfg["quantization_config"] = qc
            (folder / "config.json").write_text(json.dumps(cfg, indent=2))


def awq_module(module: str, w: torch.Tensor):
    q, z, s = awq_quantize(w)
    deq = ((q.float() - z.float().repeat_interleave(128, 1)) * s.repeat_interleave(128, 1))
    return awq_pack(q, z, s), deq


def gptq_module(bits_of, sym: bool, act_order: bool, v1: bool, seed: int = 0):
    """A pack_module for GPTQ: bits_of(module) -> 4, 8 or None (left dense, as gptqmodel's "-:" rules do)."""
    gen = torch.Generator().manual_seed(seed)

    def pack(module: str, w: torch.Tensor):
        bits = bits_of(module)
        if bits is None:
            return None, w.float()
        perm = torch.randperm(w.shape[1], generator=gen) if act_order else None
        q, z, s, g_idx = gptq_quantize(w, bits, sym, 128, perm)
        gi = g_idx.long()
        deq = (q.float() - z.float()[:, gi]) * s.half().float()[:, gi]
        return gptq_pack(q, z, s, g_idx, bits, v1), deq

    return pack


def fp8_block_module(module: str, w: torch.Tensor, block: int = 128):
    """Hugging Face fine-grained FP8 (transformers' quantizer_finegrained_fp8.py / integrations/finegrained_fp8.py,
    the layout of zai-org's FP8 releases): E4M3 weight, float32 `weight_scale_inv` [ceil(out/128), ceil(in/128)]
    = block absmax / 448, applied by multiplying."""
    out, in_ = w.shape
    wf = w.float()
    scale = torch.empty(-(-out // block), -(-in_ // block))
    q = torch.empty(out, in_, dtype=torch.float8_e4m3fn)
    deq = torch.empty(out, in_)
    for bi in range(scale.shape[0]):
        for bj in range(scale.shape[1]):
            tile = wf[bi * block:(bi + 1) * block, bj * block:(bj + 1) * block]
            s = tile.abs().amax().clamp(min=1e-12) / 448.0
            qt = (tile / s).clamp(-448, 448).to(torch.float8_e4m3fn)
            scale[bi, bj] = s
            q[bi * block:(bi + 1) * block, bj * block:(bj + 1) * block] = qt
            deq[bi * block:(bi + 1) * block, bj * block:(bj + 1) * block] = qt.float() * s
    return {"weight": q, "weight_scale_inv": scale}, deq
