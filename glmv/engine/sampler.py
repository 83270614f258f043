"""Sampler: next tokens for a batch of sequences from their logits, on the device, with one host sync per step.

Per row, in this order (transformers' processor order): repetition penalty (over prompt and output tokens),
frequency/presence penalties (output tokens), logit_bias, min_tokens (stop ids masked), the structured-output grammar's
token mask (constrained rows only: glmv/structured/mask.py), then greedy argmax or temperature -> top_k -> top_p ->
min_p -> a draw. Logprobs are those of the model's raw distribution.

Random draws use the exponential-race form of the Gumbel-max trick, argmax(p_i / E_i) with E_i ~ Exp(1), where the
noise E is a pure function of (sequence seed, output step, token id) computed with an integer hash on the device.
So a seeded request gives the same tokens whatever else shares its batch, with no torch.Generator per request and no
Python loop over rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from glmv.structured.batch import GrammarBatch
from glmv.structured.mask import apply_masks, masked_rows

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) on int64 tensors holding values in [0, 2^32)."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


def race_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab_hash: torch.Tensor) -> torch.Tensor:
    """Exp(1) noise [B, V] from per-row seeds and steps (int64 [B]) and the hashed vocab indices [V]."""
    k = _mix32(seeds & _MASK32)
    k = _mix32(k ^ ((seeds >> 32) & _MASK32))
    k = _mix32(k ^ (steps & _MASK32))
    k2 = _mix32(k ^ 0x5BD1E995)
    x = _mix32(k[:, None] ^ vocab_hash[None, :])
    x = _mix32((x + k2[:, None]) & _MASK32)
    return -torch.log(_open_uniform(x))


def _open_uniform(x: torch.Tensor) -> torch.Tensor:
    """float32 uniforms strictly inside (0, 1) from 32-bit hashes: the top 23 bits plus one half, so every value is
    exact in float32 and none rounds to 1 (24 bits do: 2^24 - 0.5 rounds up, and -log(1) = 0 noise turns a
    masked token's 0 / 0 into the NaN that argmax picks)."""
    return ((x >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[float | None]  # the chosen token's logprob, per row (None where not asked)
    top_logprobs: list[list[tuple[int, float]] | None]


def _num_tokens(row) -> int:
    """Tokens of the sequence so far, counting one sampled on the device and not yet appended (engine overlap)."""
    return len(row.token_ids) + getattr(row, "num_pending", 0)


def _lengths(rows, num_tokens: Sequence[int] | None) -> Sequence[int]:
    if num_tokens is None:
        return [_num_tokens(r) for r in rows]
    if len(num_tokens) != len(rows):
        raise ValueError(f"num_tokens has {len(num_tokens)} entries for {len(rows)} rows")
    return num_tokens


def _padded(rows: list[list[int]], pad: int, device: torch.device) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0) or 1
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out.to(device, non_blocking=True)


class Sampler:
    """`sample(logits, rows)`: rows are sequences with `params`, `seed`, `token_ids`, `num_prompt_tokens` and
    `constraint` (a glmv.structured Constraint or None). `grammar` fills the constrained rows' masks together."""

    def __init__(self, vocab_size: int, device: torch.device | str, eos_token_ids: tuple[int, ...] = (),
                 grammar: GrammarBatch | None = None):
        self.vocab_size = vocab_size
        self.grammar = grammar if grammar is not None else GrammarBatch()
        self.device = torch.device(device)
        self.eos_token_ids = tuple(eos_token_ids)
        idx = torch.arange(vocab_size, dtype=torch.long, device=self.device)
        self.vocab_hash = _mix32((idx * 0x9E3779B1 + 0x7F4A7C15) & _MASK32)

    def _stop_ids(self, params) -> list[int]:
        ids = [] if params.ignore_eos else list(self.eos_token_ids)
        return ids + [t for t in params.stop_token_ids if t not in ids]

    @staticmethod
    def needs_history(params) -> bool:
        """Whether sampling for these params reads the sequence's earlier tokens (penalties): such a row cannot be
        sampled while its previous token is still on the device. A structured output's mask is the grammar's
        state after every earlier token, so it needs them too."""
        return (params.repetition_penalty != 1.0 or bool(params.frequency_penalty) or bool(params.presence_penalty)
                or params.structured is not None)

    def plain_greedy(self, rows) -> bool:
        """Whether every row's token is the argmax of its raw logits: greedy, no logprobs, and no processor that
        changes a logit (penalties, logit_bias, min_tokens still masking the stop ids). Such a batch can take the
        argmax the decode graph computed (`launch_tokens`) instead of sampling."""
        for r in rows:
            p = r.params
            if not p.greedy or p.logprobs is not None or p.logit_bias or self.needs_history(p) \
                    or r.constraint is not None:
                return False
            if p.min_tokens and _num_tokens(r) - r.num_prompt_tokens < p.min_tokens:
                return False
        return True

    def launch_tokens(self, tokens: torch.Tensor, rows) -> PendingSample:
        """Hand over tokens chosen on the device already (the decode graph's argmax, for a `plain_greedy` batch)."""
        return PendingSample(_to_host(tokens), [None] * len(rows), 0, tokens)

    def apply_logits_processors(self, logits: torch.Tensor, rows, num_tokens: Sequence[int] | None = None
                                ) -> torch.Tensor:
        """Penalties, logit_bias and min_tokens, on a float32 copy of the logits (`num_tokens` as in `launch`)."""
        dev, vocab = logits.device, logits.shape[1]
        lengths = _lengths(rows, num_tokens)
        params = [r.params for r in rows]
        rep = [p.repetition_penalty for p in params]
        if any(x != 1.0 for x in rep):
            seen_ids = _padded([r.token_ids for r in rows], vocab, dev)
            seen = torch.zeros(len(rows), vocab + 1, dtype=torch.bool, device=dev).scatter_(1, seen_ids, True)
            seen = seen[:, :vocab]
            pen = torch.tensor(rep, dtype=logits.dtype, device=dev).unsqueeze(1)
            logits = torch.where(seen, torch.where(logits < 0, logits * pen, logits / pen), logits)
        freq = [p.frequency_penalty for p in params]
        pres = [p.presence_penalty for p in params]
        if any(freq) or any(pres):
            out_ids = _padded([r.token_ids[r.num_prompt_tokens:] for r in rows], vocab, dev)
            counts = torch.zeros(len(rows), vocab + 1, dtype=logits.dtype, device=dev)
            counts.scatter_add_(1, out_ids, torch.ones_like(out_ids, dtype=logits.dtype))
            counts = counts[:, :vocab]
            f = torch.tensor(freq, dtype=logits.dtype, device=dev).unsqueeze(1)
            pr = torch.tensor(pres, dtype=logits.dtype, device=dev).unsqueeze(1)
            logits = logits - f * counts - pr * (counts > 0).to(logits.dtype)
        bias_rows, bias_cols, bias_vals = [], [], []
        stop_rows, stop_cols = [], []
        for i, (r, p) in enumerate(zip(rows, params, strict=True)):
            for tok, val in p.logit_bias.items():
                if 0 <= int(tok) < vocab:
                    bias_rows.append(i)
                    bias_cols.append(int(tok))
                    bias_vals.append(float(val))
            if p.min_tokens and lengths[i] - r.num_prompt_tokens < p.min_tokens:
                ids = [t for t in self._stop_ids(p) if 0 <= t < vocab]
                stop_rows += [i] * len(ids)
                stop_cols += ids
        if bias_rows:
            logits = logits.index_put(
                (torch.tensor(bias_rows, device=dev), torch.tensor(bias_cols, device=dev)),
                torch.tensor(bias_vals, dtype=logits.dtype, device=dev), accumulate=True)
        if stop_rows:
            logits = logits.index_put((torch.tensor(stop_rows, device=dev), torch.tensor(stop_cols, device=dev)),
                                      torch.tensor(float("-inf"), dtype=logits.dtype, device=dev))
        return logits

    def _warp(self, x: torch.Tensor, params) -> torch.Tensor:
        """Temperature, top_k, top_p and min_p on the rows that sample (returns masked, scaled logits)."""
        dev = x.device
        temp = torch.tensor([p.temperature for p in params], dtype=x.dtype, device=dev).unsqueeze(1)
        x = x / temp
        ks = [p.top_k if p.top_k > 0 else 0 for p in params]
        if any(ks):
            kmax = min(max(ks), x.shape[1])
            k = torch.tensor(ks, device=dev).clamp(max=kmax).unsqueeze(1)
            top = x.topk(kmax, dim=-1).values
            thresh = top.gather(1, (k - 1).clamp(min=0))
            x = torch.where((k > 0) & (x < thresh), float("-inf"), x)
        ps = [p.top_p for p in params]
        if any(p < 1.0 for p in ps):
            sorted_x, order = x.sort(dim=-1, descending=True)
            probs = sorted_x.softmax(dim=-1)
            before = probs.cumsum(dim=-1) - probs  # mass strictly ahead of each token
            top_p = torch.tensor(ps, dtype=x.dtype, device=dev).unsqueeze(1)
            sorted_x = sorted_x.masked_fill(before > top_p, float("-inf"))
            x = torch.empty_like(x).scatter_(1, order, sorted_x)
        mins = [p.min_p for p in params]
        if any(mins):
            probs = x.softmax(dim=-1)
            floor = torch.tensor(mins, dtype=x.dtype, device=dev).unsqueeze(1) * probs.max(dim=-1, keepdim=True).values
            x = x.masked_fill(probs < floor, float("-inf"))
        return x

    def sample(self, logits: torch.Tensor, rows, num_tokens: Sequence[int] | None = None) -> SamplerOutput:
        """logits [B, vocab] (any float dtype) for rows in the same order -> one token per row."""
        return self.launch(logits, rows, num_tokens).result()

    def launch(self, logits: torch.Tensor, rows, num_tokens: Sequence[int] | None = None) -> PendingSample:
        """Queue the sampling work on the device and the copy of its result to the host; `result()` waits for it.
        Between the two the host is free (the engine detokenizes the previous step meanwhile).

        `num_tokens`: per row, the sequence's tokens before the one being drawn (what min_tokens counts, and the
        output step the seeded noise is keyed on). Without it they are read off the rows, which is right only
        while no token of the row's own step is counted in `num_pending` yet: the model runner passes the
        scheduled ends, which a deferred sampling's later bookkeeping cannot shift."""
        lengths = _lengths(rows, num_tokens)
        raw = logits.float()
        x = self.apply_logits_processors(raw, rows, lengths)
        constrained = masked_rows(rows)
        if constrained:
            x = apply_masks(x, rows, constrained, self.grammar)
        tokens = x.argmax(dim=-1)
        params = [r.params for r in rows]
        random_rows = [i for i, p in enumerate(params) if not p.greedy]
        if random_rows:
            dev = x.device
            idx = torch.tensor(random_rows, device=dev)
            sub = self._warp(x.index_select(0, idx), [params[i] for i in random_rows])
            probs = sub.softmax(dim=-1)
            seeds = torch.tensor([rows[i].seed for i in random_rows], dtype=torch.long, device=dev)
            steps = torch.tensor([lengths[i] - rows[i].num_prompt_tokens for i in random_rows],
                                 dtype=torch.long, device=dev)
            noise = race_noise(seeds, steps, self.vocab_hash[: probs.shape[1]])
            tokens = tokens.index_copy(0, idx, (probs / noise).argmax(dim=-1))
        want = [p.logprobs for p in params]
        if all(w is None for w in want):
            return PendingSample(_to_host(tokens), want, 0, tokens)
        logprobs = raw.log_softmax(dim=-1)
        chosen = logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)
        kmax = max(w or 0 for w in want)
        if kmax:
            top_vals, top_ids = logprobs.topk(kmax, dim=-1)
            packed = torch.cat([tokens.unsqueeze(1).to(torch.float64), chosen.unsqueeze(1).to(torch.float64),
                                top_ids.to(torch.float64), top_vals.to(torch.float64)], dim=1)
        else:
            packed = torch.stack([tokens.to(torch.float64), chosen.to(torch.float64)], dim=1)
        return PendingSample(_to_host(packed), want, kmax, tokens)


class _HostCopy:
    """A device tensor on its way to pinned host memory; `get()` waits (with the GIL released) and returns it."""

    def __init__(self, host: torch.Tensor, event: torch.cuda.Event | None):
        self.host = host
        self.event = event

    def get(self) -> torch.Tensor:
        if self.event is not None:
            self.event.synchronize()  # releases the GIL: the server's event loop runs meanwhile
        return self.host


def _to_host(t: torch.Tensor) -> _HostCopy:
    if t.device.type != "cuda":
        return _HostCopy(t.clone(), None)  # a copy still: `t` may be a buffer the next step overwrites
    host = t.to("cpu", non_blocking=True)  # lands in pinned memory (PyTorch's caching host allocator)
    event = torch.cuda.Event()
    event.record()
    return _HostCopy(host, event)


@dataclass
class PendingSample:
    """Sampled tokens (and requested logprobs) still on their way to the host."""

    copy: _HostCopy
    want: list[int | None]  # per row: logprobs asked (top-k count), or None
    kmax: int
    tokens: torch.Tensor  # int64 [rows] on the device: the next step may read them before they reach the host

    def result(self) -> SamplerOutput:
        data = self.copy.get()
        rows = len(self.want)
        if all(w is None for w in self.want):
            return SamplerOutput(data.tolist(), [None] * rows, [None] * rows)
        kmax = self.kmax
        token_ids, lps, tops = [], [], []
        for row, w in zip(data.tolist(), self.want, strict=True):
            token_ids.append(int(row[0]))
            lps.append(row[1] if w is not None else None)
            if w:
                ids, vals = row[2:2 + kmax], row[2 + kmax:]
                tops.append([(int(ids[j]), vals[j]) for j in range(w)])
            else:
                tops.append([] if w is not None else None)
        return SamplerOutput(token_ids, lps, tops)
