"""Engine logprobs (TokenLogprob) -> OpenAI's two shapes: chat's `{"content": [...]}` and completions' legacy lists."""

from __future__ import annotations

from glmv.engine.outputs import PromptLogprobs, TokenLogprob

# JSON has no -inf; a token the sampler ruled out (e.g. forced by the thinking budget) gets this instead, as vLLM does.
MIN_LOGPROB = -9999.0


def _finite(lp: float) -> float:
    return max(float(lp), MIN_LOGPROB) if lp == lp else MIN_LOGPROB  # NaN -> MIN_LOGPROB


def _entry(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": _finite(logprob), "bytes": list(token.encode("utf-8"))}


def prompt_logprobs_json(scores: PromptLogprobs | None) -> list[dict[str, dict] | None] | None:
    """vLLM's `prompt_logprobs`: null for the first prompt token, then per token {token id (a string, as JSON keys
    are): {logprob, rank, decoded_token}} holding the prompt token and the top-k; -inf becomes MIN_LOGPROB, as
    vLLM's clamp_prompt_logprobs does."""
    if scores is None:
        return None
    return [None if entry is None else
            {str(tid): {"logprob": _finite(lp.logprob), "rank": lp.rank, "decoded_token": lp.decoded_token}
             for tid, lp in entry.items()}
            for entry in scores]


def chat_logprobs(items: list[TokenLogprob], top_n: int) -> dict:
    """`{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}` for these output tokens."""
    content = []
    for item in items:
        entry = _entry(item.token, item.logprob)
        entry["top_logprobs"] = [_entry(tok, lp) for _tid, tok, lp in item.top[:top_n]]
        content.append(entry)
    return {"content": content}


class LegacyLogprobs:
    """Accumulates `/v1/completions` logprobs: tokens, token_logprobs, top_logprobs, text_offset.

    `offset` is where the next token's text starts in the choice's text (after an echoed prompt, if any).
    """

    def __init__(self, offset: int = 0):
        self.offset = offset
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []

    def add_unscored(self, tokens: list[str]) -> None:
        """Echoed prompt tokens: engines do not score the prompt, so their logprobs are null (OpenAI's first prompt
        token is null too)."""
        for token in tokens:
            self._push(token, None, None)

    def add(self, items: list[TokenLogprob], top_n: int) -> None:
        for item in items:
            # Keyed by text, so distinct ids that decode alike (e.g. partial UTF-8 bytes as U+FFFD) share a key:
            # keep the likeliest, and let the sampled token's own logprob win its key.
            top: dict[str, float] = {}
            for _tid, tok, lp in item.top[:top_n]:
                top[tok] = max(top.get(tok, MIN_LOGPROB), _finite(lp))
            if top_n:
                top[item.token] = _finite(item.logprob)
            self._push(item.token, _finite(item.logprob), top)

    def _push(self, token: str, logprob: float | None, top: dict[str, float] | None) -> None:
        self.tokens.append(token)
        self.token_logprobs.append(logprob)
        self.top_logprobs.append(top)
        self.text_offset.append(self.offset)
        self.offset += len(token)

    def as_dict(self, start: int = 0) -> dict:
        """The entries from `start` on (a stream sends only the new ones)."""
        return {"tokens": self.tokens[start:], "token_logprobs": self.token_logprobs[start:],
                "top_logprobs": self.top_logprobs[start:], "text_offset": self.text_offset[start:]}

    def __len__(self) -> int:
        return len(self.tokens)
