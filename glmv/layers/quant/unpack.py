"""Each on-disk quantized layout turned into one canonical form: unsigned integers [out, in] with per-group scales
and zero points, or FP8 with its scales; and that form dequantized to a dense weight.

The layouts are other projects' (read from their writers, cited per function); glmv never writes AWQ or GPTQ
itself, so tests/quant reproduces those writers' packing and checks these readers against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# AutoAWQ packs eight 4-bit columns into one int32 in this order: nibble i holds column AWQ_ORDER[i] of its eight
# (casper-hansen/AutoAWQ awq/modules/linear/gemm.py, WQLinear_GEMM.from_linear). Reading back, column j is at
# nibble AWQ_NIBBLE_OF_COLUMN[j].
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_NIBBLE_OF_COLUMN = tuple(AWQ_ORDER.index(j) for j in range(8))
FP8_MAX = 448.0  # the largest finite float8_e4m3fn


@dataclass
class IntWeight:
    """W[o, i] = (q[o, i] - zeros[o, g_idx[i]]) * scales[o, g_idx[i]]; q and zeros unsigned, `bits` wide."""

    q: torch.Tensor  # uint8 [out, in]
    scales: torch.Tensor  # float32 [out, groups]
    zeros: torch.Tensor  # float32 [out, groups]
    g_idx: torch.Tensor  # int64 [in]: the group of each input channel
    bits: int
    group_size: int

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        s = self.scales[:, self.g_idx]
        return ((self.q.float() - self.zeros[:, self.g_idx]) * s).to(dtype)

    @property
    def act_ordered(self) -> bool:
        """Whether the groups are not runs of consecutive input channels (GPTQ desc_act)."""
        plain = torch.arange(self.q.shape[1], device=self.g_idx.device) // self.group_size
        return not torch.equal(self.g_idx, plain)


def cat_int(parts: list[IntWeight]) -> IntWeight:
    """Stack layers along the output dim (q/k/v, gate/up); they must share bits, groups and channel order."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    for p in parts[1:]:
        if p.bits != first.bits or p.group_size != first.group_size or not torch.equal(p.g_idx, first.g_idx):
            raise ValueError("layers fused into one matmul (q/k/v or gate/up) are quantized differently (bits, "
                             "group size or act-order); glmv fuses only identically quantized parts")
    return IntWeight(torch.cat([p.q for p in parts]), torch.cat([p.scales for p in parts]),
                     torch.cat([p.zeros for p in parts]), first.g_idx, first.bits, first.group_size)


