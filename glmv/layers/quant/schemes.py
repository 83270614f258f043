"""Which quantized format a checkpoint is in, read once from config.json's `quantization_config`.

Every format glmv reads becomes one frozen scheme; every variant it does not read is refused with one sentence
that names what was found and what is supported (QuantizationError), before any tensor is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SUPPORTED = ("compressed-tensors FP8 W8A8 (per-channel or per-tensor, static or dynamic) and W4A16 pack-quantized "
             "(group 128, symmetric or asymmetric); fp8 with 128x128 block scales; AWQ GEMM 4-bit group 128; "
             "GPTQ 4/8-bit group 128 (desc_act false or true, sym or zero-point, gptq or gptq_v2 format); "
             "and --quantization fp8 on a bf16 checkpoint")


class QuantizationError(ValueError):
    """The checkpoint's quantization is one glmv does not serve. The message is one sentence for people."""


def _refuse(found: str) -> QuantizationError:
    return QuantizationError(f"This checkpoint is quantized as {found}, which glmv does not serve; glmv serves "
                             f"{SUPPORTED}.")


@dataclass(frozen=True)
class OnlineFp8:
    """A 16/32-bit checkpoint quantized at load to FP8 E4M3, one scale per output channel."""


@dataclass(frozen=True)
class CompressedFp8:
    """compressed-tensors `float-quantized`: E4M3 weights with a per-channel ([out, 1]) or per-tensor scale;
    activations quantized per token at run time (dynamic) or with a stored `input_scale` (static)."""

    weight_strategy: str  # channel | tensor
    static_input: bool
    ignore: tuple[str, ...] = ()


@dataclass(frozen=True)
class BlockFp8:
    """Hugging Face fine-grained FP8: E4M3 weights with a float32 `weight_scale_inv` per [128, 128] block."""

    block: tuple[int, int] = (128, 128)
    ignore: tuple[str, ...] = ()


@dataclass(frozen=True)
class IntLayer:
    """One layer's integer weight options (GPTQ's `dynamic` may change them per module)."""

    bits: int
    group_size: int
    symmetric: bool
    act_order: bool = False


@dataclass(frozen=True)
class CompressedInt:
    """compressed-tensors `pack-quantized` W4A16 (or W8A16): int32 words along the input dim, scales per group."""

    layer: IntLayer
    ignore: tuple[str, ...] = ()


@dataclass(frozen=True)
class AwqGemm:
    """AutoAWQ's GEMM layout: qweight [in, out/8] int32 in AWQ's interleaved nibble order, qzeros, fp16 scales."""

    layer: IntLayer
    ignore: tuple[str, ...] = ()  # modules_to_not_convert: stored dense


@dataclass(frozen=True)
class Gptq:
    """GPTQ (gptqmodel / AutoGPTQ): qweight [in*bits/32, out], qzeros [groups, out*bits/32], scales, g_idx.

    v1 (`checkpoint_format` gptq) stores every zero point minus one; v2 stores it as it is. `dynamic` holds
    gptqmodel's per-module overrides in file order: (+/-, compiled pattern, options)."""

    base: IntLayer
    zero_offset: int  # 1 for v1 checkpoints, 0 for gptq_v2
    dynamic: tuple[tuple[str, re.Pattern, dict], ...] = field(default=())

    def layer_for(self, module: str) -> IntLayer | None:
        """The options of this module (`model.language_model.layers.3.mlp.down_proj`), None if it is skipped."""
        for sign, pattern, options in self.dynamic:
            if pattern.match(module):
                if sign == "-":
                    return None
                return _int_layer(options, self.base, "gptq")
        return self.base


Scheme = OnlineFp8 | CompressedFp8 | BlockFp8 | CompressedInt | AwqGemm | Gptq


