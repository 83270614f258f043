"""ModelRunner: turns a SchedulerOutput into one batched forward over the paged KV cache, then samples.

It owns the device side and composes the parts that each own one thing: the model, the KV cache tensors (sized by
glmv/engine/kv_planning.py), the multimodal encoder with its vision-embedding cache (mm_encoder.py), the decode
CUDA graphs (decode_graphs.py) and the sampler. Per step it packs prefill chunks first and single-token decodes after
them, with their M-RoPE positions, KV slots and block tables; has the encoder embed media that the step's chunks
reach; scatters those embeddings into the input; runs the decoder; and samples from the last position of every
sequence that reaches the end of its known tokens, plus the prompt positions of sequences that asked for prompt
logprobs (prompt_logprobs.py). A decode-only step that fits a captured graph replays it instead.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from glmv.config import EngineConfig, ModelConfig
from glmv.cpu.runtime import keep_freed_memory, trim_freed_memory
from glmv.engine.decode_graphs import DecodeGraphs
from glmv.engine.kv_planning import plan_kv_cache
from glmv.engine.mm_encoder import MultimodalEncoder
from glmv.engine.observer import NO_OBSERVER, StepObserver
from glmv.engine.pending import PendingStep, RunnerOutput, pending_source
from glmv.engine.prompt_logprobs import PendingPromptScores, PromptSegment, launch_scores, plan_rows
from glmv.engine.sampler import PendingSample, Sampler
from glmv.engine.scheduler import ScheduledRequest, SchedulerOutput
from glmv.layers.attention import NULL_BLOCK, AttentionMetadata
from glmv.layers.kernels import select_kernels
from glmv.layers.quant import choose_linear_loader
from glmv.models.glm4v import Glm4vModel
from glmv.models.vision import VisionEmbeddingCache

log = logging.getLogger("glmv.runner")


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
        self.model = model or Glm4vModel.load(
            model_config, self.device, self.dtype, max_positions=max_model_len + 1,
            kernels=select_kernels(self.device, self.dtype, engine_config.kernels),
            linear_loader=choose_linear_loader(model_config.raw, engine_config.quantization, self.device))
        if self.device.type == "cpu":
            keep_freed_memory()
            packed = self.model.pack_cpu_weights()
            if packed:
                log.info("packed %d decoder weights for oneDNN (CPU %s matmuls)", packed, self.dtype)
        else:
            trim_freed_memory()
        self.swiglu_report: list = []  # ((N, K, rows), cuBLAS us, fused us, config) from plan_swiglu
        if self.device.type == "cuda":  # before the KV cache takes the memory that timing the largest shapes needs
            with torch.inference_mode():
                used = self.model.plan_swiglu(engine_config.max_num_batched_tokens, self.swiglu_report)
            if self.swiglu_report:
                log.info("MLP gate/up with fused SiLU at %d (shape, rows) points: %s", used, self.swiglu_report)
        self.kv_plan = plan_kv_cache(self.model, engine_config, max_model_len)
        self.num_blocks = self.kv_plan.num_blocks
        self.kv_caches = self.kv_plan.allocate(model_config.text, self.dtype, self.device)
        self.sampler = Sampler(model_config.text.vocab_size, self.device, model_config.eos_token_ids)
        device = self.device  # on CUDA the embedding cache counts the allocator's blocks (VisionEmbeddingCache)
        allocated = (lambda: torch.cuda.memory_allocated(device)) if device.type == "cuda" else None
        self.encoder = MultimodalEncoder(self.model, VisionEmbeddingCache(engine_config.vision_cache_bytes, allocated))
        self.decode_graphs = DecodeGraphs(self.model, self.kv_caches, engine_config.max_num_seqs, self.block_size,
                                          -(-max_model_len // self.block_size))
        self.greedy_graph_steps = 0  # decode steps whose tokens were the graph's own argmax (no sampler kernels)
        self.observer: StepObserver = NO_OBSERVER

    def observe(self, observer: StepObserver) -> None:
        """Hand the step's hooks to the runner and its encoder (LLMEngine.observe does)."""
        self.observer = self.encoder.observer = observer

    # ---- one step ----
    def execute(self, sched: SchedulerOutput) -> RunnerOutput:
        return self.launch(sched).wait()

    @torch.inference_mode()
    def launch(self, sched: SchedulerOutput, prev: PendingStep | None = None,
               defer_sampling: bool = False) -> PendingStep:
        """Queue one step's device work (forward and sampling); the host is free until `PendingStep.wait()`.

        `prev` is the step still in flight, if any: a row whose input token that step sampled (the sequence's
        `num_pending`) reads it from `prev`'s device tensor. With `defer_sampling` only the forward is queued, and
        `sample()` queues the sampling once the host has taken in `prev`'s tokens (for samplers that read them)."""
        prefills = [e for e in sched.scheduled if e.num_tokens > 1]
        decodes = [e for e in sched.scheduled if e.num_tokens == 1]
        entries = prefills + decodes
        sampled = [e for e in entries if e.samples]
        if not entries:
            return PendingStep([], None)
        prev_rows = prev.row_of if prev is not None and prev.sample is not None else {}
        rows = [e.request for e in sampled]
        graph_tokens = None  # the decode graph's argmax, where it is every row's token
        scored = None
        scoring = any(e.request.prompt_scores is not None and e.start < e.request.num_prompt_tokens - 1
                      for e in entries)  # a 1-token chunk inside the prompt is scored too: not in the graph
        if not prefills and not scoring and self.decode_graphs.takes(len(decodes)):
            if self.observer.wants_graph_events:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                logits = self.decode_graphs.run(decodes, prev, prev_rows)
                end.record()
                self.observer.decode_graph_ran(start, end, len(decodes))
            else:
                logits = self.decode_graphs.run(decodes, prev, prev_rows)
            if len(sampled) == len(decodes) and self.sampler.plain_greedy(rows):
                self.greedy_graph_steps += 1
                graph_tokens = self.decode_graphs.prev_tokens[:len(decodes)]
            elif len(sampled) < len(decodes):
                keep = torch.tensor([i for i, e in enumerate(decodes) if e.samples], device=self.device)
                logits = logits.index_select(0, keep)
        else:
            logits, scored = self._run_eager(prefills, decodes, sampled, prev, prev_rows)
        unsampled = None
        if graph_tokens is not None:
            pending = self.sampler.launch_tokens(graph_tokens, rows)
        elif sampled and defer_sampling:
            pending, unsampled = None, logits
        else:
            pending = self._launch_sampling(logits, sampled) if sampled else None
        for e in prefills:
            if e.end >= e.request.num_prompt_tokens:
                e.request.mm_embeds.clear()  # the prompt's media are in the KV cache now
        return PendingStep(sampled, pending, {id(e.request): i for i, e in enumerate(sampled)}, prompt_scores=scored,
                           unsampled=unsampled)

    def sample(self, step: PendingStep) -> None:
        """Queue the sampling of a step launched with `defer_sampling` (a no-op for any other step)."""
        if step.unsampled is None:
            return
        logits, step.unsampled = step.unsampled, None
        step.sample = self._launch_sampling(logits, step.sampled)

    def _launch_sampling(self, logits: torch.Tensor, sampled: list[ScheduledRequest]) -> PendingSample:
        """Each row's token count is its scheduled end, fixed at launch: by the time a deferred step samples, the
        previous token is in `token_ids` and this step's own is counted in `num_pending`, one too many."""
        return self.sampler.launch(logits, [e.request for e in sampled], [e.end for e in sampled])

    def _run_eager(self, prefills: list[ScheduledRequest], decodes: list[ScheduledRequest],
                   sampled: list[ScheduledRequest], prev: PendingStep | None = None,
                   prev_rows: dict[int, int] | None = None) -> tuple[torch.Tensor, PendingPromptScores | None]:
        """The step's forward: logits of the `sampled` rows, and the queued prompt logprobs of the chunks that
        score their prompt (None when none does)."""
        bs, dev = self.block_size, self.device
        entries = prefills + decodes
        total = sum(e.num_tokens for e in entries)
        ids = np.empty(total, dtype=np.int64)
        positions = np.empty((3, total), dtype=np.int64)
        slots = np.empty(total, dtype=np.int64)
        last_row: dict[int, int] = {}
        score_rows: list[int] = []
        score_targets: list[int] = []
        segments: list[PromptSegment] = []
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
                pending_src.append(pending_source(req, e.end - 1, prev_rows or {}))
            if req.mrope_positions is None or e.start >= req.num_prompt_tokens:
                positions[:, offset:offset + n] = np.arange(e.start, e.end) + req.rope_delta
            else:
                positions[:, offset:offset + n] = req.positions(e.start, e.end).numpy()
            pos = np.arange(e.start, e.end)
            table = np.asarray(req.block_ids, dtype=np.int64)
            slots[offset:offset + n] = table[pos // bs] * bs + pos % bs
            last_row[id(e)] = offset + n - 1
            if req.prompt_scores is not None:
                span, targets = plan_rows(req.prompt_scores, e.start, e.end, req.token_ids)
                if targets:
                    segments.append(PromptSegment(req.prompt_scores, len(score_rows), len(targets)))
                    score_rows += [offset + r for r in span]
                    score_targets += targets
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
            media_plan, sels, dsts = self.encoder.placement(media_entries, starts)
            if media_plan:
                sel_t = torch.cat(sels).to(dev, non_blocking=True)
                dst_t = torch.cat(dsts).to(dev, non_blocking=True)
        if pending_dst:
            src = torch.tensor(pending_src, device=dev)
            ids_t.index_copy_(0, torch.tensor(pending_dst, device=dev), prev.sample.tokens.index_select(0, src))
        hidden = self.model.embed(ids_t)
        if media_entries:
            self.encoder.encode(media_entries)
            if media_plan:
                parts = sel_t.split([n for _, _, n in media_plan])
                src = torch.cat([req.mm_embeds[j].index_select(0, part)
                                 for (req, j, _), part in zip(media_plan, parts, strict=True)])
                hidden.index_copy_(0, dst_t, src.to(hidden.dtype))
        hidden = self.model.forward(hidden, positions_t, self.kv_caches, meta)
        scored = launch_scores(self.model.logits, hidden, score_rows, score_targets, segments) if segments else None
        if rows is None:
            return hidden.new_empty(0, self.model_config.text.vocab_size), scored
        return self.model.logits(hidden.index_select(0, rows)), scored

    def _block_table(self, entries: list[ScheduledRequest]) -> torch.Tensor:
        width = max(-(-e.end // self.block_size) for e in entries)
        table = np.full((len(entries), width), NULL_BLOCK, dtype=np.int32)
        for i, e in enumerate(entries):
            blocks = e.request.block_ids[:width]
            table[i, : len(blocks)] = blocks
        return torch.from_numpy(table).to(self.device, non_blocking=True)