def _unpack_rows(words: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [R, C] -> [R * 32/bits, C]: value j of word r is row r*(32/bits) + j, at bits j*bits."""
    per = 32 // bits
    shifts = torch.arange(per, device=words.device, dtype=torch.int32) * bits
    vals = (words[:, None, :] >> shifts[None, :, None]) & ((1 << bits) - 1)
    return vals.reshape(words.shape[0] * per, words.shape[1])


def _unpack_cols(words: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [R, C] -> [R, C * 32/bits]: value j of word c is column c*(32/bits) + j."""
    return _unpack_rows(words.t().contiguous(), bits).t()


def awq_gemm(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> IntWeight:
    """AutoAWQ GEMM: qweight [in, out/8], qzeros [in/group, out/8] (AWQ nibble order), scales [in/group, out]."""
    nib = torch.tensor(AWQ_NIBBLE_OF_COLUMN, device=qweight.device)

    def unpack(words: torch.Tensor) -> torch.Tensor:
        shifts = torch.arange(8, device=words.device, dtype=torch.int32) * 4
        vals = (words[:, :, None] >> shifts) & 0xF  # [R, C, nibble]
        return vals[:, :, nib].reshape(words.shape[0], words.shape[1] * 8)

    q = unpack(qweight).t()  # [out, in]
    zeros = unpack(qzeros).t().float()  # [out, groups]
    g_idx = torch.arange(q.shape[1], device=q.device) // group_size
    return IntWeight(q.to(torch.uint8).contiguous(), scales.t().float().contiguous(), zeros.contiguous(), g_idx,
                     4, group_size)


def gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor | None, bits: int,
         group_size: int, zero_offset: int) -> IntWeight:
    """GPTQ (ModelCloud/GPTQModel gptqmodel/nn_modules/qlinear/__init__.py, PackableQuantLinear.pack):
    qweight [in*bits/32, out] packed down the input dim, qzeros [groups, out*bits/32] packed along the output dim,
    scales [groups, out], g_idx [in]. v1 checkpoints store each zero minus one (zero_offset 1)."""
    q = _unpack_rows(qweight, bits).t()  # [out, in]
    # v1's "zero - 1" wraps a zero of 0 to all ones; adding one back modulo 2^bits restores it (gptqmodel's v1->v2)
    zeros = ((_unpack_cols(qzeros, bits) + zero_offset) & ((1 << bits) - 1)).float()  # [groups, out]
    if g_idx is None:
        g_idx = torch.arange(q.shape[1], device=q.device) // group_size
    return IntWeight(q.to(torch.uint8).contiguous(), scales.t().float().contiguous(), zeros.t().contiguous(),
                     g_idx.long(), bits, group_size)


def compressed_pack(weight_packed: torch.Tensor, weight_scale: torch.Tensor, weight_zero_point: torch.Tensor | None,
                    weight_shape: torch.Tensor, bits: int, group_size: int) -> IntWeight:
    """compressed-tensors pack-quantized (compressed_tensors/compressors/pack_quantized/helpers.py): signed values
    plus 2^(bits-1), packed along the input dim; asymmetric zero points the same way but packed down the output
    dim; scales [out, groups]."""
    out, in_ = (int(v) for v in weight_shape.tolist())
    offset = 1 << (bits - 1)
    q = _unpack_cols(weight_packed, bits)[:, :in_]
    groups = weight_scale.shape[1]
    if weight_zero_point is None:
        zeros = torch.full((out, groups), float(offset), device=q.device)
    else:
        zeros = _unpack_rows(weight_zero_point, bits)[:out].float()  # stored unsigned: signed zero + offset
    g_idx = torch.arange(in_, device=q.device) // group_size
    return IntWeight(q.to(torch.uint8).contiguous(), weight_scale.float().contiguous(), zeros.contiguous(), g_idx,
                     bits, group_size)


@dataclass
class Fp8Weight:
    """E4M3 weight [out, in] and float32 scales: [out] per channel, or [out, ceil(in/B)] per row and B-wide block
    of input channels (`block` = B; block-scaled checkpoints store one scale per B x B tile, repeated per row at
    read so that fused parts of any row count stack)."""

    weight: torch.Tensor
    scale: torch.Tensor
    block: int | None = None

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        w = self.weight.float()
        if self.block is None:
            return (w * self.scale[:, None]).to(dtype)
        return (w * self.scale.repeat_interleave(self.block, 1)[:, : w.shape[1]]).to(dtype)


def fp8_block(weight: torch.Tensor, scale_inv: torch.Tensor, block: int) -> Fp8Weight:
    """Hugging Face fine-grained FP8: `weight_scale_inv` [ceil(out/B), ceil(in/B)] multiplies its B x B tile."""
    out, in_ = weight.shape
    if tuple(scale_inv.shape) != (-(-out // block), -(-in_ // block)):
        raise ValueError(f"an FP8 weight {tuple(weight.shape)} with {block}x{block} blocks has scales "
                         f"{tuple(scale_inv.shape)}")
    return Fp8Weight(weight, scale_inv.float().repeat_interleave(block, 0)[:out].contiguous(), block)


def fp8_channel(weight: torch.Tensor, scale: torch.Tensor) -> Fp8Weight:
    """compressed-tensors float-quantized: weight_scale [out, 1] (channel) or one value (tensor)."""
    out = weight.shape[0]
    s = scale.float().reshape(-1)
    s = s.expand(out).contiguous() if s.numel() == 1 else s
    if s.numel() != out:
        raise ValueError(f"an FP8 weight of {out} rows has {s.numel()} scales")
    return Fp8Weight(weight, s)


def cat_fp8(parts: list[Fp8Weight]) -> Fp8Weight:
    if len(parts) == 1:
        return parts[0]
    if len({p.block for p in parts}) != 1:
        raise ValueError("fused FP8 parts (q/k/v or gate/up) mix block and channel scales")
    return Fp8Weight(torch.cat([p.weight for p in parts]), torch.cat([p.scale for p in parts]), parts[0].block)


def quantize_fp8_rows(weight: torch.Tensor) -> Fp8Weight:
    """Online FP8: E4M3 with one scale per output channel (its absmax maps to 448). The scale is rounded to bf16,
    the dtype llm-compressor stores it in, so a checkpoint glmv writes dequantizes to the same bf16 weights in every
    reader (compressed-tensors computes in the scale's dtype)."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / FP8_MAX).clamp(min=1e-12).to(torch.bfloat16).float()
    q = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return Fp8Weight(q, scale)


def pack_k(q: torch.Tensor, bits: int) -> torch.Tensor:
    """The W4A16 kernel's layout: uint [out, in] -> int32 [in*bits/32, out], value j of a word is input row
    word*(32/bits) + j (the kernel reads a [BLOCK_K, BLOCK_N] tile from BLOCK_K*bits/32 rows of words)."""
    per = 32 // bits
    out, in_ = q.shape
    v = q.t().to(torch.int32).reshape(in_ // per, per, out)
    shifts = torch.arange(per, device=q.device, dtype=torch.int32) * bits
    return (v << shifts[None, :, None]).sum(dim=1, dtype=torch.int32)
