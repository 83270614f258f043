"""Triton paged-attention kernels against a float64 gather-and-softmax reference, on fresh random data.

GPU tests: they run on a CUDA machine (`PYTHONPATH=. python3 -m pytest tests/gpu`), or on the CPU through Triton's
interpreter with `TRITON_INTERPRET=1` (small shapes; slow but exact). CI has neither and skips them; Triton is only
imported inside the tests, so collection works where it is not installed.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.gpu.where import DEVICE, GPU_TEST_MARKS, ON_GPU
from tests.gpu.where import TRITON as kernels

pytestmark = GPU_TEST_MARKS
# bf16 operands land between 1e-3 and 1e-2 of relative error; float32 through the interpreter is exact to rounding.
DTYPES = [torch.bfloat16, torch.float16] if ON_GPU else [torch.float32, torch.bfloat16]
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 3e-3, torch.float32: 1e-5}

if kernels.interpreting():
    torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------------------------
# references (float64 gather + softmax); glmv/layers/attention.py holds the engine's own torch versions
# ---------------------------------------------------------------------------------------------------------------------


def gather_kv(cache: torch.Tensor, table_row: torch.Tensor, length: int) -> torch.Tensor:
    """[length, kv_heads, head_dim] float64: a sequence's cached tokens in order."""
    block_size = cache.shape[1]
    blocks = table_row[: math.ceil(length / block_size)].long().cpu()
    return cache.cpu()[blocks].reshape(-1, cache.shape[2], cache.shape[3])[:length].double()


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, scale: float) -> torch.Tensor:
    """q [n, heads, d] at KV positions q_pos attend causally to k/v [L, kv_heads, d]; float64 in and out."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("nhd,lhd->hnl", q, k) * scale
    visible = torch.arange(k.shape[0])[None, :] <= q_pos[:, None]
    scores = scores.masked_fill(~visible[None], float("-inf"))
    return torch.einsum("hnl,lhd->nhd", torch.softmax(scores, dim=-1), v)


def reference_decode(q, k_cache, v_cache, block_tables, seq_lens, scale) -> torch.Tensor:
    out = torch.zeros(q.shape, dtype=torch.float64)
    for s, length in enumerate(seq_lens.tolist()):
        if length == 0:
            continue
        k = gather_kv(k_cache, block_tables[s], length)
        v = gather_kv(v_cache, block_tables[s], length)
        out[s] = attend(q[s : s + 1].cpu().double(), k, v, torch.tensor([length - 1]), scale)[0]
    return out


def reference_prefill(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale) -> torch.Tensor:
    out = torch.zeros(q.shape, dtype=torch.float64)
    cu = cu_seqlens_q.tolist()
    for s, length in enumerate(seq_lens.tolist()):
        q_len = cu[s + 1] - cu[s]
        k = gather_kv(k_cache, block_tables[s], length)
        v = gather_kv(v_cache, block_tables[s], length)
        q_pos = torch.arange(length - q_len, length)
        out[cu[s] : cu[s + 1]] = attend(q[cu[s] : cu[s + 1]].cpu().double(), k, v, q_pos, scale)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# random paged inputs
# ---------------------------------------------------------------------------------------------------------------------


def make_cache(num_blocks, block_size, kv_heads, head_dim, dtype, gen):
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k = torch.randn(shape, generator=gen).to(dtype).to(DEVICE)
    v = torch.randn(shape, generator=gen).to(dtype).to(DEVICE)
    return k, v


def scatter_block_tables(seq_lens, block_size, gen, spare_blocks=3, spare_columns=2):
    """Non-contiguous tables: each sequence's blocks are a random draw from a shuffled pool; unused entries hold an
    out-of-range id, so a kernel that reads past a sequence's last page faults or mixes in garbage."""
    needed = [math.ceil(n / block_size) for n in seq_lens]
    num_blocks = sum(needed) + spare_blocks
    pool = torch.randperm(num_blocks, generator=gen).tolist()
    width = max(max(needed), 1) + spare_columns
    tables = torch.full((len(seq_lens), width), 1 << 28, dtype=torch.int32)
    cursor = 0
    for s, n in enumerate(needed):
        tables[s, :n] = torch.tensor(pool[cursor : cursor + n], dtype=torch.int32)
        cursor += n
    return tables.to(DEVICE), num_blocks


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.cpu().double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def assert_close_per_row(out: torch.Tensor, ref: torch.Tensor, rows: list[slice], dtype: torch.dtype) -> None:
    assert torch.isfinite(out).all(), "non-finite values in the kernel's output"
    for r in rows:
        err = relative_error(out[r], ref[r])
        assert err < TOLERANCE[dtype], f"rows {r}: relative error {err:.2e} over {TOLERANCE[dtype]:.0e}"


