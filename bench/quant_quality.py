"""What quantizing costs in output quality (issue 13): next-token KL divergence against bf16, and greedy agreement.

For N prompts of random text tokens, bf16 glmv and each quantized copy continue every prompt greedily for T tokens
(batched decode over the paged KV cache, on the decode matmuls the engine plans). Each copy then reads bf16's
prompt + continuation in one forward (teacher forcing). Reported against bf16:
- the mean KL(bf16 || quantized) of the next-token distribution over every position;
- teacher-forced greedy agreement: the share of the T positions where the copy's argmax is bf16's token;
- free-running: how many of its own first greedy tokens equal bf16's, on average.

Random weights (the `full` preset) give logits with little structure, so these figures bound the numerical error
of the formats and kernels; they are not a statement about the trained model's task quality.

    python bench/quant_quality.py --model-dir /tmp/glmv-full [--awq-dir /tmp/glmv-full-awq] [--prompts 256]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from glmv.config import ModelConfig  # noqa: E402
from glmv.layers.attention import AttentionMetadata  # noqa: E402
from glmv.layers.quant import choose_linear_loader  # noqa: E402
from glmv.models.glm4v import Glm4vModel  # noqa: E402

BLOCK = 16
TEXT_VOCAB = 150_000  # below GLM-4's special tokens
DEVICE = "cuda"  # --device


def load(model_dir: Path, quantization: str | None, max_len: int) -> Glm4vModel:
    mc = ModelConfig.from_dir(model_dir)
    loader = choose_linear_loader(mc.raw, quantization, torch.device(DEVICE))
    return Glm4vModel.load(mc, DEVICE, torch.bfloat16, max_positions=max_len + 1, load_vision=False,
                           linear_loader=loader)


def kv_caches(model: Glm4vModel, blocks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    d = model.dims
    shape = (blocks, BLOCK, d.num_kv_heads, d.head_dim)
    return [(torch.zeros(shape, dtype=torch.bfloat16, device=DEVICE), torch.zeros(shape, dtype=torch.bfloat16,
                                                                                  device=DEVICE))
            for _ in range(d.num_layers)]


def forward_logits(model: Glm4vModel, ids: torch.Tensor, caches, first_block: int = 1) -> torch.Tensor:
    """float32 logits at every position of one sequence, written into the cache from block `first_block`."""
    n = ids.numel()
    blocks = -(-n // BLOCK)
    meta = AttentionMetadata(
        slot_mapping=torch.arange(n, device=DEVICE) + first_block * BLOCK, num_prefill_tokens=n,
        prefill_block_tables=torch.arange(first_block, first_block + blocks, dtype=torch.int32,
                                          device=DEVICE).unsqueeze(0),
        prefill_cu_seqlens_q=torch.tensor([0, n], dtype=torch.int32, device=DEVICE),
        prefill_seq_lens=torch.tensor([n], dtype=torch.int32, device=DEVICE), prefill_max_seqlen_q=n,
        prefill_dense=True)
    positions = torch.arange(n, device=DEVICE).expand(3, -1)
    return model.logits(model.forward(model.embed(ids), positions, caches, meta))


def greedy_continuations(model: Glm4vModel, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """[B, L] prompts -> [B, new_tokens] greedy tokens, decoded as one batch over the paged cache."""
    b, length = prompts.shape
    per_seq = -(-(length + new_tokens) // BLOCK)
    caches = kv_caches(model, 1 + b * per_seq)
    tables = (1 + torch.arange(b, device=DEVICE)[:, None] * per_seq
              + torch.arange(per_seq, device=DEVICE)[None, :]).to(torch.int32)
    last = torch.empty(b, dtype=torch.long, device=DEVICE)
    for i in range(b):
        last[i] = forward_logits(model, prompts[i], caches, int(tables[i, 0]))[-1].argmax()
    out = [last.clone()]
    for step in range(new_tokens - 1):
        pos = length + step
        slots = tables[:, pos // BLOCK].long() * BLOCK + pos % BLOCK
        meta = AttentionMetadata(slot_mapping=slots, num_prefill_tokens=0, decode_block_tables=tables,
                                 decode_seq_lens=torch.full((b,), pos + 1, dtype=torch.int32, device=DEVICE))
        positions = torch.full((3, b), pos, dtype=torch.long, device=DEVICE)
        hidden = model.forward(model.embed(out[-1]), positions, caches, meta)
        out.append(model.logits(hidden).argmax(-1))
    return torch.stack(out, dim=1)


def first_disagreements(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row, the first position where two [B, T] token tensors differ (T where they never do)."""
    same = (a == b).int().cumprod(dim=1)
    return same.sum(dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/glmv-full"), help="the bf16 checkpoint")
    ap.add_argument("--awq-dir", type=Path, default=None, help="an AWQ copy of it (bench/awq_checkpoint.py)")
    ap.add_argument("--prompts", type=int, default=256, help="how many random prompts")
    ap.add_argument("--prompt-len", type=int, default=64, help="tokens per prompt")
    ap.add_argument("--new-tokens", type=int, default=128, help="greedy continuation scored for agreement")
    ap.add_argument("--batch", type=int, default=64, help="sequences decoded together for the continuations")
    ap.add_argument("--json", type=Path, default=None,
                    help="where to write the figures (default $OUT/quant_quality.json)")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu to check the script on a small model")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    torch.manual_seed(0)
    max_len = args.prompt_len + args.new_tokens
    vocab = min(TEXT_VOCAB, ModelConfig.from_dir(args.model_dir).text.vocab_size)
    prompts = torch.randint(0, vocab, (args.prompts, args.prompt_len), device=DEVICE)
    copies = [("fp8 (online)", args.model_dir, "fp8")]
    if args.awq_dir is not None:
        copies.append(("AWQ 4-bit", args.awq_dir, None))
    t0 = time.perf_counter()
    results = {}
    with torch.inference_mode():
        models = {"bf16": load(args.model_dir, None, max_len)}
        models.update({name: load(path, q, max_len) for name, path, q in copies})
        for m in models.values():  # decode on the kernels the engine's decode graphs would use
            m.plan_gemv([args.batch])
        runs = {name: torch.cat([greedy_continuations(m, prompts[i:i + args.batch], args.new_tokens)
                                 for i in range(0, args.prompts, args.batch)]) for name, m in models.items()}
        seqs = torch.cat([prompts, runs["bf16"]], dim=1)
        caches = kv_caches(models["bf16"], 2 + max_len // BLOCK)
        sums = {name: {"kl": 0.0, "agree": 0} for name, _, _ in copies}
        for s in seqs:  # teacher forcing: every copy reads bf16's own continuation
            ref = forward_logits(models["bf16"], s, caches).log_softmax(-1)
            for name, _, _ in copies:
                logp = forward_logits(models[name], s, caches).log_softmax(-1)
                sums[name]["kl"] += (ref.exp() * (ref - logp)).sum().item()
                sums[name]["agree"] += int((logp[args.prompt_len - 1:-1].argmax(-1) == s[args.prompt_len:]).sum())
        for name, _, _ in copies:
            firsts = first_disagreements(runs[name], runs["bf16"]).float()
            results[name] = {
                "mean_kl_nats": sums[name]["kl"] / seqs.numel(),
                "teacher_forced_greedy_agreement": sums[name]["agree"] / (args.prompts * args.new_tokens),
                "free_running_identical_tokens_mean": firsts.mean().item(),
                "free_running_all_identical_share": (firsts == args.new_tokens).float().mean().item()}
            r = results[name]
            print(f"{name}: mean KL {r['mean_kl_nats']:.3g} nats over {seqs.numel()} positions; teacher-forced "
                  f"greedy agreement {100 * r['teacher_forced_greedy_agreement']:.1f}% of {args.new_tokens} tokens; "
                  f"free-running, the first {r['free_running_identical_tokens_mean']:.1f} tokens equal bf16's on "
                  f"average ({100 * r['free_running_all_identical_share']:.0f}% of prompts all {args.new_tokens})",
                  flush=True)
    print(f"done in {time.perf_counter() - t0:.1f} s")
    out = args.json or Path(os.environ.get("OUT", ".")) / "quant_quality.json"
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                               "device": torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE,
                               "date": time.strftime("%F %T UTC", time.gmtime())}, indent=1))


if __name__ == "__main__":
    main()
