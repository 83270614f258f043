"""`glmv quantize MODEL OUT --method fp8`: write an FP8 checkpoint in compressed-tensors format (vLLM loads it too)."""

from __future__ import annotations

import argparse

from glmv.cli.help import add_command


def add_parser(sub) -> None:
    p = add_command(
        sub, "quantize", "write an FP8 copy of a bf16 checkpoint (compressed-tensors format, loads in glmv and vLLM)",
        "Quantize the text decoder's linear weights of a GLM-4.1V checkpoint to FP8 E4M3 with one scale "
        "per output channel (activations: dynamic per token), in the compressed-tensors format llm-compressor "
        "writes. Embeddings, norms, lm_head and the vision tower are copied unchanged. See docs/QUANTIZATION.md.",
        run)
    p.add_argument("model", help="a local model folder or hub id (bf16, fp16 or fp32)")
    p.add_argument("out", help="folder to write")
    p.add_argument("--method", choices=["fp8"], required=True, help="fp8: E4M3, per-channel scales")
    p.add_argument("--hub", choices=["huggingface", "modelscope"], default="huggingface")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from glmv.layers.quant.writer import count_tensors, write_fp8_checkpoint
    from glmv.models.loader import resolve_model

    src = resolve_model(args.model, hub=args.hub)
    with tqdm(total=count_tensors(src), unit="tensor", desc="quantizing to fp8") as bar:
        n = write_fp8_checkpoint(src, Path(args.out), progress=bar.update)
    print(f"wrote {args.out}: {n} decoder weights in FP8 (compressed-tensors float-quantized)")
    return 0
