"""Paged attention: the contract every attention kernel implements, its PyTorch reference, and the batch metadata.

The KV cache of one layer is two tensors `k_cache`, `v_cache` of shape [num_blocks, block_size, num_kv_heads, head_dim]
in the model dtype. A token's slot is `block_id * block_size + offset`. Block 0 is never handed to a sequence: it is the
null block that padded rows of a static decode batch (CUDA graphs) write to and read from, so every slot and block id a
backend sees is valid and no kernel needs a bounds check.

The three functions (signatures are stable; glmv/kernels/ implements the same names for CUDA with Triton):

    write_kv(k, v, k_cache, v_cache, slot_mapping) -> None
        k, v: [num_tokens, num_kv_heads, head_dim]; slot_mapping: int64 [num_tokens].
        Stores token i's K/V at slot slot_mapping[i] (in place).

    paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale) -> out
        q: [B, num_heads, head_dim], one query per sequence; block_tables: int32 [B, max_blocks] (entries past a
        sequence's last block are 0); seq_lens: int32 [B], the KV length including the new token (already written).
        The query attends to kv positions 0 .. seq_lens[b]-1. out: [B, num_heads, head_dim] in q's dtype.
        GQA: query head h reads kv head h // (num_heads // num_kv_heads).

    paged_prefill_attention(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale, max_seqlen_q) -> out
        q: [total_q, num_heads, head_dim], the queries of S sequences packed back to back; cu_seqlens_q: int32 [S+1];
        seq_lens: int32 [S], each sequence's KV length after this chunk was written; block_tables: int32 [S, max_blocks].
        Causal: query i of sequence s sits at kv position seq_lens[s] - q_len_s + i and attends to kv positions
        0 .. that position (earlier chunks and cached prefixes included). out: [total_q, num_heads, head_dim].

These are the PyTorch references. glmv.kernels.triton_attention implements the same three for CUDA and glmv.cpu.ops
decode attention for the CPU; glmv.layers.kernels chooses among them once per model (`select_kernels`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NULL_BLOCK = 0


def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Store K/V of new tokens into their cache slots (PyTorch reference)."""
    num_blocks, block_size, kv_heads, head_dim = k_cache.shape
    flat_k = k_cache.view(num_blocks * block_size, kv_heads, head_dim)
    flat_v = v_cache.view(num_blocks * block_size, kv_heads, head_dim)
    flat_k.index_copy_(0, slot_mapping, k)
    flat_v.index_copy_(0, slot_mapping, v)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                           seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """One query per sequence over its paged KV (PyTorch reference: gather the blocks, two batched matmuls).

    Static in shape (no host reads), so it can be captured in a CUDA graph; its cost grows with block_tables' width,
    so eager callers pass tables only as wide as the batch needs. Plain matmuls beat SDPA here: with one query row
    SDPA's CPU flash kernel is several times slower.
    """
    batch, max_blocks = block_tables.shape
    _, block_size, kv_heads, head_dim = k_cache.shape
    group = q.shape[1] // kv_heads
    span = max_blocks * block_size
    idx = block_tables.long()
    keys = k_cache[idx].view(batch, span, kv_heads, head_dim).permute(0, 2, 3, 1)  # [B, kvh, hd, S]
    values = v_cache[idx].view(batch, span, kv_heads, head_dim).transpose(1, 2)  # [B, kvh, S, hd]
    scores = torch.matmul(q.view(batch, kv_heads, group, head_dim), keys).float() * scale  # [B, kvh, g, S]
    valid = torch.arange(span, device=q.device).unsqueeze(0) < seq_lens.unsqueeze(1)
    scores = scores.masked_fill(~valid.view(batch, 1, 1, span), float("-inf"))
    probs = scores.softmax(dim=-1).to(values.dtype)
    return torch.matmul(probs, values).view(batch, kv_heads * group, head_dim)


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                            cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                            max_seqlen_q: int) -> torch.Tensor:
    """Causal attention for packed query chunks over their paged KV (PyTorch reference: one SDPA per sequence)."""
    _, block_size, kv_heads, head_dim = k_cache.shape
    heads = q.shape[1]
    out = torch.empty_like(q)
    starts = cu_seqlens_q.tolist()
    lens = seq_lens.tolist()
    for s, kv_len in enumerate(lens):
        q_start, q_end = starts[s], starts[s + 1]
        q_len = q_end - q_start
        if q_len == 0:
            continue
        num_blocks = -(-kv_len // block_size)
        blocks = block_tables[s, :num_blocks].long()
        keys = k_cache[blocks].view(-1, kv_heads, head_dim)[:kv_len].transpose(0, 1).unsqueeze(0)
        values = v_cache[blocks].view(-1, kv_heads, head_dim)[:kv_len].transpose(0, 1).unsqueeze(0)
        query = q[q_start:q_end].transpose(0, 1).unsqueeze(0)
        gqa = heads != kv_heads
        if q_len == kv_len:
            o = F.scaled_dot_product_attention(query, keys, values, is_causal=True, scale=scale, enable_gqa=gqa)
        else:
            offset = kv_len - q_len
            q_pos = torch.arange(q_len, device=q.device).unsqueeze(1) + offset
            mask = torch.arange(kv_len, device=q.device).unsqueeze(0) <= q_pos
            o = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale, enable_gqa=gqa)
        out[q_start:q_end] = o.squeeze(0).transpose(0, 1)
    return out


@dataclass
class AttentionMetadata:
    """Where a packed batch's tokens sit in the paged KV cache. Tokens are ordered prefill chunks first, then
    single-token decodes; the model runs the prefill part through paged_prefill_attention and the rest through
    paged_decode_attention. Index tensors live on the model's device."""

    slot_mapping: torch.Tensor  # int64 [num_tokens]
    num_prefill_tokens: int = 0
    prefill_block_tables: torch.Tensor | None = None  # int32 [num_prefills, max_blocks]
    prefill_cu_seqlens_q: torch.Tensor | None = None  # int32 [num_prefills + 1]
    prefill_seq_lens: torch.Tensor | None = None  # int32 [num_prefills]
    prefill_max_seqlen_q: int = 0
    # The prefill part is one sequence's chunk with no KV before it (a fresh prompt): attention may then run densely
    # over the chunk's own keys instead of reading them back from the pages.
    prefill_dense: bool = False
    decode_block_tables: torch.Tensor | None = None  # int32 [num_decodes, max_blocks]
    decode_seq_lens: torch.Tensor | None = None  # int32 [num_decodes]

    @property
    def num_tokens(self) -> int:
        return int(self.slot_mapping.shape[0])
