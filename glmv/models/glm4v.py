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
from glmv.layers.attention import AttentionMetadata
from glmv.layers.checkpoint import CheckpointError, CheckpointReader, expect_shape
from glmv.layers.kernels import Kernels, select_kernels
from glmv.layers.linear import DenseLinear, DenseLinearLoader, GemvPlan, Linear, LinearLoader
from glmv.layers.quant.linears import PlannedDecode
from glmv.layers.swiglu import GateUpAct
from glmv.models.vision import Glm4vVisionTower
from glmv.options import KernelOptions

VISION_PLAN_ROWS = 16384  # patches: a few large pictures or a short video in one tower call


@dataclass
class DecoderLayerWeights:
    input_norm: torch.Tensor
    qkv: Linear  # [(heads + 2*kv_heads) * head_dim, hidden]: q, k, v stacked, with their bias
    o: Linear
    post_self_attn_norm: torch.Tensor
    post_attention_norm: torch.Tensor  # the pre-MLP norm (transformers' name)
    gate_up: Linear  # [2 * intermediate, hidden]: gate then up (interleaved for the fused gating, dense only)
    down: Linear
    post_mlp_norm: torch.Tensor

    def linears(self) -> tuple[Linear, Linear, Linear, Linear]:
        return self.qkv, self.o, self.gate_up, self.down


@dataclass
class TextWeights:
    embed: torch.Tensor
    layers: list[DecoderLayerWeights]
    norm: torch.Tensor
    lm_head: DenseLinear  # stays dense in every format: the greedy argmax rides in its decode matmul's epilogue
    gate_up_interleaved: bool = False  # set once the model lays the gate/up weights out for the fused gating


def _expect_linear(linear: Linear, shape: tuple[int, int], what: str) -> Linear:
    found = (linear.out_features, linear.in_features)
    if found != shape:
        raise CheckpointError(f"{what}: expected shape {shape}, the checkpoint has {found}.")
    return linear


