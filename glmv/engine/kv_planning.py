"""How many KV blocks fit: on CUDA, the free memory after the weights and one profiled worst-case step (within
--gpu-memory-utilization and --max-gpu-memory); on the CPU a fixed budget; or exactly --kv-cache-memory bytes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from glmv.config import EngineConfig, TextDims
from glmv.layers.attention import AttentionMetadata
from glmv.models.glm4v import Glm4vModel

log = logging.getLogger("glmv.runner")

CPU_DEFAULT_KV_BYTES = 2 << 30
# CUDA graphs and allocator fragmentation, kept out of the KV budget
CUDA_RESERVE_BYTES = 256 << 20
# Device memory outside PyTorch's allocator (the CUDA context, cuBLAS's and Triton's loaded modules), counted
# against --max-gpu-memory because a real card of that size holds it too: 856 MiB measured on the H200 with the
# full preset once serving (torch 2.11, bench/small_card.py). Under --gpu-memory-utilization it is measured instead.
CUDA_CONTEXT_BYTES = 1 << 30


@dataclass(frozen=True)
class KVCachePlan:
    num_blocks: int
    block_size: int
    bytes_per_block: int

    def allocate(self, text: TextDims, dtype: torch.dtype, device: torch.device) -> list[tuple[torch.Tensor, ...]]:
        """One (key, value) pair of [num_blocks, block_size, kv_heads, head_dim] views per layer, one allocation."""
        kv = torch.zeros(text.num_layers, 2, self.num_blocks, self.block_size, text.num_kv_heads, text.head_dim,
                         dtype=dtype, device=device)
        return [(kv[i, 0], kv[i, 1]) for i in range(text.num_layers)]


def bytes_per_block(text: TextDims, block_size: int, dtype: torch.dtype) -> int:
    return text.num_layers * 2 * block_size * text.num_kv_heads * text.head_dim * \
        torch.empty((), dtype=dtype).element_size()


def plan_kv_cache(model: Glm4vModel, config: EngineConfig, max_model_len: int) -> KVCachePlan:
    """Size the cache; raise when not even one sequence of max_model_len fits."""
    text, block_size = model.config.text, config.block_size
    per_block = bytes_per_block(text, block_size, model.dtype)
    per_seq = -(-max_model_len // block_size)
    if config.kv_cache_memory is not None:
        budget = config.kv_cache_memory
    elif model.device.type == "cuda":
        budget = _cuda_kv_budget(model, config, max_model_len)
    else:
        # CPU: 2 GiB, but no more than every sequence at full length needs and never less than one sequence.
        budget = min(CPU_DEFAULT_KV_BYTES, (config.max_num_seqs * per_seq + 1) * per_block)
        budget = max(budget, (per_seq + 1) * per_block)
    num_blocks = int(budget // per_block)
    if num_blocks - 1 < per_seq:
        raise ValueError(
            f"The KV cache has room for {max(num_blocks - 1, 0) * block_size} tokens, less than one sequence "
            f"of --max-model-len {max_model_len}. Lower --max-model-len or give the cache more memory "
            "(--kv-cache-memory BYTES or --gpu-memory-utilization)."
        )
    log.info("KV cache: %d blocks of %d tokens (%.2f GiB): %d tokens of context fit (--max-model-len %d)",
             num_blocks, block_size, num_blocks * per_block / 2**30, (num_blocks - 1) * block_size, max_model_len)
    return KVCachePlan(num_blocks, block_size, per_block)


def _cuda_kv_budget(model: Glm4vModel, config: EngineConfig, max_model_len: int) -> int:
    """Free memory after the weights and one profiled worst-case step, within gpu_memory_utilization."""
    device = model.device
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    _profile_step(model, config, max_model_len)
    torch.cuda.synchronize(device)
    activations = torch.cuda.max_memory_allocated(device) - before
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    later = later_device_bytes(model, config)
    held = torch.cuda.memory_reserved(device)  # weights and buffers: what glmv's allocator holds
    budget = cuda_kv_budget(total, total - free, held, activations, later, config)
    if config.max_gpu_memory is not None:
        log.info("--max-gpu-memory %.1f GiB: glmv holds %.2f GiB before its KV cache, %.2f GiB more for the CUDA "
                 "context", config.max_gpu_memory / 2**30, held / 2**30, CUDA_CONTEXT_BYTES / 2**30)
    log.info("GPU memory: total %.1f GiB, in use %.1f GiB, profiled step %.2f GiB, vision caches at their bounds "
             "%.2f GiB -> KV budget %.1f GiB", total / 2**30, (total - free) / 2**30, activations / 2**30,
             later / 2**30, budget / 2**30)
    return budget


def later_device_bytes(model: Glm4vModel, config: EngineConfig) -> int:
    """Device memory that fills after the KV cache is sized: the vision-embedding cache and the tower's per-grid
    tables, each at its bound (nothing without a vision tower)."""
    if model.vision is None:
        return 0
    return config.vision_cache_bytes + model.vision.GRID_TABLE_BYTES


def cuda_kv_budget(total: int, in_use: int, held: int, activations: int, later: int, config: EngineConfig) -> int:
    """Bytes for the KV cache: what --gpu-memory-utilization leaves of the device after what is in use (the CUDA
    context included), the profiled step's activations and the caches that fill later; under --max-gpu-memory
    also what the cap leaves after glmv's allocator's holdings and the CUDA context (`held`: that allocator's)."""
    budget = int(total * config.gpu_memory_utilization) - in_use - activations - later - CUDA_RESERVE_BYTES
    if config.max_gpu_memory is not None:  # a smaller card, simulated
        capped = config.max_gpu_memory - held - CUDA_CONTEXT_BYTES - activations - later - CUDA_RESERVE_BYTES
        budget = min(budget, capped)
    return max(budget, 0)


@torch.inference_mode()
def _profile_step(model: Glm4vModel, config: EngineConfig, max_model_len: int) -> None:
    """One forward over max_num_batched_tokens prompt tokens plus sampling max_num_seqs rows, on a scratch cache."""
    device, block_size = model.device, config.block_size
    tokens = min(config.max_num_batched_tokens, max_model_len)
    blocks = -(-tokens // block_size) + 1
    scratch = KVCachePlan(blocks, block_size, 0).allocate(model.config.text, model.dtype, device)
    ids = torch.zeros(tokens, dtype=torch.long, device=device)
    positions = torch.arange(tokens, device=device).expand(3, -1)
    meta = AttentionMetadata(
        slot_mapping=torch.arange(tokens, device=device) + block_size,
        num_prefill_tokens=tokens,
        prefill_block_tables=torch.arange(1, blocks, dtype=torch.int32, device=device).unsqueeze(0),
        prefill_cu_seqlens_q=torch.tensor([0, tokens], dtype=torch.int32, device=device),
        prefill_seq_lens=torch.tensor([tokens], dtype=torch.int32, device=device),
        prefill_max_seqlen_q=tokens,
        prefill_dense=True,
    )
    hidden = model.forward(model.embed(ids), positions, scratch, meta)
    rows = min(config.max_num_seqs, tokens)
    logits = model.logits(hidden[:rows])
    (logits.softmax(-1) + logits.log_softmax(-1)).sort(dim=-1)
    del scratch, hidden, logits
