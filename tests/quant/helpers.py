"""Helpers and fixtures of tests/quant: the real quantizers' venv and the checkpoints they write from the tiny model.

The venv (.cache/quant-tools-venv: llm-compressor and compressed-tensors, CPU torch) is built once by
bench/setup_quant_tools.sh, which `make test` runs first (`make quant-venv`); a no-op once it exists.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from glmv.config import ModelConfig
from glmv.layers.attention import AttentionMetadata
from glmv.layers.quant.loaders import QuantLinearLoader
from glmv.layers.quant.schemes import scheme_from_config
from glmv.models.glm4v import Glm4vModel

REPO = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("ct_writer.py")
PROMPTS = [[5, 17, 300, 41, 599, 2, 77, 123, 64, 8, 250, 31], [500, 3, 3, 3, 450, 12, 410]]  # ids < 657


@pytest.fixture(scope="session")
def quant_python() -> Path:
    subprocess.run(["bash", str(REPO / "bench" / "setup_quant_tools.sh")], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    return REPO / ".cache" / "quant-tools-venv" / "bin" / "python"


def run_tool(python: Path, *args: str) -> str:
    done = subprocess.run([str(python), str(WRITER), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def copy_side_files(src: Path, dst: Path) -> None:
    """Tokenizer and processor files a writer did not save (llm-compressor saves weights and config only)."""
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and not (dst / f.name).exists():
            shutil.copy(f, dst / f.name)


@pytest.fixture(scope="session")
def llmc_checkpoints(quant_python, tiny_model_dir, tmp_path_factory):
    """scheme -> (folder llm-compressor wrote, the same weights decompressed by compressed-tensors to float32)."""
    made = {}

    def get(scheme: str) -> tuple[Path, Path]:
        if scheme not in made:
            root = tmp_path_factory.mktemp(scheme.lower())
            quant, dense = root / "quantized", root / "dequantized"
            run_tool(quant_python, "write", str(tiny_model_dir), str(quant), scheme)
            copy_side_files(Path(tiny_model_dir), quant)
            run_tool(quant_python, "dequantize", str(quant), str(dense))
            made[scheme] = (quant, dense)
        return made[scheme]

    return get


def load_model(folder: Path, quantization: str | None = None, dtype=torch.float32) -> Glm4vModel:
    """The model on the CPU with quantized weights dequantized at load (never on Triton kernels, even under
    TRITON_INTERPRET=1: this is the reference tests/gpu compares the kernels with)."""
    cfg = ModelConfig.from_dir(folder)
    scheme = scheme_from_config(cfg.raw, quantization)
    loader = None if scheme is None else QuantLinearLoader(scheme, kernels=None)
    return Glm4vModel.load(cfg, "cpu", dtype, max_positions=256, load_vision=False, linear_loader=loader)


def prompt_logits(model: Glm4vModel, ids: list[int]) -> torch.Tensor:
    """All-position float32 logits of one text prompt (one prefill over a fresh paged cache)."""
    n, block = len(ids), 16
    blocks = n // block + 2
    t = model.dims
    caches = [(torch.zeros(blocks, block, t.num_kv_heads, t.head_dim, dtype=model.dtype),
               torch.zeros(blocks, block, t.num_kv_heads, t.head_dim, dtype=model.dtype))
              for _ in range(t.num_layers)]
    meta = AttentionMetadata(
        slot_mapping=torch.arange(n) + block, num_prefill_tokens=n,
        prefill_block_tables=torch.arange(1, blocks, dtype=torch.int32).unsqueeze(0),
        prefill_cu_seqlens_q=torch.tensor([0, n], dtype=torch.int32),
        prefill_seq_lens=torch.tensor([n], dtype=torch.int32), prefill_max_seqlen_q=n)
    with torch.inference_mode():
        return model.logits(model.forward(model.embed(torch.tensor(ids)), torch.arange(n).expand(3, -1), caches, meta))


def with_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))


def greedy_tokens(folder: Path, quantization: str | None = None, max_tokens: int = 24) -> list[list[int]]:
    """Greedy continuations of PROMPTS through the real engine on the CPU (bf16, oneDNN-packed weights)."""
    from glmv.llm import LLM
    from glmv.sampling import SamplingParams

    llm = LLM(str(folder), device="cpu", dtype="bfloat16", max_model_len=256, max_num_seqs=4,
              quantization=quantization)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outs = llm.generate([list(p) for p in PROMPTS], params)
    return [o.outputs[0].token_ids for o in outs]
