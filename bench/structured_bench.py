"""Grammar benchmark (issue 14): what constrained decoding costs, per token and in decode throughput.

    .venv/bin/python bench/structured_bench.py                  # CPU, the `small` preset, bf16, 1 thread
    .venv/bin/python bench/structured_bench.py --device cuda    # the same on a GPU (--preset full for the 9B dims)

Runs --concurrency requests (64) at once through glmv's engine in process (glmv.LLM), once per phase: with 0%, 50%
and 100% of them constrained by a JSON schema (--shares, repeated --rounds times, interleaved), each request making
exactly --max-tokens tokens (unconstrained ones with ignore_eos; the schema, a JSON string of at least 4,000
characters, cannot end sooner). A thinking budget of 0
makes the engine write `</think><answer>` at once, so every constrained token is masked by the grammar. Reported per
phase: decode throughput (generated tokens / wall time after the prefill step) and the grammar's host cost per
constrained token (xgrammar's mask fill and the matchers' accept, timed around GrammarBatch.fill_masks, the
engine's batched fill, and Constraint.accept, and divided by the rows filled and the tokens accepted); the goal in
the issue is under 10% of throughput lost at 100% constrained. A GPU phase of 64 tokens lasts about half a second,
so one phase against one other is noise (+-10% seen between two 0% phases on the H200): with --rounds above 1 the
summary compares each share's median phase with the 0% median, and prints each share's range beside it.

On the CPU the bench sets its own thread count (--threads, 1): with PyTorch's default (every core) the decode steps
of this small model run about 3x slower on two cores, and far slower still when other work shares them; the load
average at the start and the end is printed beside the figures for that reason.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from glmv.llm import LLM  # noqa: E402
from glmv.sampling import SamplingParams  # noqa: E402
from glmv.structured.batch import GrammarBatch  # noqa: E402
from glmv.structured.compiler import GrammarCompiler  # noqa: E402
from glmv.structured.constraint import Constraint  # noqa: E402
from glmv.structured.spec import StructuredSpec  # noqa: E402

SCHEMA = {"type": "object", "properties": {"text": {"type": "string", "minLength": 4000}}, "required": ["text"],
          "additionalProperties": False}


@dataclass
class GrammarClock:
    """Host time spent in the grammar, summed over calls (wraps the batched fill and the per-token accept)."""

    fill_s: float = 0.0
    fills: int = 0
    accept_s: float = 0.0
    accepts: int = 0
    rejected: int = 0  # tokens the grammar did not accept (a mask that let a wrong token through)

    def install(self) -> None:
        fill, accept = GrammarBatch.fill_masks, Constraint.accept

        def timed_fill(batch, bitmask, constraints, rows):
            t = time.perf_counter()
            safety = fill(batch, bitmask, constraints, rows)
            self.fill_s += time.perf_counter() - t
            self.fills += len(rows)
            return safety

        def timed_accept(constraint, token):
            before = constraint.rejected
            t = time.perf_counter()
            accept(constraint, token)
            self.accept_s += time.perf_counter() - t
            self.accepts += 1
            self.rejected += constraint.rejected - before

        GrammarBatch.fill_masks, Constraint.accept = timed_fill, timed_accept

    def reset(self) -> None:
        self.fill_s = self.accept_s = 0.0
        self.fills = self.accepts = self.rejected = 0


def run_phase(llm: LLM, compiled, prompts: list[str], share: float, max_tokens: int, clock: GrammarClock) -> dict:
    n = len(prompts)
    constrained = round(n * share)
    params = [SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=i, thinking_budget=0, structured=compiled)
              if i < constrained else
              SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=i, ignore_eos=True, thinking_budget=0)
              for i in range(n)]
    clock.reset()
    first_token_at: list[float] = []
    t0 = time.perf_counter()
    engine = llm.engine
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        engine.add_request(f"r{i}", llm._prompt(prompt), p)
    tokens = 0
    finished: dict[str, int] = {}
    while engine.has_unfinished_requests():
        outs = engine.step()
        now = time.perf_counter()
        new = sum(len(c.token_ids) for o in outs for c in o.outputs)
        if new and not first_token_at:
            first_token_at.append(now)
            clock.reset()  # the grammar's share is taken over the decode steps, as the throughput is
        tokens += new
        for o in outs:
            for c in o.outputs:
                if c.finish_reason is not None:
                    finished[c.finish_reason.value] = finished.get(c.finish_reason.value, 0) + 1
    t1 = time.perf_counter()
    decode_s = t1 - first_token_at[0]
    masked = max(clock.fills, 1)
    return {"constrained": constrained, "requests": n, "tokens": tokens, "wall_s": round(t1 - t0, 3),
            "decode_tok_per_s": round((tokens - n) / decode_s, 1),
            "grammar_ms_per_token": round(1e3 * (clock.fill_s + clock.accept_s) / masked, 4),
            "fill_ms_per_token": round(1e3 * clock.fill_s / masked, 4),
            "accept_ms_per_token": round(1e3 * clock.accept_s / max(clock.accepts, 1), 4),
            "grammar_share_of_decode_pct": round(100 * (clock.fill_s + clock.accept_s) / decode_s, 2),
            "constrained_tokens": clock.fills, "rejected_tokens": clock.rejected, "finished": finished}


def summarize(rows: list[dict]) -> list[dict]:
    """Each share's median phase against the unconstrained median (the first share's when no phase is at 0%)."""
    by_share: dict[int, list[dict]] = {}
    for r in rows:
        by_share.setdefault(r["constrained"], []).append(r)
    base = statistics.median(r["decode_tok_per_s"] for r in by_share.get(0, next(iter(by_share.values()))))
    out = []
    for constrained, phases in sorted(by_share.items()):
        speeds = [r["decode_tok_per_s"] for r in phases]
        median = statistics.median(speeds)
        out.append({"constrained": f"{constrained}/{phases[0]['requests']}", "phases": len(phases),
                    "median_tok_per_s": round(median, 1), "min_tok_per_s": min(speeds), "max_tok_per_s": max(speeds),
                    "vs_unconstrained_pct": round(100 * median / base - 100, 1),
                    "grammar_share_of_decode_pct": round(statistics.median(
                        r["grammar_share_of_decode_pct"] for r in phases), 2)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--preset", default="small", help="glmv.models.tiny preset (small on the CPU; full on a GPU)")
    p.add_argument("--model", default=None, help="a model folder instead of a preset")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per request")
    p.add_argument("--shares", default="0,0.5,1", help="fractions of the requests constrained, one phase each")
    p.add_argument("--rounds", type=int, default=1, help="times the --shares phases run, interleaved (medians if > 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    if args.device == "cpu":
        torch.set_num_threads(args.threads)

    model = Path(args.model) if args.model else ROOT / ".cache" / "models" / args.preset
    if not (model / "config.json").is_file():
        from glmv.models.tiny import make_tiny_model

        print(f"building the '{args.preset}' preset under {model} (once) ...", flush=True)
        make_tiny_model(model, args.preset)
    llm = LLM(model, device=args.device, dtype=args.dtype, max_model_len=1024,
              max_num_seqs=max(args.concurrency, 1))
    compiler = GrammarCompiler(llm.tokenizer, llm.model_config.text.vocab_size, llm.model_config.eos_token_ids)
    t = time.perf_counter()
    compiled = compiler.compile(StructuredSpec.json_schema(SCHEMA, True, "bench"))
    compile_ms = 1e3 * (time.perf_counter() - t)
    prompts = [f"[gMASK]<sop><|user|>\nRequest {i}: write a long text.<|assistant|>\n" for i in
               range(args.concurrency)]
    clock = GrammarClock()
    clock.install()
    run_phase(llm, compiled, prompts, 0.5, 8, clock)  # warm-up at full width (allocations, packing, graphs)
    shares = [float(s) for s in args.shares.split(",")]
    rows = [run_phase(llm, compiled, prompts, s, args.max_tokens, clock) for _ in range(args.rounds) for s in shares]
    base = rows[0]["decode_tok_per_s"]
    wall_s, load_end = time.perf_counter() - started, os.getloadavg()[0]
    threads = torch.get_num_threads() if args.device == "cpu" else None
    device = f"{args.device} ({threads} thread{'s' if threads != 1 else ''})" if threads else args.device
    print(f"device {device}, model {model.name}, {args.concurrency} concurrent, {args.max_tokens} tokens each; "
          f"schema compiled in {compile_ms:.1f} ms; whole run {wall_s:.0f} s, load average {load_start:.2f} at the "
          f"start, {load_end:.2f} at the end")
    print(f"{'constrained':>12} {'decode tok/s':>13} {'vs 0%':>7} {'grammar ms/tok':>15} {'fill':>8} {'accept':>8} "
          f"{'grammar % of decode':>20} {'rejected':>9}  finished")
    for r in rows:
        share = f"{r['constrained']}/{r['requests']}"
        print(f"{share:>12} {r['decode_tok_per_s']:>13} {100 * r['decode_tok_per_s'] / base - 100:>6.1f}% "
              f"{r['grammar_ms_per_token'] if r['constrained'] else '-':>15} "
              f"{r['fill_ms_per_token'] if r['constrained'] else '-':>8} "
              f"{r['accept_ms_per_token'] if r['constrained'] else '-':>8} "
              f"{r['grammar_share_of_decode_pct']:>19}% {r['rejected_tokens'] if r['constrained'] else '-':>9}  "
              f"{r['finished']}")
    summary = summarize(rows) if args.rounds > 1 else []
    if summary:
        print(f"medians over {args.rounds} rounds:")
        print(f"{'constrained':>12} {'phases':>7} {'median tok/s':>13} {'range':>17} {'vs 0% median':>13} "
              f"{'grammar % of decode':>20}")
        for r in summary:
            print(f"{r['constrained']:>12} {r['phases']:>7} {r['median_tok_per_s']:>13} "
                  f"{r['min_tok_per_s']:>8}-{r['max_tok_per_s']:<8} {r['vs_unconstrained_pct']:>12}% "
                  f"{r['grammar_share_of_decode_pct']:>19}%")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "compile_ms": compile_ms, "wall_s": round(wall_s, 1),
                                              "load_average": [load_start, load_end], "rows": rows,
                                              "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
