"""CheckpointReader: reads a checkpoint's safetensors one tensor at a time, straight onto the target device and dtype.

A 9B checkpoint is 20 GB; reading it tensor by tensor through `safe_open(device=...)` never builds a CPU copy of the
whole model, so load time is bounded by disk and host-to-device bandwidth. Names are resolved through the prefixes
the released checkpoints and transformers use (`model.language_model.*`, `model.visual.*`, `lm_head.weight`), with
the older flat layout (`model.layers.*`, `visual.*`) accepted as well.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT_PREFIXES = ("model.language_model.", "model.", "language_model.model.", "language_model.")
VISION_PREFIXES = ("model.visual.", "visual.", "model.vision_tower.")
LM_HEAD_NAMES = ("lm_head.weight", "model.lm_head.weight", "language_model.lm_head.weight")
# tensors beside (or instead of) `<module>.weight` that say a module is stored quantized: compressed-tensors and
# fp8 scales, AutoAWQ / GPTQ packing, compressed-tensors pack-quantized
QUANTIZED_SIBLINGS = ("weight_scale", "weight_scale_inv", "qweight", "qzeros", "weight_packed")


class CheckpointError(ValueError):
    """The checkpoint folder lacks a tensor glmv needs, or has one of the wrong shape."""


def open_safetensors(file: Path, device: str = "cpu"):
    """safe_open, with a damaged file (cut short by a failed download, not safetensors at all) said in one sentence."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(file), framework="pt", device=device)
    except (SafetensorError, OSError) as exc:
        size = file.stat().st_size if file.exists() else 0
        raise CheckpointError(
            f"{file} cannot be read as safetensors ({exc}; the file is {size:,} bytes): it is probably cut short by "
            "an interrupted download. Download the checkpoint again (glmv download MODEL).") from None


class CheckpointReader:
    """Maps tensor names to their safetensors file and reads them one by one onto `device` as `dtype`."""

    def __init__(self, path: str | Path, device: str | torch.device, dtype: torch.dtype):
        self.path = Path(path)
        self.device = torch.device(device)
        self.dtype = dtype
        index = self.path / "model.safetensors.index.json"
        files: dict[str, Path] = {}
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = {name: self.path / fname for name, fname in weight_map.items()}
        else:
            for f in sorted(self.path.glob("*.safetensors")):
                with open_safetensors(f) as handle:
                    files.update({name: f for name in handle.keys()})
        if not files:
            raise CheckpointError(f"{self.path} holds no *.safetensors weights.")
        self._files = files
        self._handles: dict[Path, object] = {}
        # safetensors wants "cuda:0", not "cuda"; CPU stays "cpu".
        if self.device.type == "cuda":
            index_ = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self._load_device = f"cuda:{index_}"
        else:
            self._load_device = "cpu"
        self.bytes_read = 0

    def names(self) -> list[str]:
        return list(self._files)

    def _handle(self, file: Path):
        handle = self._handles.get(file)
        if handle is None:
            handle = open_safetensors(file, self._load_device)
            self._handles[file] = handle
        return handle

    def resolve(self, suffix: str, prefixes: tuple[str, ...]) -> str | None:
        for prefix in prefixes:
            if prefix + suffix in self._files:
                return prefix + suffix
        return None

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor by its exact name, on the reader's device, cast to `dtype` (default: the reader's)."""
        file = self._files.get(name)
        if file is None:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing from the checkpoint.")
        tensor = self._handle(file).get_tensor(name)
        self.bytes_read += tensor.numel() * tensor.element_size()
        return tensor.to(dtype=dtype or self.dtype)

    def has_text_module(self, module: str) -> bool:
        """Whether the checkpoint holds any tensor of this text module (`layers.0.mlp.gate_up_proj`), whatever
        format its tensors are in (`.weight`, `.qweight`, `.weight_packed`, ...)."""
        dotted = [prefix + module + "." for prefix in TEXT_PREFIXES]
        return any(name.startswith(tuple(dotted)) for name in self._files)

    def text(self, suffix: str, required: bool = True) -> torch.Tensor | None:
        return self._tower_tensor(suffix, TEXT_PREFIXES, "text", required)

    def vision(self, suffix: str, required: bool = True) -> torch.Tensor | None:
        return self._tower_tensor(suffix, VISION_PREFIXES, "vision", required)

    def _tower_tensor(self, suffix: str, prefixes: tuple[str, ...], tower: str, required: bool) -> torch.Tensor | None:
        name = self.resolve(suffix, prefixes)
        if suffix.endswith(".weight"):
            for candidate in [name] if name is not None else [prefix + suffix for prefix in prefixes]:
                self._refuse_quantized(candidate.removesuffix(".weight"))
        if name is None:
            if required:
                raise CheckpointError(f"{self.path}: {tower} tensor '*{suffix}' is missing from the checkpoint.")
            return None
        return self.get(name)

    def lm_head(self) -> torch.Tensor:
        for name in LM_HEAD_NAMES:
            self._refuse_quantized(name.removesuffix(".weight"))
        for name in LM_HEAD_NAMES:
            if name in self._files:
                return self.get(name)
        # Tied checkpoints (not GLM-4.1V, but harmless to accept) reuse the embedding.
        return self.text("embed_tokens.weight")

    def _refuse_quantized(self, module: str) -> None:
        """A module glmv reads in 16 bits (the vision tower, the lm_head, norms, embeddings) that the checkpoint
        stores quantized: read as plain weights (an E4M3 weight without its scale, or the embedding standing in for
        a packed lm_head) it would compute something else without a word, so it is refused with a sentence."""
        found = [f"{module}.{s}" for s in QUANTIZED_SIBLINGS if f"{module}.{s}" in self._files]
        if found:
            raise CheckpointError(
                f"{self.path}: '{module}' is stored quantized ({', '.join(found[:3])}), where glmv reads 16-bit "
                "weights: it serves the text decoder's linear layers quantized (as the config's quantization_config "
                "declares them) and the vision tower, lm_head, embeddings and norms in 16 bits, as AutoAWQ, "
                "gptqmodel (lm_head false, its default) and llm-compressor (ignore: [\"lm_head\", "
                "\"re:.*visual.*\"]) leave them.")

    def close(self) -> None:
        self._handles.clear()


def expect_shape(tensor: torch.Tensor, shape: tuple[int, ...], what: str) -> torch.Tensor:
    if tuple(tensor.shape) != tuple(shape):
        raise CheckpointError(f"{what}: expected shape {tuple(shape)}, the checkpoint has {tuple(tensor.shape)}.")
    return tensor
