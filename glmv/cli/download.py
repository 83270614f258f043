"""`glmv download MODEL`: fetch a checkpoint from the Hugging Face Hub or ModelScope, with a progress bar."""

from __future__ import annotations

import argparse

from glmv.cli.help import add_command
from glmv.models.loader import DEFAULT_MODEL


def add_parser(sub) -> None:
    p = add_command(sub, "download", "download a checkpoint", "Download a GLM-4.1V checkpoint (configs, tokenizer, "
                    "safetensors) into the hub cache or a folder, with a progress bar.", run)
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"hub id (default: {DEFAULT_MODEL})")
    p.add_argument("--hub", choices=["huggingface", "modelscope"], default="huggingface",
                   help="where to download from (default: huggingface; honours HF_HOME, HF_ENDPOINT, HF_TOKEN)")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    p.add_argument("--local-dir", default=None, help="write into this folder instead of the hub cache")


def run(args: argparse.Namespace) -> int:
    from glmv.models.loader import download_model

    path = download_model(args.model, hub=args.hub, revision=args.revision, local_dir=args.local_dir)
    print(f"{args.model} is in {path}")
    return 0