# ---------------------------------------------------------------------------------------------------------------------
# write_kv
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_write_kv_puts_each_token_at_its_slot_and_skips_negative_slots(dtype):
    gen = torch.Generator().manual_seed(1)
    num_blocks, block_size, kv_heads, head_dim = 7, 16, 2, 32
    k_cache, v_cache = make_cache(num_blocks, block_size, kv_heads, head_dim, dtype, gen)
    k_before, v_before = k_cache.clone(), v_cache.clone()
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:40]
    slots[[3, 17]] = -1  # padding tokens
    k = torch.randn(40, kv_heads, head_dim, generator=gen).to(dtype).to(DEVICE)
    v = torch.randn(40, kv_heads, head_dim, generator=gen).to(dtype).to(DEVICE)

    kernels.write_kv(k, v, k_cache, v_cache, slots.to(DEVICE))

    keep = slots >= 0
    expected_k = k_before.view(-1, kv_heads, head_dim).clone()
    expected_v = v_before.view(-1, kv_heads, head_dim).clone()
    expected_k[slots[keep].to(DEVICE)] = k[keep.to(DEVICE)]
    expected_v[slots[keep].to(DEVICE)] = v[keep.to(DEVICE)]
    assert torch.equal(k_cache.view(-1, kv_heads, head_dim), expected_k)
    assert torch.equal(v_cache.view(-1, kv_heads, head_dim), expected_v)


def test_write_kv_accepts_strided_inputs_from_a_fused_qkv_projection():
    gen = torch.Generator().manual_seed(2)
    heads, kv_heads, head_dim, tokens = 4, 2, 32, 9
    k_cache, v_cache = make_cache(3, 16, kv_heads, head_dim, torch.float32 if not ON_GPU else torch.bfloat16, gen)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, generator=gen).to(k_cache.dtype).to(DEVICE)
    _, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    k = k.view(tokens, kv_heads, head_dim)  # non-contiguous rows
    v = v.view(tokens, kv_heads, head_dim)
    slots = torch.arange(5, 5 + tokens, device=DEVICE)
    kernels.write_kv(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache.view(-1, kv_heads, head_dim)[5 : 5 + tokens], k)
    assert torch.equal(v_cache.view(-1, kv_heads, head_dim)[5 : 5 + tokens], v)


# ---------------------------------------------------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------------------------------------------------

TINY = dict(heads=4, kv_heads=2, head_dim=32)
REAL = dict(heads=32, kv_heads=2, head_dim=128)

DECODE_CASES = [
    # (dims, block_size, seq_lens, num_splits: None = the heuristic)
    (TINY, 16, [1, 17, 40, 5], None),
    (TINY, 16, [33, 70, 16, 2], 3),  # splits, some of them empty for the short sequences
    (TINY, 8, [100, 9], 7),
    (dict(heads=6, kv_heads=2, head_dim=48), 16, [30, 64], 2),  # group 3, head_dim not a power of two
    (dict(heads=2, kv_heads=2, head_dim=32), 16, [25, 3], None),  # no grouping
    # a large batch takes the wider KV tile (DecodeTuning.kv_tile): lengths across several tiles, split and not
    (TINY, 16, [1 + (37 * i) % 300 for i in range(64)], None),
    (TINY, 16, [1 + (53 * i) % 300 for i in range(64)], 1),
]
if ON_GPU:
    DECODE_CASES += [
        (REAL, 16, [1, 512, 1000, 4097, 77, 2048], None),
        (REAL, 16, [3000, 15, 64000], None),  # a long context against short ones
        (REAL, 16, [513] * 64, None),
        (REAL, 32, [700, 1], 5),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims,block_size,seq_lens,num_splits", DECODE_CASES)
def test_decode_matches_reference(dims, block_size, seq_lens, num_splits, dtype):
    gen = torch.Generator().manual_seed(hash((block_size, tuple(seq_lens), num_splits)) % 2**31)
    heads, kv_heads, head_dim = dims["heads"], dims["kv_heads"], dims["head_dim"]
    tables, num_blocks = scatter_block_tables(seq_lens, block_size, gen)
    k_cache, v_cache = make_cache(num_blocks, block_size, kv_heads, head_dim, dtype, gen)
    q = torch.randn(len(seq_lens), heads, head_dim, generator=gen).to(dtype).to(DEVICE)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    scale = head_dim**-0.5

    out = kernels.paged_decode_attention(q, k_cache, v_cache, tables, lens, scale, num_splits=num_splits)

    ref = reference_decode(q, k_cache, v_cache, tables, lens, scale)
    assert out.shape == q.shape and out.dtype == dtype
    assert_close_per_row(out, ref, [slice(s, s + 1) for s in range(len(seq_lens))], dtype)


def test_decode_more_splits_than_tokens_and_padding_sequences():
    """Graph-padded batches carry sequences of length 0: they get zeros, and the others are unaffected."""
    gen = torch.Generator().manual_seed(5)
    dtype = DTYPES[0]
    seq_lens = [0, 3, 0, 20]
    tables, num_blocks = scatter_block_tables(seq_lens, 16, gen)
    k_cache, v_cache = make_cache(num_blocks, 16, 2, 32, dtype, gen)
    q = torch.randn(4, 4, 32, generator=gen).to(dtype).to(DEVICE)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    for splits in (1, 8):
        out = kernels.paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.2, num_splits=splits)
        assert torch.equal(out[0].float().cpu(), torch.zeros(4, 32))
        assert torch.equal(out[2].float().cpu(), torch.zeros(4, 32))
        ref = reference_decode(q, k_cache, v_cache, tables, lens, 0.2)
        assert_close_per_row(out, ref, [slice(1, 2), slice(3, 4)], dtype)


