"""Glm4vModel: GLM-4.1V's text decoder for batched, paged execution, plus its vision tower and the checkpoint loader.

The decoder runs a packed batch of tokens from many sequences (prefill chunks and decodes together) over a paged KV
cache. Per layer: RMSNorm -> one fused q/k/v matmul with bias -> partial interleaved M-RoPE on the first half of each
head -> paged attention (GQA) -> o_proj -> GLM-4's post-attention RMSNorm -> residual; RMSNorm -> fused gate/up
matmul -> SiLU-gated product -> down_proj -> GLM-4's post-MLP RMSNorm -> residual. Every hot path is a plain tensor
function over the whole batch: nothing here loops over tokens or sequences in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from glmv.config import ModelConfig, TextDims
from glmv.cpu import linear as cpu_linear
from glmv.engine.attention import AttentionBackend, AttentionMetadata, select_backend
from glmv.models.swiglu import GateUpAct
from glmv.models.vision import Glm4vVisionTower, rms_norm
from glmv.models.weights import CheckpointReader, expect_shape

VISION_PLAN_ROWS = 16384  # patches: a few large pictures or a short video in one tower call


@dataclass
class DecoderLayerWeights:
    input_norm: torch.Tensor
    qkv_weight: torch.Tensor  # [(heads + 2*kv_heads) * head_dim, hidden]: q, k, v stacked
    qkv_bias: torch.Tensor | None
    o_weight: torch.Tensor
    post_self_attn_norm: torch.Tensor
    post_attention_norm: torch.Tensor  # the pre-MLP norm (transformers' name)
    gate_up_weight: torch.Tensor  # [2 * intermediate, hidden]: gate then up
    down_weight: torch.Tensor
    post_mlp_norm: torch.Tensor


@dataclass
class TextWeights:
    embed: torch.Tensor
    layers: list[DecoderLayerWeights]
    norm: torch.Tensor
    lm_head: torch.Tensor
    gate_up_interleaved: bool = False  # set once the model lays the gate/up weights out for the fused gating


def load_text_weights(reader: CheckpointReader, dims: TextDims) -> TextWeights:
    hd, hidden = dims.head_dim, dims.hidden_size
    q_out, kv_out = dims.num_heads * hd, dims.num_kv_heads * hd
    layers = []
    for i in range(dims.num_layers):
        p = f"layers.{i}."
        q = expect_shape(reader.text(p + "self_attn.q_proj.weight"), (q_out, hidden), p + "q_proj")
        k = expect_shape(reader.text(p + "self_attn.k_proj.weight"), (kv_out, hidden), p + "k_proj")
        v = expect_shape(reader.text(p + "self_attn.v_proj.weight"), (kv_out, hidden), p + "v_proj")
        qkv = torch.cat([q, k, v], dim=0)
        del q, k, v
        biases = [reader.text(p + f"self_attn.{n}_proj.bias", required=dims.attention_bias) for n in "qkv"]
        qkv_bias = torch.cat(biases, dim=0) if all(b is not None for b in biases) else None
        gate_up = reader.text(p + "mlp.gate_up_proj.weight", required=False)
        if gate_up is None:  # checkpoints that store gate and up separately
            gate_up = torch.cat([reader.text(p + "mlp.gate_proj.weight"), reader.text(p + "mlp.up_proj.weight")])
        layers.append(DecoderLayerWeights(
            input_norm=reader.text(p + "input_layernorm.weight"),
            qkv_weight=qkv,
            qkv_bias=qkv_bias,
            o_weight=reader.text(p + "self_attn.o_proj.weight"),
            post_self_attn_norm=reader.text(p + "post_self_attn_layernorm.weight"),
            post_attention_norm=reader.text(p + "post_attention_layernorm.weight"),
            gate_up_weight=expect_shape(gate_up, (2 * dims.intermediate_size, hidden), p + "gate_up_proj"),
            down_weight=reader.text(p + "mlp.down_proj.weight"),
            post_mlp_norm=reader.text(p + "post_mlp_layernorm.weight"),
        ))
    return TextWeights(
        embed=expect_shape(reader.text("embed_tokens.weight"), (dims.vocab_size, hidden), "embed_tokens"),
        layers=layers,
        norm=reader.text("norm.weight"),
        lm_head=expect_shape(reader.lm_head(), (dims.vocab_size, hidden), "lm_head"),
    )


class MRotaryEmbedding:
    """cos/sin of GLM-4's partial, interleaved 3D rotary, looked up from tables by (t, h, w) positions.

    Frequency j belongs to the t, h or w row by mrope_section; each frequency rotates the pair of dims (2j, 2j+1)
    of the first rotary_dim dims of a head (transformers' rotate_half_llm with freqs repeated by 2).
    """

    def __init__(self, dims: TextDims, max_positions: int, device: torch.device):
        rot = dims.rotary_dim
        inv_freq = 1.0 / (dims.rope_theta ** (torch.arange(0, rot, 2, dtype=torch.float, device=device) / rot))
        pos = torch.arange(max_positions, device=device, dtype=torch.float)
        freqs = pos[:, None] * inv_freq[None, :]  # [max_pos, rot/2], the same products transformers forms
        self.cos_table = freqs.cos()
        self.sin_table = freqs.sin()
        section = []
        for i, n in enumerate(dims.mrope_section):
            section += [i % 3] * n
        self.row_of_freq = torch.tensor(section, device=device, dtype=torch.long)  # [rot/2]
        self.freq_index = torch.arange(len(section), device=device)
        self.max_positions = max_positions

    def __call__(self, positions: torch.Tensor, dtype: torch.dtype, kernel=None) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [3, T] long -> cos, sin [T, rot/2] in `dtype` (through `kernel`, glmv.kernels.mrope_cos_sin,
        when given: one launch, the same values)."""
        if kernel is not None and positions.stride(-1) == 1:
            return kernel(positions, self.cos_table, self.sin_table, self.row_of_freq, dtype)
        rows = positions[self.row_of_freq].t()  # [T, rot/2]: for each frequency, the position row it uses
        cos = self.cos_table[rows, self.freq_index]
        sin = self.sin_table[rows, self.freq_index]
        return cos.to(dtype), sin.to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, head_dim]; rotates interleaved pairs of the first 2*cos.shape[-1] dims, passes the rest."""
    rot = cos.shape[-1] * 2
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    rotated = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
    return torch.cat((rotated, x_pass), dim=-1)


class Glm4vModel:
    """The whole GLM-4.1V: `embed`, `forward` (decoder over a packed batch), `logits`, and `vision` (the ViT)."""

    def __init__(self, config: ModelConfig, text: TextWeights, vision: Glm4vVisionTower | None,
                 device: torch.device, dtype: torch.dtype, max_positions: int,
                 backend: AttentionBackend | None = None):
        self.config = config
        self.dims = config.text
        self.w = text
        self.vision = vision
        self.device = device
        self.dtype = dtype
        self.rope = MRotaryEmbedding(self.dims, max_positions, device)
        self.backend = backend or select_backend(device, dtype)
        fused = self.backend.fused
        self.gate_up_act = GateUpAct(getattr(fused, "swiglu", None), getattr(fused, "silu_mul", None))
        if vision is not None:
            vision.fused = fused
            vision.gate_up_act = self.gate_up_act
        self._lay_out_gate_up(text, vision)
        self.scale = self.dims.head_dim**-0.5
        d = self.dims
        self._split = [d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim, d.num_kv_heads * d.head_dim]
        self._gemv_plan: dict = {}  # (N, K, has bias, rows) -> Triton GEMV config, where it beat cuBLAS here
        self._gemv = None

    def _lay_out_gate_up(self, text: TextWeights, vision: Glm4vVisionTower | None) -> None:
        """Interleave the gate/up rows (decoder, vision blocks, merger) when this model fuses the gating into the
        matmul. Weights already laid out for another model are refused rather than interleaved twice."""
        act = self.gate_up_act
        parts = [text] + ([vision.w] if vision is not None else [])
        if not act.interleaved and any(w.gate_up_interleaved for w in parts):
            raise ValueError("these weights were laid out for the fused SwiGLU gating by another model; load them "
                             "again for a model that gates separately")
        if not act.interleaved or text.gate_up_interleaved:
            return
        with torch.inference_mode():
            for lw in text.layers:
                lw.gate_up_weight = act.prepare(lw.gate_up_weight)
            text.gate_up_interleaved = True
            if vision is not None:
                for blk in vision.w.blocks:
                    blk.gate_up_weight = act.prepare(blk.gate_up_weight)
                vision.w.merger_gate_up = act.prepare(vision.w.merger_gate_up)
                vision.w.gate_up_interleaved = True

    @classmethod
    def load(cls, config: ModelConfig, device: str | torch.device, dtype: torch.dtype, max_positions: int | None = None,
             load_vision: bool = True) -> Glm4vModel:
        """Read the checkpoint tensor by tensor onto `device` in `dtype`."""
        device = torch.device(device)
        reader = CheckpointReader(config.path, device, dtype)
        with torch.inference_mode():
            text = load_text_weights(reader, config.text)
            vision = None
            if load_vision:
                theta = ((config.raw.get("vision_config") or {}).get("rope_parameters") or {}).get("rope_theta", 1e4)
                vision = Glm4vVisionTower.load(reader, config.vision, float(theta))
        reader.close()
        model = cls(config, text, vision, device, dtype, max_positions or config.text.max_position_embeddings)
        model.bytes_loaded = reader.bytes_read
        return model

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.w.embed)

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                meta: AttentionMetadata) -> torch.Tensor:
        """hidden [T, hidden] (input embeddings), positions [3, T] -> final-normed hidden states [T, hidden]."""
        if self.backend.fused is not None:
            return self._forward_fused(hidden, positions, kv_caches, meta)
        d = self.dims
        eps = d.rms_norm_eps
        cos, sin = self.rope(positions, hidden.dtype)
        for layer, (k_cache, v_cache) in zip(self.w.layers, kv_caches, strict=True):
            residual = hidden
            x = rms_norm(hidden, layer.input_norm, eps)
            x = self._attention(x, layer, cos, sin, k_cache, v_cache, meta)
            hidden = residual + rms_norm(x, layer.post_self_attn_norm, eps)
            residual = hidden
            x = rms_norm(hidden, layer.post_attention_norm, eps)
            gate, up = self._linear(x, layer.gate_up_weight).chunk(2, dim=-1)
            x = self._linear(up * F.silu(gate), layer.down_weight)
            hidden = residual + rms_norm(x, layer.post_mlp_norm, eps)
        return rms_norm(hidden, self.w.norm, eps)

    def _attention(self, x: torch.Tensor, layer: DecoderLayerWeights, cos: torch.Tensor, sin: torch.Tensor,
                   k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        d, be = self.dims, self.backend
        tokens = x.shape[0]
        q, k, v = self._linear(x, layer.qkv_weight, layer.qkv_bias).split(self._split, dim=-1)
        q = apply_rotary(q.view(tokens, d.num_heads, d.head_dim), cos, sin)
        k = apply_rotary(k.view(tokens, d.num_kv_heads, d.head_dim), cos, sin)
        v = v.reshape(tokens, d.num_kv_heads, d.head_dim)
        be.write_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        n_pre = meta.num_prefill_tokens
        if n_pre == 0:
            out = be.paged_decode_attention(q, k_cache, v_cache, meta.decode_block_tables, meta.decode_seq_lens,
                                            self.scale)
        elif n_pre == tokens:
            out = be.paged_prefill_attention(q, k_cache, v_cache, meta.prefill_block_tables, meta.prefill_cu_seqlens_q,
                                             meta.prefill_seq_lens, self.scale, meta.prefill_max_seqlen_q)
        else:
            pre = be.paged_prefill_attention(q[:n_pre], k_cache, v_cache, meta.prefill_block_tables,
                                             meta.prefill_cu_seqlens_q, meta.prefill_seq_lens, self.scale,
                                             meta.prefill_max_seqlen_q)
            dec = be.paged_decode_attention(q[n_pre:], k_cache, v_cache, meta.decode_block_tables,
                                            meta.decode_seq_lens, self.scale)
            out = torch.cat([pre, dec], dim=0)
        return self._linear(out.reshape(tokens, -1), layer.o_weight)

    # ---- CUDA: decode-batch matmuls ----
    def plan_gemv(self, batch_sizes: list[int], report: list | None = None) -> int:
        """Time glmv's Triton decode matmul against cuBLAS for every weight shape at these decode batch sizes and
        use it where it is faster. 16-bit weights on CUDA only. Returns how many (shape, batch) pairs use it."""
        if self.device.type != "cuda" or self.dtype not in (torch.bfloat16, torch.float16) or self.backend.fused is None:
            return 0
        try:
            from glmv import kernels

            planner, self._gemv = kernels.plan_gemv, kernels.gemv
        except (ImportError, AttributeError):
            return 0
        layers = self.w.layers[: min(8, len(self.w.layers))]
        groups = [
            ([lw.qkv_weight for lw in layers], [lw.qkv_bias for lw in layers] if layers[0].qkv_bias is not None
             else None),
            ([lw.o_weight for lw in layers], None),
            ([lw.gate_up_weight for lw in layers], None, self.gate_up_act.interleaved),
            ([lw.down_weight for lw in layers], None),
            ([self.w.lm_head], None),
        ]
        self._gemv_plan = planner(groups, batch_sizes, report)
        self.gate_up_act.small_plan, self.gate_up_act.gemv = self._gemv_plan, self._gemv
        return len(self._gemv_plan)

    def plan_swiglu(self, max_rows: int, report: list | None = None) -> int:
        """Choose, by timing on this device, the row counts at which the MLP's gate/up matmul runs with its gating
        fused (glmv.models.swiglu); the text decoder up to `max_rows` (the most prompt tokens in one step), the
        vision tower up to VISION_PLAN_ROWS patches. Returns how many (shape, rows) points use the fused kernel."""
        if not self.gate_up_act.interleaved or self.device.type != "cuda" or self.dtype == torch.float32:
            return 0  # float32 stays on cuBLAS, exact (Triton's float32 dot is tf32)
        groups = [([lw.gate_up_weight for lw in self.w.layers[:2]], max_rows)]
        if self.vision is not None:
            groups.append(([blk.gate_up_weight for blk in self.vision.w.blocks[:4]], VISION_PLAN_ROWS))
        return self.gate_up_act.plan(groups, report)

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self._gemv_plan:
            cfg = self._gemv_plan.get((weight.shape[0], weight.shape[1], bias is not None, x.shape[0]))
            if cfg is not None:
                return self._gemv(x, weight, bias, cfg)
        return cpu_linear.linear(x, weight, bias)

    # ---- CPU: oneDNN-packed decoder weights ----
    def pack_cpu_weights(self) -> int:
        """Replace the decoder's matmul weights (and the lm_head) by oneDNN-packed ones where the CPU supports it
        (glmv.cpu.linear). Returns how many weights were packed (0: not applicable here)."""
        if not cpu_linear.packing_supported(self.device, self.dtype):
            return 0
        count = 0
        with torch.inference_mode():
            for lw in self.w.layers:
                for name in ("qkv_weight", "o_weight", "gate_up_weight", "down_weight"):
                    if not getattr(lw, name).is_mkldnn:
                        setattr(lw, name, cpu_linear.pack_weight(getattr(lw, name)))
                        count += 1
            if not self.w.lm_head.is_mkldnn:
                self.w.lm_head = cpu_linear.pack_weight(self.w.lm_head)
                count += 1
        return count

    # ---- the same layer with its elementwise steps fused (glmv.kernels on CUDA, glmv.cpu.ops on the CPU in bf16) ----
    def _forward_fused(self, hidden: torch.Tensor, positions: torch.Tensor,
                       kv_caches: list[tuple[torch.Tensor, torch.Tensor]], meta: AttentionMetadata) -> torch.Tensor:
        """`forward` with one kernel per elementwise step: each sub-layer's exit (post-norm + residual add) is fused
        with the next entry norm, and rotary is fused with the KV write. Rounds where the torch path rounds."""
        fk, eps = self.backend.fused, self.dims.rms_norm_eps
        cos, sin = self.rope(positions, hidden.dtype, getattr(fk, "mrope_cos_sin", None))
        layers = self.w.layers
        x = fk.rms_norm(hidden, layers[0].input_norm, eps)
        for i, (layer, (k_cache, v_cache)) in enumerate(zip(layers, kv_caches, strict=True)):
            attn = self._attention_fused(x, layer, cos, sin, k_cache, v_cache, meta)
            hidden, x = fk.residual_rms_norm(attn, hidden, layer.post_self_attn_norm, layer.post_attention_norm, eps)
            mlp = self._linear(self.gate_up_act(x, layer.gate_up_weight, self._linear), layer.down_weight)
            next_norm = layers[i + 1].input_norm if i + 1 < len(layers) else self.w.norm
            hidden, x = fk.residual_rms_norm(mlp, hidden, layer.post_mlp_norm, next_norm, eps)
        return x

    def _attention_fused(self, x: torch.Tensor, layer: DecoderLayerWeights, cos: torch.Tensor, sin: torch.Tensor,
                         k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        d, be = self.dims, self.backend
        tokens, n_pre = x.shape[0], meta.num_prefill_tokens
        q, k, v = self._linear(x, layer.qkv_weight, layer.qkv_bias).split(self._split, dim=-1)
        q = q.view(tokens, d.num_heads, d.head_dim)
        k = k.view(tokens, d.num_kv_heads, d.head_dim)
        v = v.view(tokens, d.num_kv_heads, d.head_dim)
        dense = n_pre > 0 and meta.prefill_dense
        k_rot = torch.empty(k.shape, dtype=k.dtype, device=k.device) if dense else None
        v_dense = torch.empty(v.shape, dtype=v.dtype, device=v.device) if dense else None  # SDPA wants v contiguous
        q = be.fused.rotary_write_kv(q, k, v, cos, sin, k_cache, v_cache, meta.slot_mapping, k_out=k_rot,
                                     v_out=v_dense)
        parts = []
        if dense:  # one fresh prompt chunk: SDPA over its own keys beats reading them back from the pages
            parts.append(self._dense_causal(q[:n_pre], k_rot[:n_pre], v_dense[:n_pre]))
        elif n_pre:
            parts.append(be.paged_prefill_attention(q[:n_pre], k_cache, v_cache, meta.prefill_block_tables,
                                                    meta.prefill_cu_seqlens_q, meta.prefill_seq_lens, self.scale,
                                                    meta.prefill_max_seqlen_q))
        if n_pre < tokens:
            parts.append(be.paged_decode_attention(q[n_pre:], k_cache, v_cache, meta.decode_block_tables,
                                                   meta.decode_seq_lens, self.scale))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        return self._linear(out.reshape(tokens, -1), layer.o_weight)

    def _dense_causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal GQA attention of one sequence's chunk over its own keys: q [T, H, D], k/v [T, KVH, D]."""
        o = F.scaled_dot_product_attention(q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0),
                                           v.contiguous().transpose(0, 1).unsqueeze(0), is_causal=True,
                                           scale=self.scale, enable_gqa=q.shape[1] != k.shape[1])
        return o.squeeze(0).transpose(0, 1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> float32 logits [N, vocab]."""
        return self.raw_logits(hidden).float()

    def raw_logits(self, hidden: torch.Tensor, greedy_out: torch.Tensor | None = None) -> torch.Tensor:
        """[N, hidden] -> logits [N, vocab] in the model's dtype (the decode graph's output: an argmax needs no
        float32 copy, and the sampler converts only when it samples). greedy_out (int64 [N]) receives every row's
        argmax: from the decode matmul's epilogue where the plan put the lm_head on it, else by an argmax kernel."""
        w = self.w.lm_head
        if greedy_out is None:
            return self._linear(hidden, w)
        cfg = self._gemv_plan.get((w.shape[0], w.shape[1], False, hidden.shape[0])) if self._gemv_plan else None
        if cfg is not None and cfg.split_k == 1:
            return self._gemv(hidden, w, None, cfg, argmax_out=greedy_out)
        logits = self._linear(hidden, w)
        argmax = getattr(self.backend.fused, "argmax", None)
        if argmax is not None:
            argmax(logits, out=greedy_out)
        else:
            torch.argmax(logits, dim=-1, out=greedy_out)
        return logits