def _int_layer(cfg: dict, base: IntLayer | None, what: str) -> IntLayer:
    bits = int(cfg.get("bits", base.bits if base else 4))
    group = int(cfg.get("group_size", base.group_size if base else 128))
    sym = bool(cfg.get("sym", base.symmetric if base else True))
    act_order = bool(cfg.get("desc_act", base.act_order if base else False))
    if bits not in (4, 8):
        raise _refuse(f"{what} with {bits}-bit weights (4 and 8 bits are served)")
    if group != 128:
        raise _refuse(f"{what} with group_size {group} (group 128 is served)")
    return IntLayer(bits, group, sym, act_order)


def scheme_from_config(raw_config: dict, quantization: str | None) -> Scheme | None:
    """The scheme of this checkpoint (its config.json as a dict) and the `--quantization` flag; None for plain
    dense weights. Refuses unsupported formats and flags that contradict the checkpoint."""
    qc = raw_config.get("quantization_config") or (raw_config.get("text_config") or {}).get("quantization_config")
    if quantization not in (None, "fp8"):
        raise QuantizationError(f"--quantization {quantization!r} is not served; glmv serves --quantization fp8 "
                                "(online FP8 of a bf16 checkpoint), or reads a pre-quantized checkpoint's format "
                                "from its config.json.")
    if qc is None:
        return OnlineFp8() if quantization == "fp8" else None
    method = str(qc.get("quant_method", "")).lower()
    if quantization == "fp8" and method != "fp8":
        raise QuantizationError(f"--quantization fp8 asks to quantize a bf16 checkpoint at load, but this one is "
                                f"already quantized ({method or 'unknown method'}); drop the flag to serve it as it is.")
    if method == "compressed-tensors":
        return _compressed_tensors(qc)
    if method == "fp8":
        return _block_fp8(qc)
    if method == "awq":
        return _awq(qc)
    if method == "gptq":
        return _gptq(qc)
    raise _refuse(f"quant_method {method or 'missing'!r}")


def _block_fp8(qc: dict) -> BlockFp8:
    block = qc.get("weight_block_size")
    fmt = qc.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise _refuse(f"fp8 with fmt {fmt!r} (E4M3 is served)")
    if block is None:
        raise _refuse("fp8 without weight_block_size (per-tensor fp8 checkpoints; [128, 128] blocks are served)")
    if list(block) != [128, 128]:
        raise _refuse(f"fp8 with weight_block_size {list(block)} ([128, 128] is served)")
    if qc.get("activation_scheme", "dynamic") != "dynamic":
        raise _refuse(f"fp8 with activation_scheme {qc.get('activation_scheme')!r} (dynamic is served)")
    return BlockFp8((128, 128), tuple(qc.get("modules_to_not_convert") or ()))


def _awq(qc: dict) -> AwqGemm:
    version = str(qc.get("version", "gemm")).lower()
    if version != "gemm":
        raise _refuse(f"AWQ version {version!r} (the GEMM layout is served)")
    if not qc.get("zero_point", True):
        raise _refuse("AWQ without zero points (zero_point true is served)")
    bits = int(qc.get("bits", qc.get("w_bit", 4)))
    group = int(qc.get("group_size", qc.get("q_group_size", 128)))
    if bits != 4:
        raise _refuse(f"AWQ with {bits}-bit weights (4-bit is served)")
    if group != 128:
        raise _refuse(f"AWQ with group_size {group} (group 128 is served)")
    return AwqGemm(IntLayer(4, 128, symmetric=False), tuple(qc.get("modules_to_not_convert") or ()))


