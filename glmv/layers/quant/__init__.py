"""Quantized decoder weights: formats read off `quantization_config`, their loaders, and online FP8.

glmv.layers.quant.schemes detects the checkpoint's format (or refuses it in one sentence), unpack turns each
on-disk layout into dense or kernel-ready tensors, linears holds the quantized Linear objects (FP8, 4/8-bit
integer), and loaders builds them behind the LinearLoader seam. `choose_linear_loader` is the one entry point.
"""

from glmv.layers.quant.loaders import choose_linear_loader
from glmv.layers.quant.schemes import QuantizationError, scheme_from_config

__all__ = ["QuantizationError", "choose_linear_loader", "scheme_from_config"]
