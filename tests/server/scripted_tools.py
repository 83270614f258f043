"""A real tiny GLM-4.6V-Flash checkpoint (preset tiny-4.6v) whose weights make it follow a script that depends on
the conversation so far: it calls one tool, then (after that tool's result) another, then answers.

tests/cli/scripted_model.py switches every decoder layer off, so the next token depends on the current token only;
that cannot tell the first turn of an agent loop from the second (both prompts end with `<|assistant|>`). Here the
first layer's attention is kept, as a counter: its queries are zero, so every position attends evenly to all
before it, and its values read one embedding dimension that only marker tokens have (`<tool_response>` and
`<tool_call>`). The attention output's direction is the markers' counts so far, which the post-attention RMSNorm
scales to a fixed size; everything else is off as before. The residual at a position is then the token's embedding
plus that count direction, and lm_head is fitted (a linear classifier, multiclass hinge loss) so that each
(token, counts) of the script votes for its successor with a logit of about TARGET_LOGIT and a margin of at least
MARGIN over every other token (checked; the fit fails loudly otherwise).

Each turn of the script says how many markers its prompt holds (the template's tool instructions hold one
`<tool_call>`; each earlier call and each tool result adds one), the prompt's last token and what the model writes.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TARGET_LOGIT = 100.0
MARKERS = ("<tool_response>", "<tool_call>")
_MARKER_VALUE = 3.0  # a marker's embedding in its own dimension (others ~0.08)
# Keeps the averaged count far above the RMSNorm epsilon; unequal gains spread the count directions apart.
_VALUE_GAIN = (3000.0, 1000.0)
MARGIN = 10.0  # the least logit margin of every script step (checked)
_FLAG_SIZE = 1.0  # size of the counts' direction in the residual (a token embedding is ~0.9)


@dataclass(frozen=True)
class Turn:
    counts: tuple[int, int]  # (<tool_response>, <tool_call>) in the prompt
    start: str  # the prompt's last token
    text: str  # what the model writes, special tokens spelled out, ending with an end token


# Tools of the script: add(key: int) and print(words: str).
WEATHER_TURN = Turn((0, 1), "<|assistant|>",
                    "<think> Let me think</think> First<tool_call>add\n<arg_key>key</arg_key>"
                    "<arg_value> 42</arg_value></tool_call><|observation|>")
NO_THINK_TOOL_TURN = Turn((0, 1), "</think>", " First<tool_call>add\n<arg_key>key</arg_key>"
                          "<arg_value> 42</arg_value></tool_call><|observation|>")
SECOND_TURN = Turn((1, 2), "<|assistant|>",
                   "<think> Then I count</think><tool_call>print\n<arg_key>words</arg_key>"
                   "<arg_value>picture</arg_value></tool_call><|observation|>")
FINAL_TURN = Turn((2, 3), "<|assistant|>", "<think> First</think> lazy dog<|user|>")
PLAIN_TURN = Turn((0, 0), "<|assistant|>", "<think> The quick brown fox</think> lazy dog<|user|>")
NO_THINK_TURN = Turn((0, 0), "</think>", " lazy dog<|user|>")
SCRIPT = (WEATHER_TURN, NO_THINK_TOOL_TURN, SECOND_TURN, FINAL_TURN, PLAIN_TURN, NO_THINK_TURN)


def _fit_rows(phi: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """lm_head rows of the script's successors: every step's successor scores TARGET_LOGIT, the others at most
    TARGET_LOGIT - 4 * MARGIN among the successors (aimed at; MARGIN is checked), and at most 0 (other tokens' rows are 0) short of it."""
    torch.manual_seed(0)
    rows = torch.zeros(classes, phi.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([rows], lr=1.0)
    onehot = torch.nn.functional.one_hot(y, classes).bool()
    for _ in range(3000):
        logits = phi @ rows.T
        right = logits[onehot]
        wrong = logits.masked_fill(onehot, -1e9).max(dim=1).values
        loss = (torch.relu(4 * MARGIN - (right - wrong)) ** 2).mean() + ((right - TARGET_LOGIT) ** 2).mean() * 0.1
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = phi @ rows.T
        right = logits[onehot]
        wrong = logits.masked_fill(onehot, -1e9).max(dim=1).values.clamp(min=0.0)
        worst = float((right - wrong).min())
    if worst < MARGIN:
        raise ValueError(f"The script's steps cannot be told apart by a margin of {MARGIN} (best {worst:.1f}).")
    return rows.detach()


def make_scripted_tools_model(tiny46_dir: Path, out_dir: Path, script: tuple[Turn, ...] = SCRIPT) -> Path:
    """Copy the tiny-4.6v model at tiny46_dir to out_dir and rewrite its weights to follow `script`."""
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(tiny46_dir, out_dir)
    tok = AutoTokenizer.from_pretrained(str(out_dir))
    marker_ids = [tok.convert_tokens_to_ids(m) for m in MARKERS]
    weights_file = out_dir / "model.safetensors"
    w = load_file(str(weights_file))
    p = "model.language_model."
    embed = w[p + "embed_tokens.weight"].double()
    hidden = embed.shape[1]
    m = len(MARKERS)
    embed[:, :m] = 0.0
    for k, mid in enumerate(marker_ids):
        embed[mid, k] = _MARKER_VALUE
    w[p + "embed_tokens.weight"] = embed.float()
    for name in w:
        if name.startswith(p + "layers.") and name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            w[name].zero_()
    a = p + "layers.0.self_attn."
    w[a + "q_proj.weight"].zero_()
    w[a + "q_proj.bias"].zero_()
    w[a + "v_proj.weight"].zero_()
    w[a + "v_proj.bias"].zero_()
    for k in range(m):  # value dim k of KV head 0 reads marker dim k; query head 0 writes it back to dim k
        w[a + "v_proj.weight"][k, k] = _VALUE_GAIN[k]
        w[a + "o_proj.weight"][k, k] = 1.0
    post = w[p + "layers.0.post_self_attn_layernorm.weight"]
    post.zero_()
    post[:m] = _FLAG_SIZE / math.sqrt(hidden)

    # What the counter adds for given counts: the direction of sum_k count_k * value_k, RMS-normed.
    def rms_x(row: torch.Tensor) -> torch.Tensor:
        return row * torch.rsqrt(row.pow(2).mean() + 1e-5)

    values = [_VALUE_GAIN[k] * rms_x(embed[mid])[k].item() for k, mid in enumerate(marker_ids)]
    norm = w[p + "norm.weight"].double()

    def feature(token: int, counts: tuple[int, ...]) -> torch.Tensor:
        h = embed[token].clone()
        attn = torch.zeros(hidden, dtype=torch.float64)
        for k, c in enumerate(counts):
            attn[k] = c * values[k]
        if attn.abs().sum() > 0:
            h += rms_x(attn) * post.double()
        return rms_x(h) * norm

    steps: dict[tuple[int, tuple[int, ...]], int] = {}
    for turn in script:
        ids = [tok.convert_tokens_to_ids(turn.start), *tok.encode(turn.text, add_special_tokens=False)]
        counts = list(turn.counts)
        for pos in range(len(ids) - 1):
            if pos > 0 and ids[pos] in marker_ids:
                counts[marker_ids.index(ids[pos])] += 1
            g = math.gcd(*counts) or 1  # the counter sees the counts' direction only
            key = (ids[pos], tuple(c // g for c in counts))
            if steps.setdefault(key, ids[pos + 1]) != ids[pos + 1]:
                raise ValueError(f"The script asks token {ids[pos]} with counts {counts} for two successors.")
    keys = list(steps)
    phi = torch.stack([feature(t, c) for t, c in keys])
    targets = sorted(set(steps.values()))
    y = torch.tensor([targets.index(steps[k]) for k in keys])
    rows = _fit_rows(phi, y, len(targets))
    lm_head = torch.zeros_like(w["lm_head.weight"], dtype=torch.float64)
    for j, t in enumerate(targets):
        lm_head[t] = rows[j]
    w["lm_head.weight"] = lm_head.to(w["lm_head.weight"].dtype)
    save_file(w, str(weights_file), metadata={"format": "pt"})
    return out_dir
