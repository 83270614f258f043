"""A real tiny GLM-4.1V checkpoint whose weights make it say one known thing: `<think>R</think><answer>A</answer>`.

Why: the doors (web page, `glmv chat`, `glmv batch`) must be tested end to end through a real engine, but a random
tiny model writes random tokens, so nothing about thinking/answer structure could be asserted. Here the decoder
layers are switched off (o_proj and down_proj zeroed, so every layer adds exactly 0 to the residual) and lm_head is
rewritten so that the logits at a position depend only on that position's token: token s votes, with a margin of
about 100 logits, for its successor in a chain

    last prompt token ("\\n" after <|assistant|>) -> <think> -> R... -> </think> -> <answer> -> A... -> </answer> (EOS)

The folder is a complete checkpoint (config, tokenizer, processor); images and video still run through the vision
tower and the processor, they just do not change the words. Any engine (reference or glmv's own) and any sampling
temperature up to 2 produce the same text.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TARGET_LOGIT = 100.0


@dataclass(frozen=True)
class ScriptedModel:
    path: Path
    reasoning: str  # what the model thinks (between <think> and </think>)
    answer: str  # what it answers (between <answer> and </answer>)


def _final_hidden(embed: torch.Tensor, norm_weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The decoder's output at a position whose layers add nothing: the final RMSNorm of the token embedding."""
    x = embed.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.double()


def make_scripted_model(tiny_dir: Path, out_dir: Path, reasoning: str = " The quick brown fox",
                        answer: str = " lazy dog", answer_loops: bool = False) -> ScriptedModel:
    """Copy the tiny model at tiny_dir to out_dir and rewrite its weights to follow the chain above.

    answer_loops: the answer's last token leads back to its first instead of to </answer>, so the model answers
    " lazy dog lazy dog ..." until max_tokens (long answers, for tests of a filling context)."""
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(tiny_dir, out_dir)
    tok = AutoTokenizer.from_pretrained(str(out_dir))

    def ids(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    (start,) = ids("<|assistant|>\n")[-1:]
    answer_ids = ids(answer)
    chain = [start, *ids("<think>"), *ids(reasoning), *ids("</think>"), *ids("<answer>"), *answer_ids,
             *(answer_ids[:1] if answer_loops else ids("</answer>"))]
    sources = chain[:-1]
    if len(set(sources)) != len(sources):
        raise ValueError(f"Tokens of the script repeat ({chain}); pick texts whose tokens are all distinct.")

    weights_file = out_dir / "model.safetensors"
    weights = load_file(str(weights_file))
    prefix = "model.language_model."
    for name in weights:
        if name.startswith(prefix + "layers.") and name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            weights[name].zero_()
    embed = weights[prefix + "embed_tokens.weight"]
    norm = weights[prefix + "norm.weight"]
    lm_head = torch.zeros_like(weights["lm_head.weight"], dtype=torch.float64)
    for source, target in zip(sources, chain[1:], strict=True):
        h = _final_hidden(embed[source], norm, 1e-5)
        lm_head[target] = h * (TARGET_LOGIT / h.pow(2).sum())
    weights["lm_head.weight"] = lm_head.to(weights["lm_head.weight"].dtype)
    save_file(weights, str(weights_file), metadata={"format": "pt"})
    return ScriptedModel(path=out_dir, reasoning=reasoning.strip(), answer=answer.strip())
