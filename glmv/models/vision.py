"""Glm4vVisionTower: GLM-4.1V's ViT in plain tensor functions, batched over many images and video frames at once.

Matches transformers' Glm4vVisionModel: patch embedding (a Conv3d done as one matmul), RMSNorm, learned 2D position
embeddings resampled bicubically to each grid, axial 2D rotary attention (full attention within one image or one
video frame, never across), SwiGLU MLPs, a 2x2 spatial merge (a Conv2d done as one matmul) and the patch merger.
Segments (one per image or frame) of equal length run in one batched SDPA call instead of a Python loop.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from glmv.config import VisionDims
from glmv.layers.checkpoint import CheckpointReader
from glmv.layers.kernels import Kernels
from glmv.layers.swiglu import GateUpAct
from glmv.lru import LruCache
from glmv.models.graph_memory import GraphMemory
from glmv.models.graph_slots import GraphSlots

log = logging.getLogger("glmv.vision")


@dataclass
class VisionBlockWeights:
    norm1: torch.Tensor
    norm2: torch.Tensor
    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor | None
    proj_weight: torch.Tensor
    gate_up_weight: torch.Tensor  # gate and up projections stacked: one matmul
    down_weight: torch.Tensor


@dataclass
class VisionWeights:
    patch_weight: torch.Tensor  # [hidden, C*T*P*P]
    patch_bias: torch.Tensor
    post_conv_norm: torch.Tensor
    pos_embed: torch.Tensor  # [side*side, hidden]
    blocks: list[VisionBlockWeights]
    post_norm: torch.Tensor
    downsample_weight: torch.Tensor  # [out_hidden, merge*merge*hidden], input ordered (i, j, channel)
    downsample_bias: torch.Tensor
    merger_proj: torch.Tensor
    merger_norm_weight: torch.Tensor
    merger_norm_bias: torch.Tensor
    merger_gate_up: torch.Tensor
    merger_down: torch.Tensor
    gate_up_interleaved: bool = False  # set once the model lays the gate/up weights out for the fused gating


def load_vision_weights(reader: CheckpointReader, dims: VisionDims) -> VisionWeights:
    blocks = []
    for i in range(dims.depth):
        p = f"blocks.{i}."
        gate = reader.vision(p + "mlp.gate_proj.weight")
        up = reader.vision(p + "mlp.up_proj.weight")
        blocks.append(VisionBlockWeights(
            norm1=reader.vision(p + "norm1.weight"),
            norm2=reader.vision(p + "norm2.weight"),
            qkv_weight=reader.vision(p + "attn.qkv.weight"),
            qkv_bias=reader.vision(p + "attn.qkv.bias", required=False),
            proj_weight=reader.vision(p + "attn.proj.weight"),
            gate_up_weight=torch.cat([gate, up], dim=0),
            down_weight=reader.vision(p + "mlp.down_proj.weight"),
        ))
        del gate, up
    patch = reader.vision("patch_embed.proj.weight")
    down = reader.vision("downsample.weight")  # [out, hidden, m, m]
    m_gate = reader.vision("merger.gate_proj.weight")
    m_up = reader.vision("merger.up_proj.weight")
    return VisionWeights(
        patch_weight=patch.reshape(patch.shape[0], -1),
        patch_bias=reader.vision("patch_embed.proj.bias"),
        post_conv_norm=reader.vision("post_conv_layernorm.weight"),
        pos_embed=reader.vision("embeddings.position_embedding.weight"),
        blocks=blocks,
        post_norm=reader.vision("post_layernorm.weight"),
        downsample_weight=down.permute(0, 2, 3, 1).reshape(down.shape[0], -1).contiguous(),
        downsample_bias=reader.vision("downsample.bias"),
        merger_proj=reader.vision("merger.proj.weight"),
        merger_norm_weight=reader.vision("merger.post_projection_norm.weight"),
        merger_norm_bias=reader.vision("merger.post_projection_norm.bias"),
        merger_gate_up=torch.cat([m_gate, m_up], dim=0),
        merger_down=reader.vision("merger.down_proj.weight"),
    )


class Glm4vVisionTower:
    """`encode(pixel_values, grids)` -> one embedding per merged 2x2 patch, for many images/videos in one call.

    On CUDA the tower is recorded as a CUDA graph per input shape (grids and pixel dtype) the second time that shape
    comes, for inputs of at most GRAPH_MAX_PATCHES patches in equal-length segments (one picture, or frames of one
    size): a replay launches its ~300 kernels without the host, the same kernels as the eager path (same results),
    where the kernels allow it (`Kernels.vision_graphs`: glmv's Triton kernels, unless GLMV_VISION_GRAPHS=0).
    """

    GRAPH_MAX_PATCHES = 8192  # one 1260x1260 picture; larger inputs amortise their launches anyway
    GRAPH_MAX_ENTRIES = 8  # shapes kept (the most used: GraphSlots); they share one memory pool
    # Per-grid position/rotary tables, float32 [patches, hidden + 2 * head_dim] on the device: 37 MB for one
    # 1008x1008 picture at the 9B's dimensions, so they are bounded in bytes (recent grids kept), not by count.
    GRID_TABLE_BYTES = 256 << 20
    GRID_TABLE_ENTRIES = 64

    def __init__(self, dims: VisionDims, weights: VisionWeights, device: torch.device, dtype: torch.dtype,
                 kernels: Kernels, gate_up_act: GateUpAct, rope_theta: float = 10000.0):
        self.dims = dims
        self.w = weights
        self.device = device
        self.dtype = dtype
        self.head_dim = dims.hidden_size // dims.num_heads
        # Axial 2D rotary: head_dim/4 frequencies each for rows and columns, rotating the whole head.
        spatial_dim = self.head_dim // 2
        steps = torch.arange(0, spatial_dim, 2, dtype=torch.float, device=device) / spatial_dim
        self.inv_freq = 1.0 / (rope_theta**steps)
        self.pos_side = int(weights.pos_embed.shape[0] ** 0.5)
        self.grid_tables: LruCache[tuple[int, int], torch.Tensor] = LruCache(
            self.GRID_TABLE_ENTRIES, self.GRID_TABLE_BYTES, _tensor_bytes)
        self.kernels = kernels
        self.gate_up_act = gate_up_act  # shared with the text decoder: how the MLPs gate (and the weights' layout)
        self.use_graphs = device.type == "cuda" and kernels.vision_graphs
        # key -> (graph, static input, static output, the grid tables the graph reads: held here, since the LRU
        # may drop them while the graph still replays reading their memory)
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, list[torch.Tensor]]] = {}
        self._graph_pool = None
        self._graph_slots = GraphSlots(self.GRAPH_MAX_ENTRIES)
        self.graph_memory = GraphMemory(self.GRAPH_MAX_ENTRIES, self._graph_pool_bytes)

    @classmethod
    def load(cls, reader: CheckpointReader, dims: VisionDims, kernels: Kernels, gate_up_act: GateUpAct,
             rope_theta: float = 10000.0) -> Glm4vVisionTower:
        return cls(dims, load_vision_weights(reader, dims), reader.device, reader.dtype, kernels, gate_up_act,
                   rope_theta)

    # ---- per-grid tables (cached by grid shape: every frame of a video and every same-size image share them) ----
    def _grid_coords(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch (row, col) in the block-major order the processor emits (2x2 merge blocks are contiguous)."""
        m = self.dims.spatial_merge_size
        hpos, wpos = torch.meshgrid(torch.arange(h, device=self.device), torch.arange(w, device=self.device),
                                    indexing="ij")
        shape = (h // m, m, w // m, m)
        return hpos.reshape(shape).transpose(1, 2).flatten(), wpos.reshape(shape).transpose(1, 2).flatten()

    def _grid_tables(self, h: int, w: int) -> torch.Tensor:
        """[h*w, hidden + head_dim*2]: the resampled position embedding and the rotary cos/sin of one grid."""
        cached = self.grid_tables.get((h, w))
        if cached is not None:
            return cached
        hpos, wpos = self._grid_coords(h, w)
        side = self.pos_side
        table = self.w.pos_embed.view(side, side, -1).permute(2, 0, 1).unsqueeze(0).float()
        norm_w = ((wpos.float() + 0.5) / w) * 2 - 1
        norm_h = ((hpos.float() + 0.5) / h) * 2 - 1
        grid = torch.stack((norm_w, norm_h), dim=-1).view(1, -1, 1, 2)
        pos = F.grid_sample(table, grid, mode="bicubic", align_corners=False, padding_mode="border")
        pos = pos.squeeze(0).squeeze(-1).permute(1, 0)  # [h*w, hidden] float32
        freqs = torch.cat([hpos.float()[:, None] * self.inv_freq, wpos.float()[:, None] * self.inv_freq], dim=-1)
        emb = torch.cat([freqs, freqs], dim=-1)
        tables = torch.cat([pos, emb.cos(), emb.sin()], dim=-1)
        self.grid_tables.put((h, w), tables)
        return tables

    # ---- the tower ----
    @torch.inference_mode()
    def encode(self, pixel_values: torch.Tensor, grids: list[tuple[int, int, int]]) -> torch.Tensor:
        """pixel_values [sum(t*h*w), C*T*P*P] for items with grids (t, h, w) -> [sum(t*h*w)/merge^2, out_hidden].

        Each of an item's t temporal slices is its own attention segment (a video frame pair or an image).
        """
        key = self._graph_key(pixel_values, grids)
        if key is not None:
            self._graph_slots.use(key)
            entry = self._graphs.get(key)
            if entry is None:
                capture, dropped = self._graph_slots.admit(key)
                if capture:
                    entry = self._capture(key, pixel_values, grids)
                if dropped is not None and self._graphs.pop(dropped, None) is not None:
                    # after the capture: a pool whose last graph is gone must not be captured into again
                    self.graph_memory.dropped(dropped)
            if entry is not None:
                graph, static_in, static_out, _tables = entry
                static_in.copy_(pixel_values)
                graph.replay()
                return static_out.clone()
        return self._encode(pixel_values, grids)

    def _graph_key(self, pixel_values: torch.Tensor, grids: list[tuple[int, int, int]]) -> tuple | None:
        if not self.use_graphs or pixel_values.device.type != "cuda":
            return None
        if pixel_values.shape[0] > self.GRAPH_MAX_PATCHES:
            return None
        if len({h * w for _, h, w in grids}) != 1:  # unequal segments index rows on the host: not capturable
            return None
        return tuple(tuple(int(v) for v in g) for g in grids), pixel_values.dtype, tuple(pixel_values.shape)

    def _capture(self, key: tuple, pixel_values: torch.Tensor, grids: list[tuple[int, int, int]]):
        try:
            static_in = pixel_values.clone()
            tables = [self._grid_tables(h, w) for _, h, w in grids]  # made eagerly; the capture reads these
            if self._graph_pool is None:
                self._graph_pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._graph_pool, capture_error_mode="thread_local"):
                static_out = self._encode(static_in, grids, tables)
        except Exception as exc:  # noqa: BLE001 - eager stays correct; stop trying
            log.warning("vision tower: CUDA graph capture failed (%s); running it eagerly from now on", exc)
            self.use_graphs = False
            self._graphs.clear()
            self.graph_memory.clear()
            self._graph_slots.release(key)
            return None
        entry = (graph, static_in, static_out, tables)
        self._graphs[key] = entry
        self.graph_memory.captured(key, static_in.numel() * static_in.element_size())
        log.info("vision tower: captured a CUDA graph for grids %s (%d kept)", key[0], len(self._graphs))
        return entry

    def _graph_pool_bytes(self) -> tuple[int, int]:
        """(in use, reserved) of the graphs' private pool, from the allocator's snapshot."""
        if self._graph_pool is None:
            return 0, 0
        pool = tuple(self._graph_pool)
        segments = [s for s in torch.cuda.memory_snapshot() if tuple(s.get("segment_pool_id", (0, 0))) == pool]
        in_use = sum(b["size"] for s in segments for b in s["blocks"] if b["state"] == "active_allocated")
        return in_use, sum(s["total_size"] for s in segments)

    def _encode(self, pixel_values: torch.Tensor, grids: list[tuple[int, int, int]],
                tables: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The tower over one batch; `tables`: each grid's tables (the cache's when not given)."""
        d, w = self.dims, self.w
        eps = d.rms_norm_eps
        kn, gate_up_act = self.kernels, self.gate_up_act
        norm, add_norm = kn.rms_norm, kn.add_rms_norm
        # copy first, convert on the device (float32 -> bf16 on the CPU would cost more than the copy)
        x = F.linear(pixel_values.to(self.device, non_blocking=True).to(self.dtype), w.patch_weight, w.patch_bias)
        x = norm(x, w.post_conv_norm, eps)
        if tables is None:
            tables = [self._grid_tables(h, wd) for _, h, wd in grids]
        tables = torch.cat([table.repeat(t, 1) for table, (t, _, _) in zip(tables, grids, strict=True)], dim=0)
        hidden = d.hidden_size
        pos, cos, sin = tables.split([hidden, self.head_dim, self.head_dim], dim=-1)
        segments = [h * wd for t, h, wd in grids for _ in range(t)]
        groups = self._segment_groups(segments)
        # Each residual add is fused with the norm that follows it (the next block's, or the post-norm at the end).
        norms = [blk.norm1 for blk in w.blocks] + [w.post_norm]
        x, h = add_norm(x, pos.to(self.dtype), norms[0], eps)
        for i, blk in enumerate(w.blocks):
            x, h = add_norm(x, self._attention(h, blk, cos, sin, groups), blk.norm2, eps)
            x, h = add_norm(x, F.linear(gate_up_act.dense(h, blk.gate_up_weight), blk.down_weight), norms[i + 1], eps)
        x = h  # post-normed
        m = d.spatial_merge_size
        x = F.linear(x.reshape(-1, m * m * hidden), w.downsample_weight, w.downsample_bias)
        x = F.linear(x, w.merger_proj)
        x = F.gelu(F.layer_norm(x, (x.shape[-1],), w.merger_norm_weight, w.merger_norm_bias, 1e-5))
        return F.linear(gate_up_act.dense(x, w.merger_gate_up), w.merger_down)

    def _segment_groups(self, segments: list[int]) -> list[tuple[int, torch.Tensor | None, int]]:
        """Group equal-length segments so each group is one batched SDPA: (length, row index or None, count)."""
        if len(set(segments)) == 1:
            return [(segments[0], None, len(segments))]
        starts = [0]
        for n in segments[:-1]:
            starts.append(starts[-1] + n)
        by_len: dict[int, list[int]] = {}
        for start, n in zip(starts, segments, strict=True):
            by_len.setdefault(n, []).append(start)
        groups = []
        for n, group_starts in by_len.items():
            idx = (torch.tensor(group_starts).unsqueeze(1) + torch.arange(n)).flatten().to(self.device)
            groups.append((n, idx, len(group_starts)))
        return groups

    def _attention(self, x: torch.Tensor, blk: VisionBlockWeights, cos: torch.Tensor, sin: torch.Tensor,
                   groups: list[tuple[int, torch.Tensor | None, int]]) -> torch.Tensor:
        heads, hd = self.dims.num_heads, self.head_dim
        qkv = F.linear(x, blk.qkv_weight, blk.qkv_bias).view(-1, 3, heads, hd)
        q, k, v = qkv.unbind(1)
        q, k = self.kernels.rotary_half_pair(q, k, cos, sin)
        scale = hd**-0.5
        if len(groups) == 1 and groups[0][1] is None:
            n, _, count = groups[0]
            out = self._sdpa(q, k, v, n, count, scale)
        else:
            out = torch.empty_like(q)
            for n, idx, count in groups:
                out.index_copy_(0, idx, self._sdpa(q[idx], k[idx], v[idx], n, count, scale))
        return F.linear(out.reshape(-1, heads * hd), blk.proj_weight)

    @staticmethod
    def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n: int, count: int, scale: float) -> torch.Tensor:
        def seg(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(count, n, t.shape[1], t.shape[2]).transpose(1, 2)

        o = F.scaled_dot_product_attention(seg(q), seg(k), seg(v), scale=scale)
        return o.transpose(1, 2).reshape(count * n, q.shape[1], q.shape[2])


class VisionEmbeddingCache:
    """Bounded LRU of vision-tower outputs keyed by media content hash + grid, so a chat that resends the same
    image (or many requests about one picture) runs the encoder once. Bounded by bytes, not entries.

    An entry is stored compact: the runner hands in slices of one batched encoder output, and a slice kept as it
    is would keep the whole batch's memory alive (every picture of that batch, however many were evicted), so the
    bound would not bound what is held. On CUDA these bytes are device memory outside the KV pool, and an entry
    counts the block the allocator gave its copy (`allocated_bytes`: the allocator's bytes in use, read around the
    copy on the engine thread, the only one that allocates device memory): that block can be up to 1 MiB larger
    than the tensor, since a large free block is not split when less than 1 MiB would remain, and ~1.5 MB pictures
    would otherwise hold more than the bound says (measured: +19 MiB over 330 entries on the H200).
    """

    def __init__(self, max_bytes: int, allocated_bytes: Callable[[], int] | None = None):
        self.max_bytes = max_bytes
        self._allocated_bytes = allocated_bytes
        self._lru: LruCache[str, tuple[torch.Tensor, int]] = LruCache(sys.maxsize, max_bytes, lambda entry: entry[1])

    @property
    def bytes(self) -> int:
        return self._lru.bytes

    @property
    def hits(self) -> int:
        return self._lru.hits

    @property
    def misses(self) -> int:
        return self._lru.misses

    def __len__(self) -> int:
        return len(self._lru)

    def get(self, key: str) -> torch.Tensor | None:
        entry = self._lru.get(key)
        return None if entry is None else entry[0]

    def put(self, key: str, value: torch.Tensor) -> None:
        size = _tensor_bytes(value)
        if size > self.max_bytes:
            return
        held = size
        if self._allocated_bytes is not None:  # always a fresh copy, so that its block is the one measured
            before = self._allocated_bytes()
            value = value.clone(memory_format=torch.contiguous_format)
            held = max(size, self._allocated_bytes() - before)
        elif value.untyped_storage().nbytes() > size or not value.is_contiguous():
            value = value.clone(memory_format=torch.contiguous_format)
        self._lru.put(key, (value, held))


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
