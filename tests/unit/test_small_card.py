"""bench/small_card.py's pieces: sizes as --max-gpu-memory spells them, the context the start-up log states, and the verdict
(answered, and the process inside the card, CUDA context included)."""

from __future__ import annotations

import argparse

import pytest

from bench.small_card import GiB, LongPrompt, SmallCardResult, context_from_log
from glmv.cli.serve import byte_size


def test_sizes():  # --cap takes the sizes --max-gpu-memory takes
    assert byte_size("16GiB") == 16 * GiB
    assert byte_size("24GB") == 24 * 10**9
    assert byte_size("17179869184") == 16 * GiB
    with pytest.raises(argparse.ArgumentTypeError):
        byte_size("sixteen")


def test_context_from_the_start_up_line():
    line = "glmv.runner: KV cache: 5240 blocks of 16 tokens (3.20 GiB): 83824 tokens of context fit (--max-model-len 32768)"
    assert context_from_log("other\n" + line) == 83824
    assert context_from_log("no such line") is None


def result(device_mib: float | None, completion_tokens: int = 64) -> SmallCardResult:
    answer = LongPrompt(32000, completion_tokens, 1.0, 2.0)
    return SmallCardResult(16 * GiB, 38000, 30.0, answer, [answer], device_mib, 15000.0)


def test_fits_only_inside_the_card_and_answered():
    assert result(16_000).fits
    assert not result(17_066).fits  # the first H200 run: the CUDA context on top of a full cap
    assert not result(None).fits  # nvidia-smi did not list the process: not shown to fit
    assert not result(15_000, completion_tokens=0).fits
