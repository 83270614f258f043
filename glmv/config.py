"""Frozen configs built at the doors: ModelConfig (read off a checkpoint), EngineConfig, ServerConfig.

Everything inside glmv takes these typed objects; nothing below the doors parses flags or JSON.
Invalid values raise ValueError with a message that says what to change.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from glmv.options import KernelOptions, RuntimeOptions

ARCHITECTURE = "Glm4vForConditionalGeneration"
MODEL_TYPES = ("glm4v",)


@dataclass(frozen=True)
class TextDims:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    partial_rotary_factor: float
    mrope_section: tuple[int, ...]
    max_position_embeddings: int
    attention_bias: bool = True

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


@dataclass(frozen=True)
class VisionDims:
    depth: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    out_hidden_size: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    in_channels: int
    image_size: int
    rms_norm_eps: float


@dataclass(frozen=True)
class ModelConfig:
    """What glmv needs to know about a checkpoint, read from its config.json and generation_config.json."""

    path: Path
    text: TextDims
    vision: VisionDims
    image_token_id: int
    eos_token_ids: tuple[int, ...]
    generation_defaults: dict = field(default_factory=dict, compare=False, hash=False)
    raw: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def from_dir(cls, path: str | Path, generation_config: str | None = "auto") -> ModelConfig:
        """Parse a checkpoint folder. Accepts both the released (rope_scaling/partial_rotary_factor at top level)
        and transformers 5 (rope_parameters) shapes of config.json.

        generation_config: "auto" reads the folder's generation_config.json; "vllm"/None ignores it;
        any other value is a folder or file to read it from.
        """
        path = Path(path)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ValueError(f"{path} has no config.json; it is not a Hugging Face model folder.")
        raw = json.loads(cfg_file.read_text())
        archs = raw.get("architectures") or []
        if raw.get("model_type") not in MODEL_TYPES and ARCHITECTURE not in archs:
            found = raw.get("model_type") or ", ".join(archs) or "unknown"
            raise ValueError(
                f"{path} holds a '{found}' model, not GLM-4.1V ({ARCHITECTURE}, model_type glm4v). "
                "glmv serves GLM-4.1V-9B-Thinking and checkpoints of the same architecture "
                "(GLM-4.1V-9B-Base, GLM-4.6V-Flash)."
            )
        t = raw.get("text_config", raw)
        v = raw.get("vision_config", {})
        rope = dict(t.get("rope_parameters") or {})
        legacy = t.get("rope_scaling") or {}
        partial = rope.get("partial_rotary_factor", t.get("partial_rotary_factor", 0.5))
        theta = rope.get("rope_theta", t.get("rope_theta", 10000.0))
        mrope = rope.get("mrope_section", legacy.get("mrope_section", [8, 12, 12]))
        heads = t.get("num_attention_heads", 32)
        hidden = t.get("hidden_size", 4096)
        head_dim = t.get("head_dim") or hidden // heads
        text = TextDims(
            hidden_size=hidden,
            num_layers=t.get("num_hidden_layers", 40),
            num_heads=heads,
            num_kv_heads=t.get("num_key_value_heads", 2),
            head_dim=head_dim,
            intermediate_size=t.get("intermediate_size", 13696),
            vocab_size=t.get("vocab_size", 151552),
            rms_norm_eps=t.get("rms_norm_eps", 1e-5),
            rope_theta=float(theta),
            partial_rotary_factor=float(partial),
            mrope_section=tuple(mrope),
            max_position_embeddings=t.get("max_position_embeddings", 65536),
            attention_bias=t.get("attention_bias", True),
        )
        if sum(text.mrope_section) * 2 != text.rotary_dim:
            raise ValueError(
                f"{path}/config.json: sum(mrope_section)={sum(text.mrope_section)} must equal "
                f"head_dim*partial_rotary_factor/2={text.rotary_dim // 2}."
            )
        vision = VisionDims(
            depth=v.get("depth", 24),
            hidden_size=v.get("hidden_size", 1536),
            num_heads=v.get("num_heads", 12),
            intermediate_size=v.get("intermediate_size", 13696),
            out_hidden_size=v.get("out_hidden_size", 4096),
            patch_size=v.get("patch_size", 14),
            temporal_patch_size=v.get("temporal_patch_size", 2),
            spatial_merge_size=v.get("spatial_merge_size", 2),
            in_channels=v.get("in_channels", 3),
            image_size=v.get("image_size", 336),
            rms_norm_eps=v.get("rms_norm_eps", 1e-5),
        )
        gen: dict = {}
        if generation_config not in (None, "vllm"):
            gen_path = path if generation_config == "auto" else Path(generation_config)
            gen_file = gen_path / "generation_config.json" if gen_path.is_dir() else gen_path
            if gen_file.is_file():
                gen = json.loads(gen_file.read_text())
            elif generation_config != "auto":
                raise ValueError(f"--generation-config {generation_config}: no generation_config.json there.")
        eos = gen.get("eos_token_id", t.get("eos_token_id", raw.get("eos_token_id")))
        if eos is None:
            eos = []
        eos_ids = tuple(eos) if isinstance(eos, list) else (eos,)
        return cls(
            path=path,
            text=text,
            vision=vision,
            image_token_id=raw.get("image_token_id", 151343),
            eos_token_ids=eos_ids,
            generation_defaults={k: gen[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty") if k in gen},
            raw=raw,
        )


@dataclass(frozen=True)
class EngineConfig:
    """How an engine runs a model. Built by the doors from flags (mirroring `vllm serve`)."""

    model: str
    engine: str = "glmv"  # glmv | transformers | vllm
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    max_model_len: int | None = None  # None: the checkpoint's max_position_embeddings
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 4096
    block_size: int = 16
    kv_cache_memory: int | None = None  # bytes; None: from gpu_memory_utilization (CUDA) or 2 GiB (CPU)
    gpu_memory_utilization: float = 0.90
    max_gpu_memory: int | None = None  # bytes: a cap on what glmv takes of the GPU (simulates a 16/24 GB card)
    quantization: str | None = None  # fp8: quantize a bf16 checkpoint at load (glmv.layers.quant)
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    chat_template: str | None = None
    generation_config: str | None = "auto"
    hub: str = "huggingface"
    revision: str | None = None
    trust_remote_code: bool = False
    seed: int = 0
    max_thinking_tokens: int | None = None
    tensor_parallel_size: int = 1
    max_waiting_requests: int = 1024
    # Bounds, in bytes, of the caches that keep media between requests (0 turns one off; docs/INPUTS.md): decoded
    # pictures and pages, the processor's patches (vLLM's --mm-processor-cache-gb), the vision tower's outputs
    # (device memory on CUDA).
    media_cache_bytes: int = 512 << 20
    mm_processor_cache_bytes: int = 1 << 30
    vision_cache_bytes: int = 512 << 20
    # vllm engine only (glmv/backends/vllm.py): pipeline stages, the Python that has vLLM (None: GLMV_VLLM_PYTHON,
    # .cache/vllm-cpu-venv, then the current one), and extra vLLM engine arguments passed through as they are.
    pipeline_parallel_size: int = 1
    vllm_python: str | None = None
    vllm_engine_args: dict = field(default_factory=dict, compare=False, hash=False)
    # Which kernels glmv's engine may use (GLMV_* switches, read once by glmv.options) and when Python's collector
    # runs while its loop serves (GLMV_GC).
    kernels: KernelOptions = field(default_factory=KernelOptions.from_env, compare=False, hash=False)
    gc_mode: str = field(default_factory=lambda: RuntimeOptions.from_env().gc_mode, compare=False, hash=False)
    # glmv engine only: replicas behind the one server, one process per GPU (or per CPU share); glmv/backends/replicas.
    data_parallel_size: int = 1

    def __post_init__(self) -> None:
        if self.engine not in ("glmv", "transformers", "vllm"):
            raise ValueError(f"--engine must be glmv, transformers or vllm, got {self.engine!r}.")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {self.device!r}.")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32", "bf16", "fp16", "fp32", "half", "float"):
            raise ValueError(f"--dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}.")
        if self.max_model_len is not None and self.max_model_len < 16:
            raise ValueError(f"--max-model-len must be at least 16, got {self.max_model_len}.")
        if self.max_num_seqs < 1:
            raise ValueError(f"--max-num-seqs must be at least 1, got {self.max_num_seqs}.")
        if self.max_num_batched_tokens < 16:
            raise ValueError(f"--max-num-batched-tokens must be at least 16, got {self.max_num_batched_tokens}.")
        if self.block_size not in (8, 16, 32, 64, 128):
            raise ValueError(f"--block-size must be one of 8, 16, 32, 64, 128, got {self.block_size}.")
        if not 0.05 <= self.gpu_memory_utilization <= 0.99:
            raise ValueError(f"--gpu-memory-utilization must be in [0.05, 0.99], got {self.gpu_memory_utilization}.")
        if self.max_gpu_memory is not None and self.max_gpu_memory < 1 << 30:
            raise ValueError(f"--max-gpu-memory must be at least 1GiB, got {self.max_gpu_memory} bytes.")
        if self.quantization not in (None, "fp8"):
            raise ValueError(f"--quantization must be fp8 (or left out), got {self.quantization!r}.")
        if self.hub not in ("huggingface", "modelscope"):
            raise ValueError(f"--hub must be huggingface or modelscope, got {self.hub!r}.")
        if self.max_thinking_tokens is not None and self.max_thinking_tokens < 0:
            raise ValueError(f"--max-thinking-tokens must be >= 0, got {self.max_thinking_tokens}.")
        if self.tensor_parallel_size < 1 or self.pipeline_parallel_size < 1:
            raise ValueError("--tensor-parallel-size and --pipeline-parallel-size must be at least 1.")
        if self.data_parallel_size < 1:
            raise ValueError(f"--data-parallel-size must be at least 1, got {self.data_parallel_size}.")
        if self.data_parallel_size > 1 and self.engine != "glmv":
            raise ValueError(f"--data-parallel-size runs replicas of glmv's own engine (--engine glmv); with --engine "
                             f"{self.engine} it is not available (for vLLM pass --vllm-engine-args "
                             "'{\"data_parallel_size\": N}', see docs/SCALE_OUT.md).")
        if self.data_parallel_size > 1 and self.device.startswith("cuda:"):
            raise ValueError(f"--data-parallel-size gives each replica one GPU of those visible; --device "
                             f"{self.device} names one. Use --device cuda and CUDA_VISIBLE_DEVICES.")
        for flag, value in (("--media-cache-gb", self.media_cache_bytes),
                            ("--mm-processor-cache-gb", self.mm_processor_cache_bytes),
                            ("--vision-cache-gb", self.vision_cache_bytes)):
            if value < 0:
                raise ValueError(f"{flag} must be >= 0 (0 turns the cache off), got {value / 2**30:g}.")

    @cached_property
    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    @cached_property
    def torch_dtype(self):
        import torch

        names = {
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
            "half": torch.float16,
            "float32": torch.float32,
            "fp32": torch.float32,
            "float": torch.float32,
        }
        if self.dtype == "auto":
            return torch.bfloat16
        return names[self.dtype]


_BYTE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'16GiB', '24GB', '1.5gib' or a plain number of bytes -> bytes (GiB = 2^30, GB = 10^9)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _BYTE_UNITS:
        raise ValueError(f"{text!r} is not a size; write bytes or a number with a unit such as 16GiB, 24GB, 512MiB.")
    return int(float(m.group(1)) * _BYTE_UNITS[unit])