def test_decode_split_count_depends_on_shapes_only():
    from glmv.kernels.triton_attention import decode_num_splits

    device = torch.device(DEVICE)
    assert decode_num_splits(1, 2, 64 * 1024, device) > 1  # one sequence still fills the chip
    assert decode_num_splits(256, 2, 64 * 1024, device) == 1  # a full batch already does
    assert decode_num_splits(1, 2, 16, device) == 1  # too short to be worth a merge


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a CUDA device")
def test_decode_replays_in_a_cuda_graph_with_new_lengths_and_tables():
    gen = torch.Generator().manual_seed(6)
    dtype = torch.bfloat16
    batch, block_size, width = 8, 16, 64
    num_blocks = batch * width
    k_cache, v_cache = make_cache(num_blocks, block_size, 2, 128, dtype, gen)
    q = torch.randn(batch, 32, 128, generator=gen).to(dtype).to(DEVICE)
    tables = torch.randperm(num_blocks, generator=gen).view(batch, width).to(torch.int32).to(DEVICE)
    lens = torch.full((batch,), 100, dtype=torch.int32, device=DEVICE)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        kernels.paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.1)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernels.paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.1)

    for _trial in range(3):
        new_lens = torch.randint(0, width * block_size + 1, (batch,), generator=gen, dtype=torch.int32)
        lens.copy_(new_lens.to(DEVICE))
        tables.copy_(torch.randperm(num_blocks, generator=gen).view(batch, width).to(torch.int32).to(DEVICE))
        q.copy_(torch.randn(batch, 32, 128, generator=gen).to(dtype).to(DEVICE))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        ref = reference_decode(q, k_cache, v_cache, tables, lens, 0.1)
        nonzero = [slice(s, s + 1) for s in range(batch) if new_lens[s] > 0]
        assert_close_per_row(out, ref, nonzero, dtype)


# ---------------------------------------------------------------------------------------------------------------------
# prefill
# ---------------------------------------------------------------------------------------------------------------------

