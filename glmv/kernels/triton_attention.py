"""Triton kernels for paged attention: KV writes, GQA decode with split-K, and varlen causal prefill.

Same signatures as the torch reference versions in glmv/layers/attention.py, so the model runner can swap them in
when `glmv.kernels.available()` says so. Layouts (shared with the engine):

- KV cache per layer: ``k_cache``/``v_cache`` of shape ``[num_blocks, block_size, num_kv_heads, head_dim]``; a token's
  slot is ``block * block_size + offset``. Only the last dim must be contiguous: strides are passed to the kernels.
- GQA: query head ``h`` reads KV head ``h // (num_heads // num_kv_heads)`` (the layout of HF's ``repeat_kv``).

Why these kernels and not SDPA over a gathered cache: decoding reads every cached byte once per step, and the
gather copies it twice more first; here each program reads its KV head's pages straight from the pool, for all the
query heads that share that KV head (16 for GLM-4.1V-9B), so K and V cross memory once. Long contexts are cut into
splits (flash-decoding) so that even batch 1 puts work on every multiprocessor; a second tiny kernel merges the
splits by their log-sum-exp. The decode grid depends on shapes only and nothing reads the device from the host, so
a CUDA graph can capture it; sequence lengths are read inside the kernels.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from glmv.kernels.pdl import launch_options, pdl_start

_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class DecodeTuning:
    """Launch shape of the decode kernel: from launch-shape sweeps on an H100 and then an H200
    (bench/probe_decode_attention.py; the H200's figures in bench/README.md, "Decode attention on the H200")."""

    block_n: int = 64  # KV tokens per inner step (several pages at block_size 16)
    # From this many sequences on, each program reads a long stretch of context (few or no splits), and a wider KV
    # tile reads it faster (H200, ctx 640 / 4,096: 1.04-1.06x at batch 64, 1.20-1.32x at 128). Fewer sequences
    # split the context finely, and a wide tile would mostly load masked keys.
    large_batch: int = 64
    large_batch_block_n: int = 128
    num_warps: int = 4
    num_stages: int = 3
    programs_per_sm: int = 2  # split the context until batch * kv_heads * splits reaches this many programs per SM
    # Never split finer than this: the merge costs more than it saves. On the H200 at batch 1 (graph-wide tables,
    # 8,192 tokens) every fastest shape split at 256 (32 splits, not 64): ctx 640, 7.5 -> 4.5 us a layer (with a
    # 32-token tile and two stages); ctx 4,096, 7.9 -> 7.0 us (two stages).
    min_tokens_per_split: int = 256
    max_splits: int = 64

    def kv_tile(self, batch: int) -> int:
        """KV tokens per inner step for a decode of `batch` sequences."""
        return self.large_batch_block_n if batch >= self.large_batch else self.block_n


@dataclass(frozen=True)
class PrefillTuning:
    """Launch shape of the prefill kernel; defaults chosen from a launch-shape sweep on an H100 (bench/notes/gpu_engine.md)."""

    block_m: int = 128  # query rows per program
    block_n: int = 64  # KV tokens per inner step
    num_warps: int = 8
    num_stages: int = 3


DEFAULT_DECODE_TUNING = DecodeTuning()
DEFAULT_PREFILL_TUNING = PrefillTuning()


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.lru_cache(maxsize=8)
def _multiprocessor_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # interpreter runs on the CPU: pretend to be an H100 so the split logic is exercised
    return torch.cuda.get_device_properties(device).multi_processor_count


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 caches (tests, CPU parity) want full float32 products, not tf32.
    return "ieee" if dtype == torch.float32 else "tf32"


def _upcast_dot(dtype: torch.dtype) -> bool:
    # Triton's CPU interpreter multiplies 16-bit float blocks wrongly (seen with triton 3.8): there, do the products
    # in float32 so the tests still check everything else the kernels do with 16-bit data.
    return dtype != torch.float32 and os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _mma(a, b, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    if UPCAST_DOT:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(a, b, input_precision=DOT_PRECISION)
    return c


# Which scores _attend_kv_range hides (see there).
MASK_NONE = tl.constexpr(0)
MASK_PAST_LIMIT = tl.constexpr(1)
MASK_CAUSAL = tl.constexpr(2)


@triton.jit
def _attend_kv_range(
    acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, table_row, kv_head, q_pos,
    n_lo, n_hi, limit, qk_scale,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    offs_d, d_mask,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """Online softmax of q's rows over the paged keys [n_lo, n_hi) of one KV head, folded into (acc, m_i, l_i).

    Keys at or past `limit` are never loaded. MASK says which scores are hidden: MASK_NONE for ranges of whole
    tiles inside the context, MASK_PAST_LIMIT for a range whose last tile runs past `limit` (a decode split),
    MASK_CAUSAL for the diagonal band, where row i sees keys up to its position q_pos[i]."""
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < limit
        block = tl.load(table_row + offs_n // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
        in_block = offs_n % BLOCK_SIZE
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(
            k_cache_ptr + block[:, None] * stride_kb + in_block[:, None] * stride_ks + kv_head * stride_kh
            + offs_d[None, :],
            mask=kv_mask, other=0.0,
        )  # fmt: skip
        s = _mma(q, tl.trans(k), DOT_PRECISION, UPCAST_DOT) * qk_scale
        if MASK == MASK_CAUSAL:
            s = tl.where((offs_n[None, :] <= q_pos[:, None]) & n_mask[None, :], s, float("-inf"))
        elif MASK == MASK_PAST_LIMIT:
            s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_cache_ptr + block[:, None] * stride_vb + in_block[:, None] * stride_vs + kv_head * stride_vh
            + offs_d[None, :],
            mask=kv_mask, other=0.0,
        )  # fmt: skip
        acc = acc * alpha[:, None] + _mma(p.to(v.dtype), v, DOT_PRECISION, UPCAST_DOT)
        m_i = m_new
    return acc, m_i, l_i


def _check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"k_cache and v_cache must both be [num_blocks, block_size, kv_heads, head_dim]; got "
            f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("the KV cache's head_dim must be contiguous (stride 1)")


# ---------------------------------------------------------------------------------------------------------------------
# write_kv
# ---------------------------------------------------------------------------------------------------------------------


@triton.jit
def _write_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcb, stride_kcs, stride_kch,
    stride_vcb, stride_vcs, stride_vch,
    KV_HEADS: tl.constexpr, KV_HEADS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    pdl_start(USE_PDL)
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    offs_h = tl.arange(0, KV_HEADS_PAD)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    mask = (offs_h[:, None] < KV_HEADS) & (offs_d[None, :] < HEAD_DIM) & (slot >= 0)
    src = offs_h[:, None] * stride_kh + offs_d[None, :]
    k = tl.load(k_ptr + token * stride_kt + src, mask=mask)
    dst = block * stride_kcb + offset * stride_kcs + offs_h[:, None] * stride_kch + offs_d[None, :]
    tl.store(k_cache_ptr + dst, k, mask=mask)
    src = offs_h[:, None] * stride_vh + offs_d[None, :]
    v = tl.load(v_ptr + token * stride_vt + src, mask=mask)
    dst = block * stride_vcb + offset * stride_vcs + offs_h[:, None] * stride_vch + offs_d[None, :]
    tl.store(v_cache_ptr + dst, v, mask=mask)


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store each token's K and V ([num_tokens, kv_heads, head_dim]) at its slot; a negative slot is skipped.

    Skipping negative slots lets a CUDA-graph batch carry padding tokens without a branch on the host.
    """
    _check_cache(k_cache, v_cache)
    num_tokens, kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("k and v must have a contiguous head_dim")
    _write_kv_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        KV_HEADS=kv_heads, KV_HEADS_PAD=_next_pow2(kv_heads),
        HEAD_DIM=head_dim, HEAD_DIM_PAD=_next_pow2(head_dim),
        BLOCK_SIZE=k_cache.shape[1],
        num_warps=1 if kv_heads * head_dim <= 512 else 4, **launch_options(),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# decode: one query token per sequence
# ---------------------------------------------------------------------------------------------------------------------


@triton.jit
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr,
    out_ptr, part_out_ptr, part_lse_ptr,
    qk_scale, num_splits,
    stride_qb, stride_qh, stride_ob, stride_oh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_bt,
    stride_pb, stride_ph, stride_ps,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    SINGLE_SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """One program = one sequence x one KV head x one slice of its context, for all GROUP query heads at once."""
    pdl_start(USE_PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    seq_len = tl.load(seq_lens_ptr + seq)
    # Splits cut the real length, not the table's capacity: a short sequence in a wide (graph-sized) table still
    # spreads over all splits, and the splits past its end do nothing.
    per_split = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, seq_len)

    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    heads = kv_head * GROUP + offs_g
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD_DIM
    q = tl.load(
        q_ptr + seq * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
        mask=g_mask[:, None] & d_mask[None, :],
        other=0.0,
    )

    m_i = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM_PAD], dtype=tl.float32)
    table_row = block_tables_ptr + seq * stride_bt
    acc, m_i, l_i = _attend_kv_range(
        acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, table_row, kv_head, offs_g,
        start, end, end, qk_scale,
        stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
        offs_d, d_mask,
        BLOCK_SIZE, BLOCK_N, MASK_PAST_LIMIT, DOT_PRECISION, UPCAST_DOT,
    )  # fmt: skip

    has_keys = l_i > 0.0  # false for an empty split, or a padding sequence of length 0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    store_mask = g_mask[:, None] & d_mask[None, :]
    if SINGLE_SPLIT:
        tl.store(
            out_ptr + seq * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=store_mask,
        )
    else:
        part = seq * stride_pb + heads * stride_ph + split * stride_ps
        tl.store(part_out_ptr + part[:, None] * HEAD_DIM_PAD + offs_d[None, :], out, mask=store_mask)
        lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        tl.store(part_lse_ptr + part, lse, mask=g_mask)


@triton.jit
def _decode_merge_kernel(
    out_ptr, part_out_ptr, part_lse_ptr, num_splits,
    stride_ob, stride_oh, stride_pb, stride_ph, stride_ps,
    SPLITS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """Merge one (sequence, head)'s split results, weighting each by its share of the softmax mass."""
    pdl_start(USE_PDL)
    seq = tl.program_id(0)
    head = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    s_mask = offs_s < num_splits
    part = seq * stride_pb + head * stride_ph + offs_s * stride_ps
    lse = tl.load(part_lse_ptr + part, mask=s_mask, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m)
    denom = tl.sum(w, 0)
    o = tl.load(
        part_out_ptr + part[:, None] * HEAD_DIM_PAD + offs_d[None, :],
        mask=s_mask[:, None] & (offs_d[None, :] < HEAD_DIM),
        other=0.0,
    )
    out = tl.sum(o * w[:, None], 0) / tl.where(denom > 0.0, denom, 1.0)
    tl.store(
        out_ptr + seq * stride_ob + head * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty), mask=offs_d < HEAD_DIM
    )


def decode_num_splits(
    batch: int, kv_heads: int, max_kv_len: int, device: torch.device, tuning: DecodeTuning = DEFAULT_DECODE_TUNING
) -> int:
    """How many context slices per (sequence, KV head): from shapes only, so a captured graph stays valid. No
    split once one program per (sequence, KV head) already fills ~90% of the slots (programs_per_sm per SM):
    splitting then only adds the merge (H100, batch 128 at context 640: 37 us against 45 with two splits)."""
    programs = max(1, batch * kv_heads)
    slots = tuning.programs_per_sm * _multiprocessor_count(device)
    if programs >= 0.9 * slots:
        return 1
    wanted = math.ceil(slots / programs)
    by_length = max(1, math.ceil(max_kv_len / tuning.min_tokens_per_split))
    return max(1, min(wanted, by_length, tuning.max_splits))


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    num_splits: int | None = None,
    tuning: DecodeTuning = DEFAULT_DECODE_TUNING,
) -> torch.Tensor:
    """Attention of one new query token per sequence over its paged KV (the new token's K/V already written).

    q: [batch, heads, head_dim]; block_tables: int32 [batch, max_blocks]; seq_lens: int32 [batch], the KV length
    including the new token. A sequence of length 0 (graph padding) gets zeros. Returns [batch, heads, head_dim].
    """
    _check_cache(k_cache, v_cache)
    batch, heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    if heads % kv_heads != 0:
        raise ValueError(f"query heads ({heads}) must be a multiple of KV heads ({kv_heads})")
    if q.stride(-1) != 1:
        q = q.contiguous()
    group = heads // kv_heads
    out = torch.empty_like(q)
    if batch == 0:
        return out
    if num_splits is None:
        num_splits = decode_num_splits(batch, kv_heads, block_tables.shape[1] * block_size, q.device, tuning)
    head_dim_pad = _next_pow2(head_dim)
    single = num_splits == 1
    if single:
        part_out = part_lse = out  # unused by the kernel
        part_strides = (0, 0, 0)
    else:
        part_out = torch.empty(batch, heads, num_splits, head_dim_pad, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(batch, heads, num_splits, dtype=torch.float32, device=q.device)
        part_strides = (heads * num_splits, num_splits, 1)
    _decode_split_kernel[(batch, kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens,
        out, part_out, part_lse,
        scale * _LOG2E, num_splits,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        *part_strides,
        GROUP=group, GROUP_PAD=max(16, _next_pow2(group)),
        HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad,
        BLOCK_SIZE=block_size, BLOCK_N=tuning.kv_tile(batch),
        SINGLE_SPLIT=single, DOT_PRECISION=_dot_precision(q.dtype), UPCAST_DOT=_upcast_dot(q.dtype),
        num_warps=tuning.num_warps, num_stages=tuning.num_stages, **launch_options(),
    )  # fmt: skip
    if not single:
        _decode_merge_kernel[(batch, heads)](
            out, part_out, part_lse, num_splits,
            out.stride(0), out.stride(1), *part_strides,
            SPLITS_PAD=_next_pow2(num_splits), HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad,
            num_warps=1 if head_dim_pad * _next_pow2(num_splits) <= 4096 else 4, **launch_options(),
        )  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------------------------------
# prefill: many query tokens per sequence (chunked prefill included)
# ---------------------------------------------------------------------------------------------------------------------


@triton.jit
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, cu_seqlens_q_ptr, seq_lens_ptr, out_ptr,
    qk_scale,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_bt,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """One program = BLOCK_M query rows of one head of one sequence; heads vary fastest so that the GROUP heads
    reading the same KV head run side by side and share it through L2."""
    pdl_start(USE_PDL)
    head = tl.program_id(0)
    tile = tl.num_programs(1) - 1 - tl.program_id(1)  # the longest (last, most keys) tiles start first: shorter tail
    seq = tl.program_id(2)
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    m0 = tile * BLOCK_M
    if m0 >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context = seq_len - q_len  # tokens cached before this chunk: query i sits at KV position context + i
    kv_head = head // GROUP

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    m_mask = offs_m < q_len
    d_mask = offs_d < HEAD_DIM
    rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(
        q_ptr + rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
        mask=m_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    q_pos = context + offs_m

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    table_row = block_tables_ptr + seq * stride_bt
    # Keys below the tile's first position are visible to every row: no mask there. Then the diagonal band.
    full_end = ((context + m0) // BLOCK_N) * BLOCK_N
    band_end = tl.minimum(seq_len, context + m0 + BLOCK_M)
    acc, m_i, l_i = _attend_kv_range(
        acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, table_row, kv_head, q_pos,
        0, full_end, seq_len, qk_scale,
        stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
        offs_d, d_mask,
        BLOCK_SIZE, BLOCK_N, MASK_NONE, DOT_PRECISION, UPCAST_DOT,
    )  # fmt: skip
    acc, m_i, l_i = _attend_kv_range(
        acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, table_row, kv_head, q_pos,
        full_end, band_end, seq_len, qk_scale,
        stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
        offs_d, d_mask,
        BLOCK_SIZE, BLOCK_N, MASK_CAUSAL, DOT_PRECISION, UPCAST_DOT,
    )  # fmt: skip
    out = acc / l_i[:, None]
    tl.store(
        out_ptr + rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=m_mask[:, None] & d_mask[None, :],
    )


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    max_seqlen_q: int,
    *,
    tuning: PrefillTuning = DEFAULT_PREFILL_TUNING,
) -> torch.Tensor:
    """Causal attention of a packed batch of query chunks over their paged KV (the chunks' K/V already written).

    q: [total_q, heads, head_dim], sequence s owning rows cu_seqlens_q[s]:cu_seqlens_q[s+1]; seq_lens[s] is its KV
    length including the chunk, so query i of s sits at KV position seq_lens[s] - q_len_s + i and sees keys up to it.
    max_seqlen_q (a host int) sizes the grid. Returns [total_q, heads, head_dim].
    """
    _check_cache(k_cache, v_cache)
    total_q, heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    if heads % kv_heads != 0:
        raise ValueError(f"query heads ({heads}) must be a multiple of KV heads ({kv_heads})")
    if q.stride(-1) != 1:
        q = q.contiguous()
    out = torch.empty_like(q)
    batch = seq_lens.shape[0]
    if total_q == 0 or batch == 0 or max_seqlen_q <= 0:
        return out
    block_m = min(tuning.block_m, max(16, _next_pow2(max_seqlen_q)))
    grid = (heads, triton.cdiv(max_seqlen_q, block_m), batch)
    _prefill_kernel[grid](
        q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, out,
        scale * _LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        GROUP=heads // kv_heads, HEAD_DIM=head_dim, HEAD_DIM_PAD=_next_pow2(head_dim),
        BLOCK_SIZE=block_size, BLOCK_M=block_m, BLOCK_N=tuning.block_n,
        DOT_PRECISION=_dot_precision(q.dtype), UPCAST_DOT=_upcast_dot(q.dtype),
        num_warps=tuning.num_warps if block_m >= 64 else 4, num_stages=tuning.num_stages, **launch_options(),
    )  # fmt: skip
    return out
