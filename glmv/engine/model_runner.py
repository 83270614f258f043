"""ModelRunner: turns a SchedulerOutput into one batched forward over the paged KV cache, then samples.

It owns the device side: the model, the KV cache tensors (sized from EngineConfig), the vision-embedding cache and
the sampler. Per step it packs prefill chunks first and single-token decodes after them, with their M-RoPE positions,
KV slots and block tables; runs the vision tower for media that the step's chunks reach and that are not cached;
scatters those embeddings into the input; runs the decoder; and samples from the last position of every sequence
that reaches the end of its known tokens.

Decode-only steps can run from persistent, statically shaped input buffers padded to a bucket size (padding rows
use the null KV block), which is what `capture_decode_graphs()` records as CUDA graphs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from glmv.config import EngineConfig, ModelConfig
from glmv.cpu.runtime import keep_freed_memory
from glmv.engine.observer import NO_OBSERVER, StepObserver
from glmv.engine.request import Request
from glmv.engine.sampler import PendingSample, Sampler, SamplerOutput
from glmv.engine.scheduler import ScheduledRequest, SchedulerOutput
from glmv.inputs.prompt import stage_pixels
from glmv.layers.attention import NULL_BLOCK, AttentionMetadata
from glmv.layers.kernels import select_kernels
from glmv.layers.quant import choose_linear_loader
from glmv.models.glm4v import Glm4vModel
from glmv.models.vision import VisionEmbeddingCache

log = logging.getLogger("glmv.runner")

CPU_DEFAULT_KV_BYTES = 2 << 30


@dataclass
class RunnerOutput:
    sampled: list[ScheduledRequest]  # the entries that produced a token, in row order
    result: SamplerOutput | None


@dataclass
class PendingStep:
    """A step whose device work is queued: `wait()` blocks (GIL released) until its sampled tokens are on the host.

    The next step may be launched before that: rows whose input is a token this step sampled read it on the device
    (`sample.tokens`, row `row_of[id(request)]`). Rows in `discard` were sampled for a continuation that turned out
    wrong (the engine forced other tokens after the previous one); their tokens are dropped."""

    sampled: list[ScheduledRequest]
    sample: PendingSample | None
    row_of: dict[int, int] = field(default_factory=dict)
    discard: set[int] = field(default_factory=set)

    def wait(self) -> RunnerOutput:
        return RunnerOutput(self.sampled, self.sample.result() if self.sample is not None else None)


@dataclass
class _HostDecodeBuffers:
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


class ModelRunner:
    def __init__(self, model_config: ModelConfig, engine_config: EngineConfig, max_model_len: int,
                 model: Glm4vModel | None = None):
        self.model_config = model_config
        self.config = engine_config
        self.device = torch.device(engine_config.resolved_device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = engine_config.torch_dtype
        self.max_model_len = max_model_len
        self.block_size = engine_config.block_size
        self.max_blocks_per_seq = -(-max_model_len // self.block_size)
        self.model = model or Glm4vModel.load(
            model_config, self.device, self.dtype, max_positions=max_model_len + 1,
            kernels=select_kernels(self.device, self.dtype, engine_config.kernels),
            linear_loader=choose_linear_loader(model_config.raw, engine_config.quantization, self.device))
        if self.device.type == "cpu":
            keep_freed_memory()
            packed = self.model.pack_cpu_weights()
            if packed:
                log.info("packed %d decoder weights for oneDNN (CPU %s matmuls)", packed, self.dtype)
        self.swiglu_report: list = []  # ((N, K, rows), cuBLAS us, fused us, config) from plan_swiglu
        if self.device.type == "cuda":  # before the KV cache takes the memory that timing the largest shapes needs
            with torch.inference_mode():
                used = self.model.plan_swiglu(engine_config.max_num_batched_tokens, self.swiglu_report)
            if self.swiglu_report:
                log.info("MLP gate/up with fused SiLU at %d (shape, rows) points: %s", used, self.swiglu_report)
        t = model_config.text
        self.bytes_per_block = t.num_layers * 2 * self.block_size * t.num_kv_heads * t.head_dim * \
            torch.empty((), dtype=self.dtype).element_size()
        self.num_blocks = self._plan_num_blocks()
        kv = torch.zeros(t.num_layers, 2, self.num_blocks, self.block_size, t.num_kv_heads, t.head_dim,
                         dtype=self.dtype, device=self.device)
        self.kv_caches = [(kv[i, 0], kv[i, 1]) for i in range(t.num_layers)]
        self.sampler = Sampler(t.vocab_size, self.device, model_config.eos_token_ids)
        self.vision_cache = VisionEmbeddingCache(engine_config.vision_cache_bytes)
        self._init_decode_buffers(engine_config.max_num_seqs)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph | None, torch.Tensor | None]] = {}
        self.vision_tokens_encoded = 0
        self.greedy_graph_steps = 0  # decode steps whose tokens were the graph's own argmax (no sampler kernels)
        self.gemv_report: list = []  # (shape key, cuBLAS us, best us, config) from plan_gemv at capture time
        self.observer: StepObserver = NO_OBSERVER  # set with the engine's (LLMEngine.observe)

    # ---- sizing ----
    def _plan_num_blocks(self) -> int:
        cfg = self.config
        per_seq = self.max_blocks_per_seq
        if cfg.kv_cache_memory is not None:
            budget = cfg.kv_cache_memory
        elif self.device.type == "cuda":
            budget = self._cuda_kv_budget()
        else:
            # CPU: 2 GiB, but no more than every sequence at full length needs and never less than one sequence.
            budget = min(CPU_DEFAULT_KV_BYTES, (cfg.max_num_seqs * per_seq + 1) * self.bytes_per_block)
            budget = max(budget, (per_seq + 1) * self.bytes_per_block)
        num_blocks = int(budget // self.bytes_per_block)
        if num_blocks - 1 < per_seq:
            raise ValueError(
                f"The KV cache has room for {max(num_blocks - 1, 0) * self.block_size} tokens, less than one sequence "
                f"of --max-model-len {self.max_model_len}. Lower --max-model-len or give the cache more memory "
                "(--kv-cache-memory BYTES or --gpu-memory-utilization)."
            )
        log.info("KV cache: %d blocks of %d tokens (%.2f GiB): %d tokens of context fit (--max-model-len %d)",
                 num_blocks, self.block_size, num_blocks * self.bytes_per_block / 2**30,
                 (num_blocks - 1) * self.block_size, self.max_model_len)
        return num_blocks

    def _cuda_kv_budget(self) -> int:
        """Free memory after the weights and one profiled worst-case step, within gpu_memory_utilization."""
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        self._profile_step()
        torch.cuda.synchronize(self.device)
        activations = torch.cuda.max_memory_allocated(self.device) - before
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        in_use = total - free
        reserve = 256 << 20  # CUDA graphs, allocator fragmentation
        budget = int(total * self.config.gpu_memory_utilization) - in_use - activations - reserve
        if self.config.max_gpu_memory is not None:  # a smaller card, simulated: what glmv's allocator holds counts
            held = torch.cuda.memory_reserved(self.device)  # weights and buffers (the CUDA context comes on top)
            budget = min(budget, self.config.max_gpu_memory - held - activations - reserve)
            log.info("--max-gpu-memory %.1f GiB: glmv holds %.2f GiB before its KV cache",
                     self.config.max_gpu_memory / 2**30, held / 2**30)
        log.info("GPU memory: total %.1f GiB, in use %.1f GiB, profiled step %.2f GiB -> KV budget %.1f GiB",
                 total / 2**30, in_use / 2**30, activations / 2**30, budget / 2**30)
        return max(budget, 0)

    @torch.inference_mode()
    def _profile_step(self) -> None:
        """One forward over max_num_batched_tokens prompt tokens plus sampling max_num_seqs rows, on a scratch cache."""
        t = self.model_config.text
        tokens = min(self.config.max_num_batched_tokens, self.max_model_len)
        blocks = -(-tokens // self.block_size) + 1
        scratch = torch.zeros(t.num_layers, 2, blocks, self.block_size, t.num_kv_heads, t.head_dim,
                              dtype=self.dtype, device=self.device)
        caches = [(scratch[i, 0], scratch[i, 1]) for i in range(t.num_layers)]
        ids = torch.zeros(tokens, dtype=torch.long, device=self.device)
        positions = torch.arange(tokens, device=self.device).expand(3, -1)
        meta = AttentionMetadata(
            slot_mapping=torch.arange(tokens, device=self.device) + self.block_size,
            num_prefill_tokens=tokens,
            prefill_block_tables=torch.arange(1, blocks, dtype=torch.int32, device=self.device).unsqueeze(0),
            prefill_cu_seqlens_q=torch.tensor([0, tokens], dtype=torch.int32, device=self.device),
            prefill_seq_lens=torch.tensor([tokens], dtype=torch.int32, device=self.device),
            prefill_max_seqlen_q=tokens,
            prefill_dense=True,
        )
        hidden = self.model.forward(self.model.embed(ids), positions, caches, meta)
        rows = min(self.config.max_num_seqs, tokens)
        logits = self.model.logits(hidden[:rows])
        (logits.softmax(-1) + logits.log_softmax(-1)).sort(dim=-1)
        del scratch, caches, hidden, logits

    # ---- persistent decode inputs (CUDA-graph friendly) ----
    # One int64 device buffer holds a decode batch's per-row inputs (row 0 token ids, rows 1-3 the t/h/w positions,
    # row 4 KV slots, row 5 sequence lengths, row 6: for a row whose token the previous step sampled and has not handed
    # back yet, its row there, else -1) and one int32 buffer the block tables. Each step fills pinned host twins in
    # O(batch) Python (a block-table row is rewritten only where its sequence changed or grew) and copies them over
    # asynchronously; inside the graph, pending ids are gathered from `buf_prev_tokens`.
    META_IDS, META_POS, META_SLOTS, META_LENS, META_SRC = 0, 1, 4, 5, 6

    def _init_decode_buffers(self, max_seqs: int) -> None:
        dev = self.device
        self.buckets = decode_buckets(max_seqs)
        n = self.buckets[-1]
        pin = dev.type == "cuda"
        self.buf_meta = torch.zeros(7, n, dtype=torch.long, device=dev)
        self.buf_block_tables = torch.full((n, self.max_blocks_per_seq), NULL_BLOCK, dtype=torch.int32, device=dev)
        self.buf_prev_tokens = torch.zeros(n, dtype=torch.long, device=dev)
        self._hosts: list[_HostDecodeBuffers] = []
        for _ in range(2):
            meta = torch.zeros(7, n, dtype=torch.long, pin_memory=pin)
            tables = torch.full((n, self.max_blocks_per_seq), NULL_BLOCK, dtype=torch.int32, pin_memory=pin)
            self._hosts.append(_HostDecodeBuffers(meta, tables, meta.numpy(), tables.numpy(), [None] * n, [0] * n))
        self._parity = 0
        self._reset_decode_buffers(n)

    def use_static_decode(self, batch_sizes: list[int] | None = None) -> None:
        """Run decode-only steps from the persistent buffers without CUDA graphs (any device): the same bookkeeping
        the graphs use, so CPU tests can check it."""
        self._reset_decode_buffers(self.buckets[-1])
        for size in batch_sizes or self.buckets:
            self.graphs[size] = (None, None)
        self.buckets = sorted(self.graphs)

    def _reset_decode_buffers(self, rows: int) -> None:
        for h in self._hosts:
            meta = h.np_meta
            meta[:, :rows] = 0
            meta[self.META_SLOTS, :rows] = NULL_BLOCK * self.block_size
            meta[self.META_LENS, :rows] = 1
            meta[self.META_SRC, :rows] = -1
            h.np_tables[:rows] = NULL_BLOCK
            h.row_blocks[:rows] = [None] * rows
            h.row_filled[:rows] = [0] * rows
        self.buf_meta.copy_(self._hosts[0].meta)
        self.buf_block_tables.copy_(self._hosts[0].tables)

    def _static_decode(self, batch: int) -> torch.Tensor:
        """The decode step over the first `batch` rows of the persistent buffers (what a CUDA graph records)."""
        meta = self.buf_meta
        src, ids, lens = meta[self.META_SRC, :batch], meta[self.META_IDS, :batch], meta[self.META_LENS, :batch]
        embeds, lens32 = self.model.kernels.decode_step_inputs(ids, src, self.buf_prev_tokens, self.model.w.embed, lens)
        attn = AttentionMetadata(slot_mapping=meta[self.META_SLOTS, :batch], num_prefill_tokens=0,
                                 decode_block_tables=self.buf_block_tables[:batch], decode_seq_lens=lens32)
        hidden = self.model.forward(embeds, meta[self.META_POS:self.META_POS + 3, :batch], self.kv_caches, attn)
        # Every row's argmax goes into the buffer the next step reads pending ids from (after this step read its
        # own): a greedy batch then needs no kernel outside the graph but the copy of its tokens to the host.
        return self.model.raw_logits(hidden, greedy_out=self.buf_prev_tokens[:batch])

    @property
    def graphs_worthwhile(self) -> bool:
        """Graphs pay off once decode attention reads only each sequence's blocks (a native kernel); the PyTorch
        reference decode reads the full static block-table width."""
        return self.model.kernels.native_decode_attention

    @torch.inference_mode()
    def capture_decode_graphs(self, batch_sizes: list[int] | None = None) -> list[int]:
        """Record one CUDA graph per decode bucket (largest first, sharing one memory pool). Returns the sizes."""
        if self.device.type != "cuda":
            return []
        sizes = sorted(batch_sizes or self.buckets, reverse=True)
        if self.model.kernels.plan_gemv is not None:
            report: list = []
            used = self.model.plan_gemv(sizes, report)
            self.gemv_report = report
            log.info("Triton GEMV used for %d (shape, batch) pairs: %s", used, report)
        pool = torch.cuda.graph_pool_handle()
        self._reset_decode_buffers(self.buckets[-1])
        for size in sizes:
            for _ in range(2):  # warm up kernels and workspaces outside the capture
                self._static_decode(size)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self._static_decode(size)
            self.graphs[size] = (graph, out)
        torch.cuda.synchronize(self.device)
        self.buckets = sorted(self.graphs)
        log.info("captured decode CUDA graphs for batch sizes %s", self.buckets)
        return self.buckets

    # ---- media ----
    def _encode_media(self, entries: list[ScheduledRequest]) -> None:
        """Vision embeddings for media the chunks reach: from the cache, else one batched encoder call."""
        pending: dict[str, list[tuple[Request, int]]] = {}
        for e in entries:
            req = e.request
            for j, item in enumerate(req.media):
                if j in req.mm_embeds or not item.overlaps(e.start, e.end):
                    continue
                emb = self.vision_cache.get(item.key)
                if emb is not None:
                    req.mm_embeds[j] = emb
                else:
                    pending.setdefault(item.key, []).append((req, j))
        if not pending:
            return
        if self.model.vision is None:
            raise ValueError("This engine was loaded without the vision tower; it cannot take images or video.")
        pixels, grids, owners = [], [], []
        for users in pending.values():
            req, j = users[0]
            item = req.media[j]
            mm = req.prompt.mm
            source = mm.pixel_values if item.kind == "image" else mm.pixel_values_videos
            pixels.append(source[item.patch_start:item.patch_end])
            grids.append(item.grid)
            owners.append(users)
        pixels = [self._upload(p) for p in pixels]  # no CPU-side concatenation
        embeds = self.model.vision.encode(pixels[0] if len(pixels) == 1 else torch.cat(pixels, dim=0), grids)
        sizes = [users[0][0].media[users[0][1]].num_tokens for users in owners]
        self.vision_tokens_encoded += sum(sizes)
        for users, emb in zip(owners, embeds.split(sizes, dim=0), strict=True):
            emb = emb.to(self.dtype)
            self.vision_cache.put(users[0][0].media[users[0][1]].key, emb)
            for req, j in users:
                req.mm_embeds[j] = emb

    def _upload(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels to the device in the model dtype. On CUDA they are converted on the CPU's threads into pinned
        memory first (round to nearest even, as the device would): half the bytes of float32 cross the bus, and
        asynchronously (a 1008x1008 image is 24 MB of float32)."""
        if self.device.type != "cuda" or pixels.device.type != "cpu":
            return pixels.to(self.device)
        started = time.perf_counter()
        # pixels the door staged already (AsyncEngine.stage_prompt) go up as they are
        out = stage_pixels(pixels, self.dtype, pin_memory=True).to(self.device, non_blocking=True)
        self.observer.pixels_uploaded(time.perf_counter() - started)
        return out

    @staticmethod
    def _media_plan(media_entries: list[ScheduledRequest], starts: dict[int, int]):
        """For each picture a step's chunks reach: (request, media index, rows of its embedding the chunk takes) and
        the rows of the step's hidden states they go to. Host-side indices only (uploaded before the tower runs)."""
        plan, sels, dsts = [], [], []
        for e in media_entries:
            req = e.request
            for j, item in enumerate(req.media):
                if not item.overlaps(e.start, e.end):
                    continue
                sel = ((item.positions >= e.start) & (item.positions < e.end)).nonzero().squeeze(1)
                plan.append((req, j, int(sel.numel())))
                sels.append(sel)
                dsts.append(item.positions[sel] - e.start + starts[id(e)])
        return plan, sels, dsts

    # ---- one step ----
    def execute(self, sched: SchedulerOutput) -> RunnerOutput:
        return self.launch(sched).wait()

    @torch.inference_mode()
    def launch(self, sched: SchedulerOutput, prev: PendingStep | None = None) -> PendingStep:
        """Queue one step's device work (forward and sampling); the host is free until `PendingStep.wait()`.

        `prev` is the step still in flight, if any: a row whose input token that step sampled (the sequence's
        `num_pending`) reads it from `prev`'s device tensor."""
        prefills = [e for e in sched.scheduled if e.num_tokens > 1]
        decodes = [e for e in sched.scheduled if e.num_tokens == 1]
        entries = prefills + decodes
        sampled = [e for e in entries if e.samples]
        if not entries:
            return PendingStep([], None)
        prev_rows = prev.row_of if prev is not None and prev.sample is not None else {}
        rows = [e.request for e in sampled]
        graph_tokens = None  # the decode graph's argmax, where it is every row's token
        if not prefills and self.graphs and len(decodes) <= self.buckets[-1]:
            if self.observer.wants_graph_events:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                logits = self._run_decode_graph(decodes, prev, prev_rows)
                end.record()
                self.observer.decode_graph_ran(start, end, len(decodes))
            else:
                logits = self._run_decode_graph(decodes, prev, prev_rows)
            if len(sampled) == len(decodes) and self.sampler.plain_greedy(rows):
                self.greedy_graph_steps += 1
                graph_tokens = self.buf_prev_tokens[:len(decodes)]
            elif len(sampled) < len(decodes):
                keep = torch.tensor([i for i, e in enumerate(decodes) if e.samples], device=self.device)
                logits = logits.index_select(0, keep)
        else:
            logits = self._run_eager(prefills, decodes, sampled, prev, prev_rows)
        if graph_tokens is not None:
            pending = self.sampler.launch_tokens(graph_tokens, rows)
        else:
            pending = self.sampler.launch(logits, rows) if sampled else None
        for e in prefills:
            if e.end >= e.request.num_prompt_tokens:
                e.request.mm_embeds.clear()  # the prompt's media are in the KV cache now
        return PendingStep(sampled, pending, {id(e.request): i for i, e in enumerate(sampled)})

    @staticmethod
    def _pending_source(req: Request, position: int, prev_rows: dict[int, int]) -> int:
        """The previous step's row that sampled the token at `position` (a token not in token_ids yet)."""
        row = prev_rows.get(id(req))
        if row is None:
            raise RuntimeError(f"token {position} of sequence {req.request_id} is neither known nor in flight")
        return row

    def _run_eager(self, prefills: list[ScheduledRequest], decodes: list[ScheduledRequest],
                   sampled: list[ScheduledRequest], prev: PendingStep | None = None,
                   prev_rows: dict[int, int] | None = None) -> torch.Tensor:
        bs, dev = self.block_size, self.device
        entries = prefills + decodes
        total = sum(e.num_tokens for e in entries)
        ids = np.empty(total, dtype=np.int64)
        positions = np.empty((3, total), dtype=np.int64)
        slots = np.empty(total, dtype=np.int64)
        last_row: dict[int, int] = {}
        pending_dst: list[int] = []
        pending_src: list[int] = []
        offset = 0
        for e in entries:
            req, n = e.request, e.num_tokens
            known = min(e.end, len(req.token_ids))
            ids[offset:offset + known - e.start] = req.token_ids[e.start:known]
            if known < e.end:  # the chunk's last token is still on the device (sampled by `prev`)
                ids[offset + n - 1] = 0
                pending_dst.append(offset + n - 1)
                pending_src.append(self._pending_source(req, e.end - 1, prev_rows or {}))
            if req.mrope_positions is None or e.start >= req.num_prompt_tokens:
                positions[:, offset:offset + n] = np.arange(e.start, e.end) + req.rope_delta
            else:
                positions[:, offset:offset + n] = req.positions(e.start, e.end).numpy()
            pos = np.arange(e.start, e.end)
            table = np.asarray(req.block_ids, dtype=np.int64)
            slots[offset:offset + n] = table[pos // bs] * bs + pos % bs
            last_row[id(e)] = offset + n - 1
            offset += n
        meta = AttentionMetadata(slot_mapping=torch.from_numpy(slots).to(dev, non_blocking=True))
        if prefills:
            meta.num_prefill_tokens = sum(e.num_tokens for e in prefills)
            meta.prefill_block_tables = self._block_table(prefills)
            cu = np.cumsum([0] + [e.num_tokens for e in prefills])
            meta.prefill_cu_seqlens_q = torch.tensor(cu, dtype=torch.int32, device=dev)
            meta.prefill_seq_lens = torch.tensor([e.end for e in prefills], dtype=torch.int32, device=dev)
            meta.prefill_max_seqlen_q = max(e.num_tokens for e in prefills)
            meta.prefill_dense = len(prefills) == 1 and prefills[0].start == 0
        if decodes:
            meta.decode_block_tables = self._block_table(decodes)
            meta.decode_seq_lens = torch.tensor([e.end for e in decodes], dtype=torch.int32, device=dev)
        # Every host-side input goes up before the tower and the decoder are queued: a copy from pageable memory
        # waits for the work queued before it, and the host should not stall mid-step while the device computes.
        ids_t = torch.from_numpy(ids).to(dev, non_blocking=True)
        positions_t = torch.from_numpy(positions).to(dev, non_blocking=True)
        rows = torch.tensor([last_row[id(e)] for e in sampled], device=dev) if sampled else None
        media_entries = [e for e in prefills + decodes if e.request.media and e.start < e.request.num_prompt_tokens]
        media_plan, sel_t, dst_t = [], None, None
        if media_entries:
            starts, offset = {}, 0
            for e in entries:
                starts[id(e)] = offset
                offset += e.num_tokens
            media_plan, sels, dsts = self._media_plan(media_entries, starts)
            if media_plan:
                sel_t = torch.cat(sels).to(dev, non_blocking=True)
                dst_t = torch.cat(dsts).to(dev, non_blocking=True)
        if pending_dst:
            src = torch.tensor(pending_src, device=dev)
            ids_t.index_copy_(0, torch.tensor(pending_dst, device=dev), prev.sample.tokens.index_select(0, src))
        hidden = self.model.embed(ids_t)
        if media_entries:
            self._encode_media(media_entries)
            if media_plan:
                parts = sel_t.split([n for _, _, n in media_plan])
                src = torch.cat([req.mm_embeds[j].index_select(0, part)
                                 for (req, j, _), part in zip(media_plan, parts, strict=True)])
                hidden.index_copy_(0, dst_t, src.to(hidden.dtype))
        hidden = self.model.forward(hidden, positions_t, self.kv_caches, meta)
        if rows is None:
            return hidden.new_empty(0, self.model_config.text.vocab_size)
        return self.model.logits(hidden.index_select(0, rows))

    def _block_table(self, entries: list[ScheduledRequest]) -> torch.Tensor:
        width = max(-(-e.end // self.block_size) for e in entries)
        table = np.full((len(entries), width), NULL_BLOCK, dtype=np.int32)
        for i, e in enumerate(entries):
            blocks = e.request.block_ids[:width]
            table[i, : len(blocks)] = blocks
        return torch.from_numpy(table).to(self.device, non_blocking=True)

    def _run_decode_graph(self, decodes: list[ScheduledRequest], prev: PendingStep | None = None,
                          prev_rows: dict[int, int] | None = None) -> torch.Tensor:
        batch = len(decodes)
        bucket = next(b for b in self.buckets if b >= batch)
        bs = self.block_size
        host = self._hosts[self._parity]
        self._parity ^= 1
        meta, tables = host.np_meta, host.np_tables
        ids, slots, lens, src = meta[self.META_IDS], meta[self.META_SLOTS], meta[self.META_LENS], meta[self.META_SRC]
        pos_t, pos_h, pos_w = meta[self.META_POS], meta[self.META_POS + 1], meta[self.META_POS + 2]
        row_blocks, row_filled = host.row_blocks, host.row_filled
        any_pending = False
        for i, e in enumerate(decodes):
            req, p = e.request, e.start
            if p < len(req.token_ids):
                ids[i] = req.token_ids[p]
                src[i] = -1
            else:  # sampled by the step still in flight: the graph reads it from buf_prev_tokens
                ids[i] = 0
                src[i] = self._pending_source(req, p, prev_rows or {})
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
            if tokens.data_ptr() != self.buf_prev_tokens.data_ptr():  # else the previous graph wrote them there
                self.buf_prev_tokens[:tokens.shape[0]].copy_(tokens)
        graph, out = self.graphs[bucket]
        if graph is None:  # static decode without a graph (CPU tests of the buffer bookkeeping)
            return self._static_decode(bucket)[:batch]
        graph.replay()
        return out[:batch]