PREFILL_CASES = [
    # (dims, block_size, [(context already cached, new query tokens), ...])
    (TINY, 16, [(0, 37), (50, 13), (0, 1), (100, 1), (16, 16), (3, 70)]),
    (TINY, 8, [(0, 130)]),  # more than one query tile
    (dict(heads=6, kv_heads=2, head_dim=48), 16, [(20, 30), (0, 9)]),
]
if ON_GPU:
    PREFILL_CASES += [
        (REAL, 16, [(0, 1024), (0, 333), (4000, 200), (17, 1)]),
        (REAL, 16, [(3072, 1024), (0, 2000)]),  # chunked prefill after a long context
        (REAL, 32, [(100, 129), (0, 64), (1, 127)]),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims,block_size,chunks", PREFILL_CASES)
def test_prefill_matches_reference(dims, block_size, chunks, dtype):
    gen = torch.Generator().manual_seed(hash((block_size, tuple(chunks))) % 2**31)
    heads, kv_heads, head_dim = dims["heads"], dims["kv_heads"], dims["head_dim"]
    seq_lens = [context + new for context, new in chunks]
    q_lens = [new for _, new in chunks]
    tables, num_blocks = scatter_block_tables(seq_lens, block_size, gen)
    k_cache, v_cache = make_cache(num_blocks, block_size, kv_heads, head_dim, dtype, gen)
    cu = torch.tensor([0] + q_lens, dtype=torch.int32).cumsum(0).to(torch.int32)
    q = torch.randn(int(cu[-1]), heads, head_dim, generator=gen).to(dtype).to(DEVICE)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    scale = head_dim**-0.5

    out = kernels.paged_prefill_attention(q, k_cache, v_cache, tables, cu.to(DEVICE), lens, scale, max(q_lens))

    ref = reference_prefill(q, k_cache, v_cache, tables, cu, lens, scale)
    assert out.shape == q.shape and out.dtype == dtype
    rows = [slice(int(cu[s]), int(cu[s + 1])) for s in range(len(chunks))]
    assert_close_per_row(out, ref, rows, dtype)


def test_write_then_prefill_then_decode_equals_one_full_prefill():
    """The engine's road: write a prompt's KV, prefill it in two chunks, then decode one token; each result equals
    the corresponding rows of a single prefill over the whole sequence."""
    gen = torch.Generator().manual_seed(9)
    dtype = DTYPES[0]
    heads, kv_heads, head_dim, block_size, total = 4, 2, 32, 16, 45
    tables, num_blocks = scatter_block_tables([total], block_size, gen)
    k_cache, v_cache = make_cache(num_blocks, block_size, kv_heads, head_dim, dtype, gen)
    q = torch.randn(total, heads, head_dim, generator=gen).to(dtype).to(DEVICE)
    k = torch.randn(total, kv_heads, head_dim, generator=gen).to(dtype).to(DEVICE)
    v = torch.randn(total, kv_heads, head_dim, generator=gen).to(dtype).to(DEVICE)
    positions = torch.arange(total, device=DEVICE)
    slots = tables[0, positions // block_size].long() * block_size + positions % block_size
    kernels.write_kv(k, v, k_cache, v_cache, slots)

    def prefill(lo, hi):
        cu = torch.tensor([0, hi - lo], dtype=torch.int32, device=DEVICE)
        lens = torch.tensor([hi], dtype=torch.int32, device=DEVICE)
        return kernels.paged_prefill_attention(q[lo:hi], k_cache, v_cache, tables, cu, lens, 0.17, hi - lo)

    whole = prefill(0, total)
    chunked = torch.cat([prefill(0, 20), prefill(20, total - 1)])
    lens = torch.tensor([total], dtype=torch.int32, device=DEVICE)
    last = kernels.paged_decode_attention(q[total - 1 :], k_cache, v_cache, tables, lens, 0.17, num_splits=2)
    tol = TOLERANCE[dtype]
    assert relative_error(chunked, whole[: total - 1].cpu().double()) < tol
    assert relative_error(last, whole[total - 1 :].cpu().double()) < tol


# ---------------------------------------------------------------------------------------------------------------------
# the layers' torch reference computes the same function, and the kernel choice picks these kernels on CUDA
# ---------------------------------------------------------------------------------------------------------------------


def test_engine_reference_agrees_with_the_kernels():
    from glmv.layers import attention

    gen = torch.Generator().manual_seed(11)
    dtype = DTYPES[0]
    chunks = [(0, 21), (30, 5), (7, 1)]
    seq_lens = [c + n for c, n in chunks]
    tables, num_blocks = scatter_block_tables(seq_lens, 16, gen, spare_columns=0)
    tables = torch.where(tables >= num_blocks, 0, tables)  # the contract: entries past a sequence's blocks are 0
    k_cache, v_cache = make_cache(num_blocks, 16, 2, 32, dtype, gen)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    cu = torch.tensor([0, 21, 26, 27], dtype=torch.int32, device=DEVICE)
    q = torch.randn(27, 4, 32, generator=gen).to(dtype).to(DEVICE)
    ours = kernels.paged_prefill_attention(q, k_cache, v_cache, tables, cu, lens, 0.2, 21)
    theirs = attention.paged_prefill_attention(q, k_cache, v_cache, tables, cu, lens, 0.2, 21)
    assert relative_error(ours, theirs.cpu().double()) < 2 * TOLERANCE[dtype]
    qd = torch.randn(3, 4, 32, generator=gen).to(dtype).to(DEVICE)
    ours = kernels.paged_decode_attention(qd, k_cache, v_cache, tables, lens, 0.2)
    theirs = attention.paged_decode_attention(qd, k_cache, v_cache, tables, lens, 0.2)
    assert relative_error(ours, theirs.cpu().double()) < 2 * TOLERANCE[dtype]


@pytest.mark.skipif(not ON_GPU, reason="the engine picks Triton kernels on CUDA devices only")
def test_engine_selects_the_triton_kernels_on_cuda():
    from glmv.layers.kernels import select_kernels
    from glmv.options import KernelOptions

    chosen = select_kernels("cuda", torch.bfloat16, KernelOptions())
    assert chosen.paged_decode_attention is kernels.paged_decode_attention, chosen.name
    assert chosen.paged_prefill_attention is kernels.paged_prefill_attention, chosen.name
    assert chosen.write_kv is kernels.write_kv, chosen.name
    assert chosen.rms_norm is kernels.rms_norm and chosen.argmax is kernels.argmax, chosen.name
    forced = select_kernels("cuda", torch.bfloat16, KernelOptions(attention="torch"))
    assert forced.name == "torch" and forced.gemv is None