def load_text_weights(reader: CheckpointReader, dims: TextDims, linears: LinearLoader, plan: GemvPlan) -> TextWeights:
    hd, hidden = dims.head_dim, dims.hidden_size
    qkv_out = (dims.num_heads + 2 * dims.num_kv_heads) * hd
    layers = []
    for i in range(dims.num_layers):
        p = f"layers.{i}."
        attn = [p + f"self_attn.{n}_proj" for n in "qkv"]
        mlp = [p + "mlp.gate_up_proj"] if reader.has_text_module(p + "mlp.gate_up_proj") else \
            [p + "mlp.gate_proj", p + "mlp.up_proj"]  # checkpoints that store gate and up separately
        layers.append(DecoderLayerWeights(
            input_norm=reader.text(p + "input_layernorm.weight"),
            qkv=_expect_linear(linears.load(reader, attn, dims.attention_bias, plan), (qkv_out, hidden), p + "qkv_proj"),
            o=_expect_linear(linears.load(reader, [p + "self_attn.o_proj"], False, plan), (hidden, dims.num_heads * hd),
                             p + "o_proj"),
            post_self_attn_norm=reader.text(p + "post_self_attn_layernorm.weight"),
            post_attention_norm=reader.text(p + "post_attention_layernorm.weight"),
            gate_up=_expect_linear(linears.load(reader, mlp, False, plan), (2 * dims.intermediate_size, hidden),
                                   p + "gate_up_proj"),
            down=_expect_linear(linears.load(reader, [p + "mlp.down_proj"], False, plan),
                                (hidden, dims.intermediate_size), p + "down_proj"),
            post_mlp_norm=reader.text(p + "post_mlp_layernorm.weight"),
        ))
    return TextWeights(
        embed=expect_shape(reader.text("embed_tokens.weight"), (dims.vocab_size, hidden), "embed_tokens"),
        layers=layers,
        norm=reader.text("norm.weight"),
        lm_head=DenseLinear(expect_shape(reader.lm_head(), (dims.vocab_size, hidden), "lm_head"), None, plan),
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
        self.max_positions = max_positions

    def __call__(self, positions: torch.Tensor, dtype: torch.dtype, kernel) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [3, T] long -> cos, sin [T, rot/2] in `dtype`, through the model's mrope_cos_sin kernel."""
        return kernel(positions, self.cos_table, self.sin_table, self.row_of_freq, dtype)


class Glm4vModel:
    """The whole GLM-4.1V: `embed`, `forward` (decoder over a packed batch), `logits`, and `vision` (the ViT).

    Built with its Kernels and its weights' Linear objects handed in; one forward path, whichever kernels run it."""

    def __init__(self, config: ModelConfig, text: TextWeights, vision: Glm4vVisionTower | None,
                 device: torch.device, dtype: torch.dtype, max_positions: int, kernels: Kernels,
                 gate_up_act: GateUpAct, gemv_plan: GemvPlan):
        self.config = config
        self.dims = config.text
        self.w = text
        self.vision = vision
        self.device = device
        self.dtype = dtype
        self.kernels = kernels
        self.gate_up_act = gate_up_act
        self.gemv_plan = gemv_plan
        self.rope = MRotaryEmbedding(self.dims, max_positions, device)
        self._lay_out_gate_up(text)
        self.scale = self.dims.head_dim**-0.5
        d = self.dims
        self._split = [d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim, d.num_kv_heads * d.head_dim]

    @staticmethod
    def build_kernels(kernels: Kernels) -> tuple[GateUpAct, GemvPlan]:
        """The gating dispatcher and the (empty) decode-matmul plan that a model and its vision tower share."""
        plan = GemvPlan(kernels.gemv, kernels.gemv_quantized)
        return GateUpAct(kernels.swiglu, kernels.silu_mul, plan, kernels.plan_swiglu), plan

    def _lay_out_gate_up(self, text: TextWeights) -> None:
        """Interleave the dense gate/up rows (decoder, vision blocks, merger) when this model fuses the gating into
        the matmul. Weights already laid out for another model are refused rather than interleaved twice."""
        act, vision = self.gate_up_act, self.vision
        parts = [text] + ([vision.w] if vision is not None else [])
        if not act.interleaved and any(w.gate_up_interleaved for w in parts):
            raise ValueError("these weights were laid out for the fused SwiGLU gating by another model; load them "
                             "again for a model that gates separately")
        if not act.interleaved or text.gate_up_interleaved:
            return
        with torch.inference_mode():
            for lw in text.layers:
                if isinstance(lw.gate_up, DenseLinear):
                    lw.gate_up.weight = act.prepare(lw.gate_up.weight)
                elif isinstance(lw.gate_up, PlannedDecode):
                    lw.gate_up.interleave_gate_up(act.kernels.interleave_gate_up)
            text.gate_up_interleaved = True
            if vision is not None:
                for blk in vision.w.blocks:
                    blk.gate_up_weight = act.prepare(blk.gate_up_weight)
                vision.w.merger_gate_up = act.prepare(vision.w.merger_gate_up)
                vision.w.gate_up_interleaved = True

    @classmethod
    def load(cls, config: ModelConfig, device: str | torch.device, dtype: torch.dtype, max_positions: int | None = None,
             load_vision: bool = True, kernels: Kernels | None = None,
             linear_loader: LinearLoader | None = None) -> Glm4vModel:
        """Read the checkpoint tensor by tensor onto `device` in `dtype`. `kernels` defaults to the choice
        KernelOptions.from_env() makes here; `linear_loader` to dense weights (bf16 / fp16 / fp32 checkpoints)."""
        device = torch.device(device)
        kernels = kernels or select_kernels(device, dtype, KernelOptions.from_env())
        gate_up_act, plan = cls.build_kernels(kernels)
        reader = CheckpointReader(config.path, device, dtype)
        with torch.inference_mode():
            text = load_text_weights(reader, config.text, linear_loader or DenseLinearLoader(), plan)
            vision = None
            if load_vision:
                theta = ((config.raw.get("vision_config") or {}).get("rope_parameters") or {}).get("rope_theta", 1e4)
                vision = Glm4vVisionTower.load(reader, config.vision, kernels, gate_up_act, float(theta))
        reader.close()
        model = cls(config, text, vision, device, dtype, max_positions or config.text.max_position_embeddings,
                    kernels, gate_up_act, plan)
        model.bytes_loaded = reader.bytes_read
        return model

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.w.embed)

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                meta: AttentionMetadata) -> torch.Tensor:
        """hidden [T, hidden] (input embeddings), positions [3, T] -> final-normed hidden states [T, hidden].

        Each sub-layer's exit (post-norm + residual add) is one step with the next entry norm, and rotary is one
        step with the KV write: one kernel each where the kernels fuse them, the same rounding where they don't."""
        kn, eps = self.kernels, self.dims.rms_norm_eps
        cos, sin = self.rope(positions, hidden.dtype, kn.mrope_cos_sin)
        layers = self.w.layers
        x = kn.rms_norm(hidden, layers[0].input_norm, eps)
        for i, (layer, (k_cache, v_cache)) in enumerate(zip(layers, kv_caches, strict=True)):
            attn = self._attention(x, layer, cos, sin, k_cache, v_cache, meta)
            hidden, x = kn.residual_rms_norm(attn, hidden, layer.post_self_attn_norm, layer.post_attention_norm, eps)
            mlp = layer.down(self.gate_up_act(x, layer.gate_up))
            next_norm = layers[i + 1].input_norm if i + 1 < len(layers) else self.w.norm
            hidden, x = kn.residual_rms_norm(mlp, hidden, layer.post_mlp_norm, next_norm, eps)
        return x

    def _attention(self, x: torch.Tensor, layer: DecoderLayerWeights, cos: torch.Tensor, sin: torch.Tensor,
                   k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        d, kn = self.dims, self.kernels
        tokens, n_pre = x.shape[0], meta.num_prefill_tokens
        q, k, v = layer.qkv(x).split(self._split, dim=-1)
        q = q.view(tokens, d.num_heads, d.head_dim)
        k = k.view(tokens, d.num_kv_heads, d.head_dim)
        v = v.view(tokens, d.num_kv_heads, d.head_dim)
        dense = n_pre > 0 and meta.prefill_dense
        k_rot = torch.empty(k.shape, dtype=k.dtype, device=k.device) if dense else None
        v_dense = torch.empty(v.shape, dtype=v.dtype, device=v.device) if dense else None  # SDPA wants v contiguous
        q = kn.rotary_write_kv(q, k, v, cos, sin, k_cache, v_cache, meta.slot_mapping, k_out=k_rot, v_out=v_dense)
        parts = []
        if dense:  # one fresh prompt chunk: SDPA over its own keys beats reading them back from the pages
            parts.append(self._dense_causal(q[:n_pre], k_rot[:n_pre], v_dense[:n_pre]))
        elif n_pre:
            parts.append(kn.paged_prefill_attention(q[:n_pre], k_cache, v_cache, meta.prefill_block_tables,
                                                    meta.prefill_cu_seqlens_q, meta.prefill_seq_lens, self.scale,
                                                    meta.prefill_max_seqlen_q))
        if n_pre < tokens:
            parts.append(kn.paged_decode_attention(q[n_pre:], k_cache, v_cache, meta.decode_block_tables,
                                                   meta.decode_seq_lens, self.scale))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        return layer.o(out.reshape(tokens, -1))

    def _dense_causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal GQA attention of one sequence's chunk over its own keys: q [T, H, D], k/v [T, KVH, D]."""
        o = F.scaled_dot_product_attention(q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0),
                                           v.contiguous().transpose(0, 1).unsqueeze(0), is_causal=True,
                                           scale=self.scale, enable_gqa=q.shape[1] != k.shape[1])
        return o.squeeze(0).transpose(0, 1)

    # ---- CUDA: matmul plans, timed on the device ----
    def plan_gemv(self, batch_sizes: list[int], report: list | None = None) -> int:
        """Time glmv's Triton decode matmul against cuBLAS for every dense weight shape, and against the format's
        own kernels for every quantized one, at these decode batch sizes, and use it where it is faster. Returns
        how many (shape, batch) pairs use it (0 where there is no such kernel)."""
        if self.device.type != "cuda":
            return 0
        layers = self.w.layers[: min(8, len(self.w.layers))]
        dense, quantized = [], []
        for pick in (lambda lw: lw.qkv, lambda lw: lw.o, lambda lw: lw.gate_up, lambda lw: lw.down):
            linears = [pick(lw) for lw in layers]
            is_gate_up = linears[0] is layers[0].gate_up
            if all(isinstance(lin, DenseLinear) for lin in linears):
                biases = [lin.bias for lin in linears] if linears[0].bias is not None else None
                weights = [lin.weight for lin in linears]
                dense.append((weights, biases, self.gate_up_act.interleaved) if is_gate_up else (weights, biases))
            elif all(isinstance(lin, PlannedDecode) for lin in linears) and \
                    len({lin.packed.tag for lin in linears}) == 1:
                gated = is_gate_up and linears[0].gate_up_interleaved
                quantized.append(self._quantized_plan_group(linears, gated))
        dense.append(([self.w.lm_head.weight], None))
        configs: dict = {}
        if self.kernels.plan_gemv is not None:
            configs.update(self.kernels.plan_gemv(dense, batch_sizes, report))
        if quantized and self.kernels.plan_gemv_quantized is not None:
            configs.update(self.kernels.plan_gemv_quantized(quantized, batch_sizes, report))
        self.gemv_plan.configs = configs
        return len(configs)

    def _quantized_plan_group(self, linears: list, gated: bool):
        """What the planner times for one quantized matmul of the first layers: each Linear as it runs unplanned,
        against the decode matmul on its packed weight (gated where the gate/up is laid out for the epilogue)."""
        from glmv.kernels.triton_gemv import QuantizedPlanGroup

        pairs = self.kernels.swiglu.silu_mul_pairs if gated else None
        gemv = self.kernels.gemv_quantized

        def baseline(x, i):
            lin = linears[i % len(linears)]
            return lin.gate_up_act(x, pairs) if gated else lin(x)

        def candidate(x, i, cfg):
            lin = linears[i % len(linears)]
            return gemv(lin.gathered(x), lin.packed, lin.bias, cfg, gated)

        first = linears[0]

        def reference(x):  # dequantized per call: only a plan that is timed pays for it, one weight at a time
            out = F.linear(x, first.dequantized(), first.bias)
            return pairs(out) if gated else out

        return QuantizedPlanGroup(first.packed, len(linears), first.bias is not None, self.dtype, baseline, candidate,
                                  reference)

    def plan_swiglu(self, max_rows: int, report: list | None = None) -> int:
        """Choose, by timing on this device, the row counts at which the MLP's gate/up matmul runs with its gating
        fused (glmv.layers.swiglu); the text decoder up to `max_rows` (the most prompt tokens in one step), the
        vision tower up to VISION_PLAN_ROWS patches. Returns how many (shape, rows) points use the fused kernel."""
        if not self.gate_up_act.interleaved or self.device.type != "cuda" or self.dtype == torch.float32:
            return 0  # float32 stays on cuBLAS, exact (Triton's float32 dot is tf32)
        groups = []
        dense = [lw.gate_up for lw in self.w.layers[:2] if isinstance(lw.gate_up, DenseLinear)]
        if dense:
            groups.append(([lin.weight for lin in dense], max_rows))
        if self.vision is not None:
            groups.append(([blk.gate_up_weight for blk in self.vision.w.blocks[:4]], VISION_PLAN_ROWS))
        return self.gate_up_act.plan(groups, report)

    # ---- CPU: oneDNN-packed decoder weights ----
    def pack_cpu_weights(self) -> int:
        """Lay the dense decoder weights (and the lm_head) out for oneDNN where the kernels chose packing (CPU,
        16-bit). Returns how many weights were packed (0: not applicable here)."""
        if not self.kernels.cpu_packed:
            return 0
        count = 0
        with torch.inference_mode():
            for lw in self.w.layers:
                for lin in lw.linears():
                    if isinstance(lin, DenseLinear) and lin.pack_for_cpu():
                        count += 1
            count += self.w.lm_head.pack_for_cpu()
        return count

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> float32 logits [N, vocab]."""
        return self.raw_logits(hidden).float()

    def raw_logits(self, hidden: torch.Tensor, greedy_out: torch.Tensor | None = None) -> torch.Tensor:
        """[N, hidden] -> logits [N, vocab] in the model's dtype (the decode graph's output: an argmax needs no
        float32 copy, and the sampler converts only when it samples). greedy_out (int64 [N]) receives every row's
        argmax: from the decode matmul's epilogue where the plan put the lm_head on it, else by an argmax kernel."""
        if greedy_out is None:
            return self.w.lm_head(hidden)
        return self.w.lm_head.with_argmax(hidden, greedy_out, self.kernels.argmax)
