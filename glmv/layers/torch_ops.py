"""The PyTorch reference of every kernel a model calls: the formulas the Triton and C kernels must reproduce.

Each function has the signature of its fused twin (glmv.kernels.triton_fused, glmv.cpu.ops) and rounds where the
plain PyTorch layer rounds (RMSNorm in float32, scaled in the input dtype; rotary in the input dtype for the text
decoder, in float32 for the vision tower, as transformers does), so a model built with these kernels computes what
transformers computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glmv.layers.attention import write_kv


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in float32, scaled in the input dtype (transformers' Glm4vRMSNorm)."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """A pre-norm block's residual add and the next block's norm: (h, rms_norm(h)) with h = x + delta."""
    h = x + delta
    return h, rms_norm(h, weight, eps)


def residual_rms_norm(x: torch.Tensor, residual: torch.Tensor, post_weight: torch.Tensor, next_weight: torch.Tensor,
                      eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GLM-4's sub-layer exit and the next entry: h = residual + rms_norm(x, post); (h, rms_norm(h, next))."""
    hidden = residual + rms_norm(x, post_weight, eps)
    return hidden, rms_norm(hidden, next_weight, eps)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[rows, 2n] with gate then up stacked -> up * silu(gate) [rows, n]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return up * F.silu(gate)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, head_dim]; rotates interleaved pairs of the first 2*cos.shape[-1] dims, passes the rest."""
    rot = cos.shape[-1] * 2
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    rotated = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
    return torch.cat((rotated, x_pass), dim=-1)


def rotary_write_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                    k_out: torch.Tensor | None = None, v_out: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate q and k, store rotated k and v at their slots, return rotated q (k_out / v_out also receive them)."""
    q_rot = apply_rotary(q, cos, sin)
    k_rot = apply_rotary(k, cos, sin)
    write_kv(k_rot, v, k_cache, v_cache, slot_mapping)
    if k_out is not None:
        k_out.copy_(k_rot)
    if v_out is not None:
        v_out.copy_(v)
    return q_rot


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The vision tower's rotary over the whole head (rotate_half), in float32: x [T, heads, D], cos/sin [T, D]."""
    xf = x.float()
    return (xf * cos.unsqueeze(1) + _rotate_half(xf) * sin.unsqueeze(1)).to(x.dtype)


def rotary_half_pair(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    return rotary_half(q, cos, sin), rotary_half(k, cos, sin)


def mrope_cos_sin(positions: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor,
                  row_of_freq: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [3, T] -> cos, sin [T, rot/2]: frequency j takes its angle from position row row_of_freq[j]."""
    rows = positions[row_of_freq].t()  # [T, rot/2]
    freq_index = torch.arange(row_of_freq.shape[0], device=positions.device)
    return cos_table[rows, freq_index].to(dtype), sin_table[rows, freq_index].to(dtype)


def decode_step_inputs(ids: torch.Tensor, src: torch.Tensor, prev: torch.Tensor, table: torch.Tensor,
                       lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A decode batch's input embeddings (each row's token is prev[src] where src >= 0, else ids) and int32 lens."""
    tokens = torch.where(src >= 0, prev[src.clamp(min=0)], ids)
    return F.embedding(tokens, table), lens.to(torch.int32)


def argmax(logits: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """logits [rows, N] -> int64 [rows] (written into `out` if given)."""
    if out is None:
        return torch.argmax(logits, dim=-1)
    return torch.argmax(logits, dim=-1, out=out)
