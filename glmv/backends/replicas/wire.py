"""glmv's typed objects <-> the builtins that cross the socket between the server and its engine replicas.

The framing is the vLLM backend's (glmv/backends/vllm_worker.py: length-prefixed pickles whose reader refuses every
class), so a replica can never make the server import or run anything, nor the other way round. This module turns
Prompt, SamplingParams and RequestOutput into dicts of builtins and back; tensors cross as raw bytes with their dtype
and shape. `Prompt.raw_media` stays behind: glmv's engine runs on the processed media, never on the decoded files.

Messages (both ways; `id` is the request id):
  replica -> server: hello {token} | ready {max_model_len, pid} | fatal {message}
                     output {id, output} | error {id, kind: too_long|overloaded|invalid|internal, message, ...}
                     stats {stats}
  server -> replica: config {engine_args: {engine_config, model_path, torch_threads, drain_timeout_s}}
                     | generate {id, prompt, params} | abort {id} | shutdown (finish what runs, then exit)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from glmv.config import EngineConfig
from glmv.engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from glmv.inputs.prompt import MultiModalInputs, Prompt
from glmv.options import KernelOptions
from glmv.sampling import FinishReason, SamplingParams

_DTYPES = {str(d): d for d in (torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int32, torch.uint8)}


def tensor_to_wire(t: torch.Tensor | None) -> dict[str, Any] | None:
    if t is None:
        return None
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return {"dtype": str(t.dtype), "shape": list(t.shape), "data": flat.view(torch.uint8).numpy().tobytes()}


def tensor_from_wire(w: dict[str, Any] | None) -> torch.Tensor | None:
    if w is None:
        return None
    dtype = _DTYPES.get(w["dtype"])
    if dtype is None:
        raise ValueError(f"replica wire: tensors of dtype {w['dtype']} do not cross")
    raw = torch.frombuffer(bytearray(w["data"]), dtype=torch.uint8) if w["data"] else torch.empty(0, dtype=torch.uint8)
    return raw.view(dtype).reshape(w["shape"])


def prompt_to_wire(prompt: Prompt) -> dict[str, Any]:
    mm = prompt.mm
    return {
        "token_ids": list(prompt.token_ids),
        "mm_token_type_ids": None if prompt.mm_token_type_ids is None else list(prompt.mm_token_type_ids),
        "mm": {"pixel_values": tensor_to_wire(mm.pixel_values), "image_grid_thw": tensor_to_wire(mm.image_grid_thw),
               "pixel_values_videos": tensor_to_wire(mm.pixel_values_videos),
               "video_grid_thw": tensor_to_wire(mm.video_grid_thw),
               "image_hashes": list(mm.image_hashes), "video_hashes": list(mm.video_hashes)},
        "text": prompt.text,
        "info": dict(prompt.info),
        "mm_processor_kwargs": dict(prompt.mm_processor_kwargs),
    }


def prompt_from_wire(w: dict[str, Any]) -> Prompt:
    m = w["mm"]
    mm = MultiModalInputs(pixel_values=tensor_from_wire(m["pixel_values"]),
                          image_grid_thw=tensor_from_wire(m["image_grid_thw"]),
                          pixel_values_videos=tensor_from_wire(m["pixel_values_videos"]),
                          video_grid_thw=tensor_from_wire(m["video_grid_thw"]),
                          image_hashes=list(m["image_hashes"]), video_hashes=list(m["video_hashes"]))
    return Prompt(token_ids=list(w["token_ids"]), mm_token_type_ids=w["mm_token_type_ids"], mm=mm, text=w["text"],
                  info=dict(w["info"]), mm_processor_kwargs=dict(w["mm_processor_kwargs"]))


def params_to_wire(params: SamplingParams) -> dict[str, Any]:
    return dataclasses.asdict(params)


def params_from_wire(w: dict[str, Any]) -> SamplingParams:
    return SamplingParams(**w)


def engine_config_to_wire(cfg: EngineConfig) -> dict[str, Any]:
    """The server's EngineConfig, kernel choices included, so every replica runs what the server was asked for."""
    out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    out["kernels"] = dataclasses.asdict(cfg.kernels)
    return out


def engine_config_from_wire(w: dict[str, Any]) -> EngineConfig:
    return EngineConfig(**(w | {"kernels": KernelOptions(**w["kernels"])}))


def output_to_wire(out: RequestOutput) -> dict[str, Any]:
    return {
        "request_id": out.request_id, "prompt_len": len(out.prompt_token_ids), "finished": out.finished,
        "num_cached_tokens": out.num_cached_tokens,
        "outputs": [{
            "index": c.index, "text": c.text, "token_ids": list(c.token_ids), "num_tokens": c.num_tokens,
            "finish_reason": None if c.finish_reason is None else c.finish_reason.value, "stop_reason": c.stop_reason,
            "forced_tokens": c.forced_tokens,
            "logprobs": None if c.logprobs is None else [(lp.token_id, lp.token, lp.logprob, list(lp.top))
                                                         for lp in c.logprobs],
        } for c in out.outputs],
    }


def output_from_wire(w: dict[str, Any], prompt_token_ids: list[int]) -> RequestOutput:
    """The output with the server's own prompt ids (they are not sent back with every delta)."""
    outs = [CompletionOutput(
        index=c["index"], text=c["text"], token_ids=list(c["token_ids"]), num_tokens=c["num_tokens"],
        finish_reason=None if c["finish_reason"] is None else FinishReason(c["finish_reason"]),
        stop_reason=c["stop_reason"], forced_tokens=c["forced_tokens"],
        logprobs=None if c["logprobs"] is None else [TokenLogprob(tid, tok, lp, [tuple(t) for t in top])
                                                      for tid, tok, lp, top in c["logprobs"]],
    ) for c in w["outputs"]]
    return RequestOutput(w["request_id"], outs, prompt_token_ids, finished=w["finished"],
                         num_cached_tokens=w["num_cached_tokens"])
