"""The vLLM backend's glmv side without vLLM: the wire format, the argument mapping, and the error when vLLM is absent."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from glmv.backends.vllm import _wire_params, engine_args_for
from glmv.backends.vllm_process import VllmUnavailableError, resolve_vllm_python
from glmv.backends.vllm_worker import recv_msg, send_msg
from glmv.config import EngineConfig, ModelConfig
from glmv.sampling import SamplingParams

REPO = Path(__file__).resolve().parents[2]


class Smuggled:
    """Any class: the wire must refuse to rebuild it on the other side."""


def test_wire_carries_builtins_and_media_bytes():
    a, b = socket.socketpair()
    with a, b:
        msg = {"type": "generate", "id": "r-1", "prompt": {"prompt_token_ids": [1, 2, 3],
               "images": [{"mode": "RGB", "size": [2, 1], "data": bytes(range(6))}]},
               "params": {"logit_bias": {7: -100.0}, "stop": ["</answer>"], "seed": None}}
        send_msg(a, msg)
        assert recv_msg(b) == msg
        a.close()
        assert recv_msg(b) is None  # a closed peer reads as the end, not as an error


def test_wire_refuses_pickled_classes():
    a, b = socket.socketpair()
    with a, b:
        data = pickle.dumps({"type": "output", "payload": Smuggled()})
        a.sendall(len(data).to_bytes(8, "big") + data)
        with pytest.raises(pickle.UnpicklingError, match="only builtins"):
            recv_msg(b)


def test_engine_args_pass_parallelism_and_extras_through(tiny_model_dir):
    mc = ModelConfig.from_dir(tiny_model_dir)
    cfg = EngineConfig(model=str(tiny_model_dir), engine="vllm", dtype="auto", tensor_parallel_size=4,
                       pipeline_parallel_size=2, max_model_len=1024, kv_cache_memory=1 << 30,
                       vllm_engine_args={"distributed_executor_backend": "ray", "max_num_seqs": 8})
    args = engine_args_for(mc, cfg)
    assert args["model"] == str(tiny_model_dir)
    assert args["dtype"] == "bfloat16"  # glmv's "auto" is bf16; vLLM's "auto" would take the checkpoint's dtype
    assert (args["tensor_parallel_size"], args["pipeline_parallel_size"]) == (4, 2)
    assert args["distributed_executor_backend"] == "ray" and args["max_num_seqs"] == 8  # extras win
    assert args["max_model_len"] == 1024 and args["kv_cache_memory_bytes"] == 1 << 30
    assert args["generation_config"] == "auto"
    off = engine_args_for(mc, EngineConfig(model="m", engine="vllm", generation_config="vllm"))
    assert off["generation_config"] == "vllm" and "max_model_len" not in off and "quantization" not in off
    fp8 = engine_args_for(mc, EngineConfig(model="m", engine="vllm", quantization="fp8"))
    assert fp8["quantization"] == "fp8"


def test_stop_ids_come_from_generation_config(tiny_model_dir):
    """</answer> is an EOS in generation_config: sent to vLLM explicitly, and dropped with ignore_eos."""
    mc = ModelConfig.from_dir(tiny_model_dir)
    from transformers import AutoTokenizer

    answer_end = AutoTokenizer.from_pretrained(str(tiny_model_dir)).convert_tokens_to_ids("</answer>")
    assert answer_end in mc.eos_token_ids
    wire = _wire_params(SamplingParams(temperature=0.0, stop_token_ids=[5]), mc.eos_token_ids)
    assert answer_end in wire["stop_token_ids"] and 5 in wire["stop_token_ids"]
    assert wire["temperature"] == 0.0 and wire["top_k"] == -1
    free = _wire_params(SamplingParams(ignore_eos=True, stop_token_ids=[5], top_k=3), mc.eos_token_ids)
    assert free["stop_token_ids"] == [5] and free["ignore_eos"] is True and free["top_k"] == 3


def test_resolve_names_every_python_it_tried():
    with pytest.raises(VllmUnavailableError) as err:
        resolve_vllm_python(sys.executable)  # glmv's own venv: no vLLM in it
    assert sys.executable in str(err.value) and "make vllm-venv" in str(err.value)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_serve_without_vllm_says_what_to_do_in_one_paragraph(tiny_model_dir, how):
    env = {k: v for k, v in os.environ.items() if k != "GLMV_VLLM_PYTHON"} | {"HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "glmv.cli.main", "serve", str(tiny_model_dir), "--engine", "vllm", "--device", "cpu",
           "--port", "1"]
    if how == "flag":
        cmd += ["--vllm-python", sys.executable]
    else:
        env["GLMV_VLLM_PYTHON"] = sys.executable
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    paragraph = [ln for ln in res.stderr.splitlines() if ln.startswith("glmv: ")]
    assert len(paragraph) == 1 and "needs vLLM" in paragraph[0] and sys.executable in paragraph[0]
    assert "--vllm-python" in paragraph[0] and "docs/SCALE_OUT.md" in paragraph[0]


def test_prompt_logprobs_pass_through_and_back():
    """Asked of vLLM as they are; vLLM's {id: Logprob} dicts cross as builtins and come back as glmv's entries,
    trimmed to the user's prompt (a continuation pass's prompt has the generated tokens too)."""
    from dataclasses import dataclass

    from glmv.backends.vllm import _prompt_logprobs
    from glmv.backends.vllm_worker import _prompt_logprobs_to_wire

    @dataclass
    class Logprob:  # vLLM's shape
        logprob: float
        rank: int | None
        decoded_token: str | None

    assert _wire_params(SamplingParams(prompt_logprobs=3), ())["prompt_logprobs"] == 3
    assert _wire_params(SamplingParams(), ())["prompt_logprobs"] is None
    wire = _prompt_logprobs_to_wire([None, {5: Logprob(-0.5, 1, "a")}, {6: Logprob(-2.0, 4, "b"),
                                                                       7: Logprob(-1.0, 1, None)}])
    pickle.dumps(wire)  # builtins only
    back = _prompt_logprobs(wire, 2)
    assert back[0] is None and len(back) == 2
    assert back[1][5].logprob == -0.5 and back[1][5].rank == 1 and back[1][5].decoded_token == "a"
    assert _prompt_logprobs(wire, 3)[2][7].decoded_token == ""
