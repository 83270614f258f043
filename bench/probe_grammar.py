"""Grammar probe (issue 14): xgrammar's mask fill and accept on this host, outside the engine.

    .venv/bin/python bench/probe_grammar.py --model DIR      # DIR: a model folder (its tokenizer and config)

The engine fills a step's constrained rows in one batched call on xgrammar's thread pool (glmv.structured.batch).
This times that call alone, for 64 matchers inside structured_bench's JSON string, at several pool sizes and
PyTorch thread counts, so a slow fill on some host can be told apart from what the engine does around it. Each
round accepts one token per row (which moves every matcher to a new state, as a decode step does) and then fills
all rows; the figures are the median over rounds, per row and per step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from glmv.config import ModelConfig  # noqa: E402
from glmv.structured.batch import GrammarBatch, and_safety_masks  # noqa: E402
from glmv.structured.compiler import GrammarCompiler  # noqa: E402
from glmv.structured.constraint import Constraint  # noqa: E402
from glmv.structured.spec import StructuredSpec  # noqa: E402

SCHEMA = {"type": "object", "properties": {"text": {"type": "string", "minLength": 4000}}, "required": ["text"],
          "additionalProperties": False}


def host_cpus() -> str:
    """What this process may run on: hardware threads, its affinity mask and a cgroup CPU quota, if any."""
    quota = "none"
    cpu_max = Path("/sys/fs/cgroup/cpu.max")
    if cpu_max.is_file():
        limit, period = cpu_max.read_text().split()[:2]
        quota = "none" if limit == "max" else f"{int(limit) / int(period):g} CPUs"
    return (f"os.cpu_count() {os.cpu_count()}, affinity {len(os.sched_getaffinity(0))}, cgroup quota {quota}, "
            f"torch threads {torch.get_num_threads()}")


def round_times(batch: GrammarBatch, constraints: list[Constraint], text_tokens: list[int], vocab: int,
                rounds: int) -> tuple[list[float], list[float]]:
    """Per round: the accept of one token in every row, and the batched fill of every row (seconds)."""
    rows = list(range(len(constraints)))
    bitmask = batch.host_bitmask(len(rows), vocab)
    accepts, fills = [], []
    for r in range(rounds):
        token = text_tokens[r % len(text_tokens)]
        t = time.perf_counter()
        for c in constraints:
            c.accept(token)
        accepts.append(time.perf_counter() - t)
        t = time.perf_counter()
        and_safety_masks(bitmask, batch.fill_masks(bitmask, constraints, rows))
        fills.append(time.perf_counter() - t)
    return accepts, fills


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="model folder whose tokenizer and vocabulary size are used")
    p.add_argument("--rows", type=int, default=64, help="constrained rows per step")
    p.add_argument("--rounds", type=int, default=200, help="accept + fill rounds per setting")
    p.add_argument("--pools", default="1,2,4,8,auto", help="xgrammar pool sizes to try")
    p.add_argument("--torch-threads", default="1,default", help="PyTorch intra-op thread counts to try")
    args = p.parse_args(argv)
    default_threads = torch.get_num_threads()
    print(host_cpus(), flush=True)
    mc = ModelConfig.from_dir(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    vocab = mc.text.vocab_size
    compiler = GrammarCompiler(tokenizer, vocab, mc.eos_token_ids)
    compiled = compiler.compile(StructuredSpec.json_schema(SCHEMA, True, "probe"))
    opening = [compiled.think_start_id, compiled.think_end_id, compiled.answer_open_id]
    opening += tokenizer.encode('{"text": "', add_special_tokens=False)
    text_tokens = tokenizer.encode("the quick brown fox jumps over the lazy dog " * 8, add_special_tokens=False)
    print(f"vocabulary {vocab}, {len(text_tokens)} distinct-step text tokens", flush=True)
    print(f"{'torch threads':>13} {'pool':>5} {'fill us/row':>12} {'fill ms/step':>13} {'accept us/token':>16}")
    for threads in args.torch_threads.split(","):
        torch.set_num_threads(default_threads if threads == "default" else int(threads))
        for pool in args.pools.split(","):
            batch = GrammarBatch("auto" if pool == "auto" else int(pool))
            constraints = [Constraint(compiled, [], None) for _ in range(args.rows)]
            for c in constraints:
                for token in opening:
                    c.accept(token)
            round_times(batch, constraints, text_tokens, vocab, 10)  # warm-up
            accepts, fills = round_times(batch, constraints, text_tokens, vocab, args.rounds)
            fill, accept = statistics.median(fills), statistics.median(accepts)
            print(f"{torch.get_num_threads():>13} {pool:>5} {1e6 * fill / args.rows:>12.1f} {1e3 * fill:>13.3f} "
                  f"{1e6 * accept / args.rows:>16.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
