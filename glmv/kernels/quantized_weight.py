"""QuantizedWeight: a quantized matmul weight in the layout glmv's decode matmul (triton_gemv.gemv_quantized)
reads, built once at load by its Linear. Plain Python (no Triton), so the layers can hold one on any device."""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8 = 1  # E4M3 bytes [N, K]; scales float32 [N] per channel, or [N, K / group] per block of K
INT = 2  # int32 words [K * bits / 32, N] (glmv.layers.quant.unpack.pack_k); scales, zeros float32 [K / group, N]


@dataclass(frozen=True)
class QuantizedWeight:
    """FP8: data uint8 [N, K] (E4M3 bits), scale [N], or [N, K / group] for block scales (group > 0).
    INT: data int32 words [K * bits / 32, N], scale and zeros [K / group, N] (value - zero, times scale)."""

    format: int
    data: torch.Tensor
    scale: torch.Tensor
    zeros: torch.Tensor | None
    n: int
    k: int
    bits: int
    group: int

    @classmethod
    def fp8(cls, weight: torch.Tensor, scale: torch.Tensor, block: int | None) -> QuantizedWeight:
        n, k = weight.shape
        return cls(FP8, weight.view(torch.uint8), scale, None, n, k, 8, block or 0)

    @classmethod
    def packed_int(cls, words: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
                   group: int) -> QuantizedWeight:
        return cls(INT, words, scales, zeros, words.shape[1], words.shape[0] * (32 // bits), bits, group)

    @property
    def tag(self) -> str:
        """The format in a plan's key: 'fp8', 'fp8-b128', 'int4-g128', ..."""
        if self.format == FP8:
            return f"fp8-b{self.group}" if self.group else "fp8"
        return f"int{self.bits}-g{self.group}"

    def fits(self, block_k: int, tma: bool = False, fma: bool = False, slices: bool = False,
             w8a8: bool = False) -> bool:
        """Whether K tiles of block_k sit inside this weight's scale groups (the kernel's assumption); an integer
        weight's tensor-core slices also need 16 words per tile (the dot's smallest K); W8A8 takes FP8 with
        per-channel scales only."""
        if tma:
            return False
        if w8a8:
            return self.format == FP8 and self.group == 0
        if self.format == INT:
            words = block_k // (32 // self.bits)
            return self.group % block_k == 0 and self.k % self.group == 0 and block_k % (32 // self.bits) == 0 \
                and (fma or not slices or words >= 16)
        return self.group == 0 or self.group % block_k == 0

    def interleaved_gate_up(self, interleave) -> QuantizedWeight:
        """This [gate; up] stack with its output channels interleaved by `interleave` (triton_swiglu's), for the
        SiLU-gating epilogue: rows of an FP8 weight and its scales, columns of packed words, scales and zeros."""
        if self.format == FP8:
            return QuantizedWeight(FP8, interleave(self.data), interleave(self.scale), None, self.n, self.k, 8,
                                   self.group)

        def cols(t: torch.Tensor) -> torch.Tensor:
            return interleave(t.t()).t().contiguous()

        return QuantizedWeight(INT, cols(self.data), cols(self.scale), cols(self.zeros), self.n, self.k, self.bits,
                               self.group)
