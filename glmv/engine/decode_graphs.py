"""DecodeGraphs: decode-only steps from persistent, statically shaped inputs, replayed as CUDA graphs.

One int64 device buffer holds a decode batch's per-row inputs (row 0 token ids, rows 1-3 the t/h/w positions, row 4
KV slots, row 5 sequence lengths, row 6: for a row whose token the previous step sampled and has not handed back
yet, its row there, else -1) and one int32 buffer the block tables. Each step fills pinned host twins in O(batch)
Python (a block-table row is rewritten only where its sequence changed or grew) and copies them over
asynchronously; inside the graph, pending ids are gathered from `prev_tokens`. Batches are padded to a bucket size;
padding rows use the null KV block.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from glmv.engine.pending import PendingStep, pending_source
from glmv.engine.scheduler import ScheduledRequest
from glmv.layers.attention import NULL_BLOCK, AttentionMetadata
from glmv.models.glm4v import Glm4vModel

log = logging.getLogger("glmv.runner")

META_IDS, META_POS, META_SLOTS, META_LENS, META_SRC = 0, 1, 4, 5, 6


@dataclass
class HostDecodeBuffers:
    """Pinned host twins of the decode buffers. The runner alternates between two so that filling the next step's
    inputs never races the copy of a step still queued on the device (at most two steps are in flight)."""

    meta: torch.Tensor  # int64 [7, n]: ids, t/h/w positions, slots, lengths, source row of a pending id (-1: none)
    tables: torch.Tensor  # int32 [n, max_blocks]
    np_meta: np.ndarray
    np_tables: np.ndarray
    row_blocks: list  # the block_ids list each table row was filled from
    row_filled: list  # how many of its entries are written


def decode_buckets(max_num_seqs: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, max_num_seqs + 1, 8))
    return sorted({min(s, max_num_seqs) for s in sizes} | {max_num_seqs})


class DecodeGraphs:
    def __init__(self, model: Glm4vModel, kv_caches: list[tuple[torch.Tensor, ...]], max_num_seqs: int,
                 block_size: int, max_blocks_per_seq: int):
        self.model = model
        self.kv_caches = kv_caches
        self.device = dev = model.device
        self.block_size = block_size
        self.buckets = decode_buckets(max_num_seqs)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph | None, torch.Tensor | None]] = {}
        self.gemv_report: list = []  # (shape key, cuBLAS us, best us, config) from plan_gemv at capture time
        n = self.buckets[-1]
        pin = dev.type == "cuda"
        self.buf_meta = torch.zeros(7, n, dtype=torch.long, device=dev)
        self.buf_block_tables = torch.full((n, max_blocks_per_seq), NULL_BLOCK, dtype=torch.int32, device=dev)
        self.prev_tokens = torch.zeros(n, dtype=torch.long, device=dev)
        self.hosts: list[HostDecodeBuffers] = []
        for _ in range(2):
            meta = torch.zeros(7, n, dtype=torch.long, pin_memory=pin)
            tables = torch.full((n, max_blocks_per_seq), NULL_BLOCK, dtype=torch.int32, pin_memory=pin)
            self.hosts.append(HostDecodeBuffers(meta, tables, meta.numpy(), tables.numpy(), [None] * n, [0] * n))
        self._parity = 0
        self.reset(n)

    @property
    def worthwhile(self) -> bool:
        """Graphs pay off once decode attention reads only each sequence's blocks (a native kernel); the PyTorch
        reference decode reads the full static block-table width."""
        return self.model.kernels.native_decode_attention

    def takes(self, batch: int) -> bool:
        """Whether a decode-only step of `batch` rows runs here."""
        return bool(self.graphs) and batch <= self.buckets[-1]

    def use_static(self, batch_sizes: list[int] | None = None) -> None:
        """Run decode-only steps from the persistent buffers without CUDA graphs (any device): the same bookkeeping
        the graphs use, so CPU tests can check it."""
        self.reset(self.buckets[-1])
        for size in batch_sizes or self.buckets:
            self.graphs[size] = (None, None)
        self.buckets = sorted(self.graphs)

    def reset(self, rows: int) -> None:
        for h in self.hosts:
            meta = h.np_meta
            meta[:, :rows] = 0
            meta[META_SLOTS, :rows] = NULL_BLOCK * self.block_size
            meta[META_LENS, :rows] = 1
            meta[META_SRC, :rows] = -1
            h.np_tables[:rows] = NULL_BLOCK
            h.row_blocks[:rows] = [None] * rows
            h.row_filled[:rows] = [0] * rows
        self.buf_meta.copy_(self.hosts[0].meta)
        self.buf_block_tables.copy_(self.hosts[0].tables)

    def static_decode(self, batch: int) -> torch.Tensor:
        """The decode step over the first `batch` rows of the persistent buffers (what a CUDA graph records)."""
        meta = self.buf_meta
        src, ids, lens = meta[META_SRC, :batch], meta[META_IDS, :batch], meta[META_LENS, :batch]
        embeds, lens32 = self.model.kernels.decode_step_inputs(ids, src, self.prev_tokens, self.model.w.embed, lens)
        attn = AttentionMetadata(slot_mapping=meta[META_SLOTS, :batch], num_prefill_tokens=0,
                                 decode_block_tables=self.buf_block_tables[:batch], decode_seq_lens=lens32)
        hidden = self.model.forward(embeds, meta[META_POS:META_POS + 3, :batch], self.kv_caches, attn)
        # Every row's argmax goes into the buffer the next step reads pending ids from (after this step read its
        # own): a greedy batch then needs no kernel outside the graph but the copy of its tokens to the host.
        return self.model.raw_logits(hidden, greedy_out=self.prev_tokens[:batch])

    @torch.inference_mode()
    def capture(self, batch_sizes: list[int] | None = None) -> list[int]:
        """Plan the decode matmuls, then record one CUDA graph per bucket (largest first, sharing one memory pool).
        Returns the sizes."""
        if self.device.type != "cuda":
            return []
        sizes = sorted(batch_sizes or self.buckets, reverse=True)
        if self.model.kernels.plan_gemv is not None:
            report: list = []
            used = self.model.plan_gemv(sizes, report)
            self.gemv_report = report
            log.info("Triton GEMV used for %d (shape, batch) pairs: %s", used, report)
        pool = torch.cuda.graph_pool_handle()
        self.reset(self.buckets[-1])
        for size in sizes:
            for _ in range(2):  # warm up kernels and workspaces outside the capture
                self.static_decode(size)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self.static_decode(size)
            self.graphs[size] = (graph, out)
        torch.cuda.synchronize(self.device)
        self.buckets = sorted(self.graphs)
        log.info("captured decode CUDA graphs for batch sizes %s", self.buckets)
        return self.buckets

    def run(self, decodes: list[ScheduledRequest], prev: PendingStep | None, prev_rows: dict[int, int]) -> torch.Tensor:
        """Fill the inputs of these decode rows and replay the graph of their bucket; the logits of the real rows."""
        batch = len(decodes)
        bucket = next(b for b in self.buckets if b >= batch)
        bs = self.block_size
        host = self.hosts[self._parity]
        self._parity ^= 1
        meta, tables = host.np_meta, host.np_tables
        ids, slots, lens, src = meta[META_IDS], meta[META_SLOTS], meta[META_LENS], meta[META_SRC]
        pos_t, pos_h, pos_w = meta[META_POS], meta[META_POS + 1], meta[META_POS + 2]
        row_blocks, row_filled = host.row_blocks, host.row_filled
        any_pending = False
        for i, e in enumerate(decodes):
            req, p = e.request, e.start
            if p < len(req.token_ids):
                ids[i] = req.token_ids[p]
                src[i] = -1
            else:  # sampled by the step still in flight: the graph reads it from prev_tokens
                ids[i] = 0
                src[i] = pending_source(req, p, prev_rows)
                any_pending = True
            if req.mrope_positions is not None and p < req.num_prompt_tokens:
                t, h, w = req.mrope_positions[:, p].tolist()
            else:
                t = h = w = p + req.rope_delta
            pos_t[i], pos_h[i], pos_w[i] = t, h, w
            blocks = req.block_ids
            slots[i] = blocks[p // bs] * bs + p % bs
            lens[i] = p + 1
            n = len(blocks)
            if row_blocks[i] is not blocks:  # another sequence (or a new block list) in this row: write it whole
                tables[i, :n] = blocks
                row_blocks[i], row_filled[i] = blocks, n
            elif row_filled[i] != n:  # the same sequence grew: write its new blocks only
                tables[i, row_filled[i]:n] = blocks[row_filled[i]:n]
                row_filled[i] = n
        if bucket > batch:  # padding rows: null token, null slot, length 1 (their stale table rows are valid ids)
            meta[:, batch:bucket] = 0
            slots[batch:bucket] = NULL_BLOCK * bs
            lens[batch:bucket] = 1
            src[batch:bucket] = -1
        self.buf_meta.copy_(host.meta, non_blocking=True)
        self.buf_block_tables[:bucket].copy_(host.tables[:bucket], non_blocking=True)
        if any_pending:
            tokens = prev.sample.tokens
            if tokens.data_ptr() != self.prev_tokens.data_ptr():  # else the previous graph wrote them there
                self.prev_tokens[:tokens.shape[0]].copy_(tokens)
        graph, out = self.graphs[bucket]
        if graph is None:  # static decode without a graph (CPU tests of the buffer bookkeeping)
            return self.static_decode(bucket)[:batch]
        graph.replay()
        return out[:batch]
