"""Writes an FP8 checkpoint in compressed-tensors' format (`glmv quantize MODEL OUT --method fp8`).

The text decoder's matmul weights become E4M3 with one bf16 scale per output channel (`weight_scale` [out, 1]),
activations declared dynamic per token: llm-compressor's FP8_DYNAMIC scheme, so vLLM and glmv both load it. The
embedding, norms, lm_head and the vision tower are copied as they are (listed in `ignore`). Shard by shard: one
source shard is in memory at a time.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from glmv.layers.checkpoint import TEXT_PREFIXES
from glmv.layers.quant.schemes import QuantizationError
from glmv.layers.quant.unpack import quantize_fp8_rows

DECODER_LINEAR = re.compile(r"^(?:" + "|".join(re.escape(p) for p in TEXT_PREFIXES) + r")layers\.\d+\."
                            r"(?:self_attn\.[qkvo]_proj|mlp\.(?:gate_up|gate|up|down)_proj)\.weight$")
COMPRESSED_TENSORS_VERSION = "0.19.0"  # the format version written (the one llm-compressor 0.14 writes)


def fp8_quantization_config() -> dict:
    """compressed-tensors' description of FP8 W8A8: channel-wise static weights, per-token dynamic activations."""
    common = {"num_bits": 8, "type": "float", "symmetric": True, "group_size": None, "block_structure": None,
              "actorder": None, "observer_kwargs": {}}
    return {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "quantization_status": "compressed",
        "config_groups": {"group_0": {
            "targets": ["Linear"], "format": "float-quantized", "output_activations": None,
            "weights": {**common, "strategy": "channel", "dynamic": False, "observer": "minmax"},
            "input_activations": {**common, "strategy": "token", "dynamic": True, "observer": None},
        }},
        "ignore": ["lm_head", "re:.*visual.*"],
        "kv_cache_scheme": None,
        "sparsity_config": {},
        "transform_config": {},
        "global_compression_ratio": None,
        "version": COMPRESSED_TENSORS_VERSION,
    }


def write_fp8_checkpoint(src: Path, out: Path, progress: Callable[[int], object] | None = None) -> int:
    """Quantize `src` (a bf16/fp16/fp32 GLM-4.1V folder) into `out`. Returns how many weights were quantized.
    `progress(n)` is told of every tensor written (a progress bar's update)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    src, out = Path(src), Path(out)
    config = json.loads((src / "config.json").read_text())
    if config.get("quantization_config") is not None:
        raise QuantizationError(f"{src} is already quantized "
                                f"({config['quantization_config'].get('quant_method', 'unknown')}); glmv quantize "
                                "reads bf16, fp16 or fp32 checkpoints.")
    if out.resolve() == src.resolve():
        raise ValueError("OUT must be a different folder from MODEL")
    out.mkdir(parents=True, exist_ok=True)
    shards = sorted(src.glob("*.safetensors"))
    weight_map: dict[str, str] = {}
    quantized = 0
    for shard in shards:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                if DECODER_LINEAR.match(name):
                    q = quantize_fp8_rows(t)
                    module = name[: -len(".weight")]
                    tensors[name] = q.weight
                    tensors[module + ".weight_scale"] = q.scale.reshape(-1, 1).to(torch.bfloat16)  # exact: see quantize_fp8_rows
                    quantized += 1
                else:
                    tensors[name] = t
                if progress is not None:
                    progress(1)
        save_file(tensors, str(out / shard.name), metadata={"format": "pt"})
        weight_map.update({n: shard.name for n in tensors})
    if (src / "model.safetensors.index.json").is_file():
        total = sum((out / s.name).stat().st_size for s in shards)
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy(f, out / f.name)
    config["quantization_config"] = fp8_quantization_config()
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if quantized == 0:
        raise QuantizationError(f"{src} has no text-decoder linear weights glmv recognizes; nothing was quantized.")
    return quantized


def count_tensors(src: Path) -> int:
    from safetensors import safe_open

    total = 0
    for shard in sorted(Path(src).glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            total += len(list(f.keys()))
    return total
