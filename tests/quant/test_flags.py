"""--quantization and --max-gpu-memory as the doors read them, and the KV-cache line that says what fits."""

from __future__ import annotations

import argparse
import logging

import pytest

from glmv.cli.serve import add_engine_args, engine_config_from_args
from glmv.config import EngineConfig, parse_bytes


@pytest.mark.parametrize("text,value", [("16GiB", 16 * 2**30), ("24GB", 24 * 10**9), ("1.5gib", 3 * 2**29),
                                        ("512MiB", 512 * 2**20), ("17179869184", 16 * 2**30)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["16 parsecs", "GiB", "-3GB", ""])
def test_parse_bytes_refuses(text):
    with pytest.raises(ValueError, match="is not a size"):
        parse_bytes(text)


def test_flags_reach_the_engine_config():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    add_engine_args(p)
    cfg = engine_config_from_args(p.parse_args(["m", "--quantization", "fp8", "--max-gpu-memory", "16GiB"]))
    assert (cfg.quantization, cfg.max_gpu_memory) == ("fp8", 16 * 2**30)
    with pytest.raises(SystemExit):
        p.parse_args(["m", "--max-gpu-memory", "lots"])
    with pytest.raises(ValueError, match="at least 1GiB"):
        EngineConfig(model="m", max_gpu_memory=1000)


def test_startup_says_how_many_tokens_fit(tiny_model_dir, caplog):
    from glmv.llm import LLM

    with caplog.at_level(logging.INFO, logger="glmv"):
        LLM(str(tiny_model_dir), device="cpu", dtype="float32", max_model_len=256, kv_cache_memory=1 << 20,
            quantization="fp8")
    lines = [r.getMessage() for r in caplog.records if "tokens of context fit" in r.getMessage()]
    # 1 MiB / (2 layers * 2 * 16 tokens * 2 kv heads * 32 dims * 4 bytes) = 64 blocks, one kept back: 63 * 16 tokens
    assert lines and "1008 tokens of context fit" in lines[0]
