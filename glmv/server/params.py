"""From an HTTP request to engine inputs: the served model name and SamplingParams, checked against the model.

Unset fields fall back to the checkpoint's generation_config (temperature, top_p, top_k, repetition_penalty), as
`vllm serve` does by default; explicit request values always win.
"""

from __future__ import annotations

from typing import Any

from glmv.sampling import SamplingParams
from glmv.server.errors import APIError
from glmv.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from glmv.server.state import ServingState


def resolve_model_name(state: ServingState, requested: str | None) -> str:
    if requested is None or requested == "" or requested in state.model_names:
        return requested or state.default_name
    raise APIError(404, f"The model '{requested}' does not exist. Served models: {', '.join(state.model_names)}.",
                   "model", "model_not_found")


def check_token_ids(state: ServingState, ids: list[int], param: str) -> None:
    vocab = state.model_config.text.vocab_size
    for t in ids:
        if not 0 <= t < vocab:
            raise APIError(400, f"{param}: token id {t} is out of range [0, {vocab}).", param, "invalid_token_id")


def _logit_bias(state: ServingState, bias: dict[str, float] | None) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise APIError(400, f"logit_bias keys must be token ids, got {key!r}.", "logit_bias",
                           "invalid_logit_bias") from None
        check_token_ids(state, [token], "logit_bias")
        out[token] = float(value)
    return out


def check_logprobs_supported(state: ServingState, logprobs: int | None, param: str = "logprobs") -> None:
    """Engines say if they compute logprobs (EngineClient.computes_logprobs) and prompt logprobs
    (`computes_prompt_logprobs`, absent on engines that never carry them, e.g. the data-parallel replicas'); asking
    one that does not is a 400 rather than a response with silently empty logprobs."""
    prompt = param == "prompt_logprobs"
    if logprobs is None or getattr(state.engine, "computes_prompt_logprobs" if prompt else "computes_logprobs", False):
        return
    where = f"--engine {state.engine_config.engine}"
    if state.engine_config.data_parallel_size > 1:
        where += f" and --data-parallel-size {state.engine_config.data_parallel_size}"
    raise APIError(400, f"{param} are not available with {where}; serve with --engine glmv"
                   f"{' (one replica)' if prompt else ''} or --engine vllm for them.", param, "unsupported_parameter")


def build_sampling_params(req: SamplingFields, state: ServingState, max_tokens: int | None,
                          logprobs: int | None) -> SamplingParams:
    defaults = state.model_config.generation_defaults
    check_logprobs_supported(state, logprobs)
    check_logprobs_supported(state, req.prompt_logprobs, "prompt_logprobs")
    check_token_ids(state, list(req.stop_token_ids or []), "stop_token_ids")

    def pick(name: str, fallback: Any) -> Any:
        value = getattr(req, name)
        return value if value is not None else defaults.get(name, fallback)

    kwargs: dict[str, Any] = dict(
        n=req.n,
        max_tokens=max_tokens,
        temperature=pick("temperature", 1.0),
        top_p=pick("top_p", 1.0),
        top_k=pick("top_k", 0),
        min_p=req.min_p or 0.0,
        repetition_penalty=pick("repetition_penalty", 1.0),
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        logit_bias=_logit_bias(state, req.logit_bias),
        seed=req.seed,
        stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []),
        stop_token_ids=list(req.stop_token_ids or []),
        include_stop_str_in_output=req.include_stop_str_in_output,
        ignore_eos=req.ignore_eos,
        min_tokens=req.min_tokens,
        logprobs=logprobs,
        prompt_logprobs=req.prompt_logprobs,
        skip_special_tokens=req.skip_special_tokens,
        spaces_between_special_tokens=req.spaces_between_special_tokens,
        thinking_budget=req.thinking_budget if req.thinking_budget is not None
        else state.engine_config.max_thinking_tokens,
        reserved_answer_tokens=req.reserved_answer_tokens,
    )
    try:
        return SamplingParams(**kwargs)
    except (ValueError, TypeError) as exc:
        raise APIError(400, str(exc), None, "invalid_request") from None


def chat_sampling_params(req: ChatCompletionRequest, state: ServingState) -> SamplingParams:
    if req.top_logprobs and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true.", "top_logprobs", "invalid_request")
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    return build_sampling_params(req, state, req.max_completion_tokens or req.max_tokens, logprobs)


def completion_sampling_params(req: CompletionRequest, state: ServingState) -> SamplingParams:
    if req.suffix:
        raise APIError(400, "suffix is not supported: GLM-4.1V has no fill-in-the-middle mode.", "suffix",
                       "unsupported_parameter")
    if req.best_of is not None and req.best_of != req.n:
        raise APIError(400, f"best_of ({req.best_of}) must equal n ({req.n}); glmv does not rank candidates.",
                       "best_of", "unsupported_parameter")
    return build_sampling_params(req, state, req.max_tokens, req.logprobs)