def _gptq(qc: dict) -> Gptq:
    fmt = str(qc.get("checkpoint_format", "gptq")).lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise _refuse(f"GPTQ with checkpoint_format {fmt!r} (gptq and gptq_v2 are served)")
    if qc.get("is_marlin_format") or qc.get("format") == "marlin":
        raise _refuse("GPTQ in Marlin's layout (the plain GPTQ layout is served)")
    if qc.get("lm_head"):
        raise _refuse("GPTQ with the lm_head quantized too (lm_head true; a 16-bit lm_head is served)")
    base = _int_layer(qc, None, "GPTQ")
    dynamic = []
    for key, options in (qc.get("dynamic") or {}).items():
        sign, pattern = ("-", key[2:]) if key.startswith("-:") else ("+", key[2:] if key.startswith("+:") else key)
        if sign == "+":
            _int_layer(options, base, "GPTQ (dynamic override)")  # refuse unsupported overrides before loading
        dynamic.append((sign, re.compile(pattern), dict(options)))
    return Gptq(base, zero_offset=1 if fmt == "gptq" else 0, dynamic=tuple(dynamic))


def _compressed_tensors(qc: dict) -> CompressedFp8 | CompressedInt:
    groups = qc.get("config_groups") or {}
    if len(groups) != 1:
        raise _refuse(f"compressed-tensors with {len(groups)} config groups (one group for every Linear is served)")
    group = next(iter(groups.values()))
    fmt = group.get("format") or qc.get("format")
    targets = group.get("targets") or []
    if targets != ["Linear"]:
        raise _refuse(f"compressed-tensors targeting {targets} (targets ['Linear'] is served)")
    w = group.get("weights") or {}
    a = group.get("input_activations")
    ignore = tuple(qc.get("ignore") or ())
    if qc.get("sparsity_config") or qc.get("transform_config"):
        raise _refuse("compressed-tensors with sparsity or transforms (dense quantized weights are served)")
    if fmt in ("float-quantized", "naive-quantized") and w.get("type") == "float":
        if w.get("num_bits") != 8:
            raise _refuse(f"compressed-tensors float weights of {w.get('num_bits')} bits (FP8 is served)")
        strategy = w.get("strategy")
        if strategy not in ("channel", "tensor"):
            raise _refuse(f"compressed-tensors FP8 with weight strategy {strategy!r} (channel and tensor are served)")
        if a is not None and (a.get("type") != "float" or a.get("num_bits") != 8):
            raise _refuse("compressed-tensors FP8 weights with non-FP8 activations (W8A8 FP8 and FP8 weight-only "
                          "are served)")
        static = bool(a is not None and not a.get("dynamic", False))
        if a is not None and static and a.get("strategy") != "tensor":
            raise _refuse(f"compressed-tensors static FP8 activations by {a.get('strategy')!r} (per-tensor is served)")
        return CompressedFp8(strategy, static, ignore)
    if fmt == "pack-quantized":
        if w.get("type") != "int":
            raise _refuse(f"compressed-tensors pack-quantized {w.get('type')} weights (int is served)")
        if a is not None:
            raise _refuse("compressed-tensors pack-quantized with quantized activations (W4A16 is served)")
        if w.get("strategy") != "group":
            raise _refuse(f"compressed-tensors pack-quantized by {w.get('strategy')!r} (group 128 is served)")
        if w.get("actorder") not in (None, "weight", False):
            raise _refuse(f"compressed-tensors pack-quantized with actorder {w.get('actorder')!r} (none or weight "
                          "is served)")
        layer = _int_layer({"bits": w.get("num_bits"), "group_size": w.get("group_size"),
                            "sym": w.get("symmetric", True)}, None, "compressed-tensors pack-quantized")
        if layer.bits != 4:
            raise _refuse("compressed-tensors pack-quantized 8-bit (W4A16 is served)")
        return CompressedInt(layer, ignore)
    raise _refuse(f"compressed-tensors format {fmt!r} with {w.get('type')} weights")


def is_ignored(module: str, ignore: tuple[str, ...]) -> bool:
    """compressed-tensors `ignore` (module names or `re:` patterns) and HF/AutoAWQ `modules_to_not_convert`
    (names or name fragments such as "visual")."""
    for entry in ignore:
        if entry.startswith("re:"):
            if re.match(entry[3:], module):
                return True
        elif module == entry or entry in module.split(".") or module.endswith("." + entry):
            return True
    return False
