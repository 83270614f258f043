"""`glmv make-tiny-model DIR --preset tiny|small|full|tiny-4.6v`: a random-weight model folder of the real architecture."""

from __future__ import annotations

import argparse

from glmv.cli.help import add_command


def add_parser(sub) -> None:
    p = add_command(
        sub, "make-tiny-model", "write a random-weight GLM-4.1V model folder (for tests and benchmarks)",
        "Write a complete Hugging Face model folder of the GLM-4.1V architecture with deterministic "
        "random weights, offline. tiny: a few MB, for tests; small: ~150M params, for CPU benchmarks; "
        "full: the real 9B dimensions (about 20 GB in bf16), for GPU benchmarks; tiny-4.6v: tiny, in "
        "GLM-4.6V-Flash's shape (128k context, a chat template that renders tools, enable_thinking).",
        run)
    p.add_argument("dir", help="folder to write (replaced if it exists)")
    p.add_argument("--preset", choices=["tiny", "small", "full", "tiny-4.6v"], default="tiny", help="model size (default: tiny)")
    p.add_argument("--device", default="cpu", help="where to generate the random weights (cpu or cuda; default cpu)")


def run(args: argparse.Namespace) -> int:
    from glmv.models.tiny import make_tiny_model

    out = make_tiny_model(args.dir, args.preset, device=args.device)
    print(f"wrote {args.preset} model to {out}")
    return 0
