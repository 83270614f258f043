"""Data-parallel pieces without processes: PrefixRouter (load spreading, prefix affinity with media, the imbalance
override, forgetting a restarted replica), Prompt / SamplingParams / RequestOutput across the wire, one GPU or a
share of the cores per replica, and the flags that cannot work."""

from __future__ import annotations

import io
import os
import pickle

import pytest
import torch

from glmv.backends.replicas.router import PrefixRouter, prompt_block_hashes
from glmv.backends.replicas.wire import (
    output_from_wire,
    output_to_wire,
    params_from_wire,
    params_to_wire,
    prompt_from_wire,
    prompt_to_wire,
)
from glmv.backends.vllm_worker import _BuiltinsOnly
from glmv.engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from glmv.inputs.prompt import MultiModalInputs, Prompt
from glmv.sampling import FinishReason, SamplingParams

BS = 4


def text(*ids: int) -> Prompt:
    return Prompt(token_ids=list(ids))


def image_prompt(image_hash: str) -> Prompt:
    ids = [1, 2, 3, 4, 5, 6, 9, 9, 9, 9, 7, 8, 10, 11]
    types = [0] * 6 + [1] * 4 + [0] * 4
    mm = MultiModalInputs(pixel_values=torch.zeros(16, 3), image_grid_thw=torch.tensor([[1, 4, 4]]),
                          image_hashes=[image_hash])
    return Prompt(token_ids=ids, mm_token_type_ids=types, mm=mm)


def test_idle_replicas_take_turns_and_load_wins():
    router = PrefixRouter(3, BS)
    picks = [router.choose(text(i, i, i, i, i), [0, 0, 0], [True] * 3).replica for i in range(3)]
    assert sorted(picks) == [0, 1, 2]
    assert router.choose(text(50, 51, 52, 53), [2, 0, 1], [True] * 3).replica == 1


def test_a_conversation_follows_its_prefix_until_the_replica_is_too_busy():
    router = PrefixRouter(2, BS, max_imbalance=3)
    first = text(*range(1, 10))  # two full blocks
    home = router.choose(first, [0, 0], [True, True]).replica
    follow_up = text(*range(1, 10), 77, 78, 79, 80)
    load = [0, 0]
    load[home] = 2  # busier, but within the allowed imbalance
    again = router.choose(follow_up, load, [True, True])
    assert again.replica == home and again.prefix_blocks == 2
    load[home] = 3
    assert router.choose(follow_up, load, [True, True]).replica == 1 - home


def test_media_hashes_key_the_blocks_they_start_in():
    a, b = image_prompt("aaaa"), image_prompt("bbbb")
    ha, hb = prompt_block_hashes(a, BS, 16), prompt_block_hashes(b, BS, 16)
    assert ha[0] == hb[0]  # text only, before the picture
    assert ha[1] != hb[1] and ha[2] != hb[2]  # the picture starts in block 1; the chain carries it on
    assert prompt_block_hashes(image_prompt("aaaa"), BS, 16) == ha


def test_a_dead_or_restarted_replica_gets_no_affinity():
    router = PrefixRouter(2, BS)
    p = text(*range(1, 10))
    home = router.choose(p, [0, 0], [True, True]).replica
    up = [True, True]
    up[home] = False
    assert router.choose(p, [0, 0], up).replica == 1 - home
    router.forget_replica(1 - home)
    router.forget_replica(home)
    assert router.choose(p, [0, 0], [True, True]).prefix_blocks == 0
    with pytest.raises(LookupError):
        router.choose(p, [0, 0], [False, False])


def _crosses(obj):
    """What the framing would deliver: a builtins-only pickle round trip (it refuses any class)."""
    return _BuiltinsOnly(io.BytesIO(pickle.dumps(obj, protocol=5))).load()


def test_prompt_params_and_outputs_cross_the_wire_as_builtins():
    prompt = image_prompt("cafe")
    prompt.mm.pixel_values = torch.randn(16, 3).to(torch.bfloat16)
    prompt.text = "hi"
    back = prompt_from_wire(_crosses(prompt_to_wire(prompt)))
    assert back.token_ids == prompt.token_ids and back.mm_token_type_ids == prompt.mm_token_type_ids
    assert back.mm.pixel_values.dtype == torch.bfloat16 and torch.equal(back.mm.pixel_values, prompt.mm.pixel_values)
    assert torch.equal(back.mm.image_grid_thw, prompt.mm.image_grid_thw) and back.mm.image_hashes == ["cafe"]
    params = SamplingParams(max_tokens=7, temperature=0.5, stop=["x"], logit_bias={3: 1.5}, seed=4)
    assert params_from_wire(_crosses(params_to_wire(params))) == params
    out = RequestOutput("r1", [CompletionOutput(0, "ab", [5, 6], 2, FinishReason.LENGTH, None,
                                                [TokenLogprob(5, "a", -0.1, [(5, "a", -0.1)])])], [1, 2], True, 3)
    assert output_from_wire(_crosses(output_to_wire(out)), [1, 2]) == out
    with pytest.raises(pickle.UnpicklingError):
        _crosses(prompt)  # the typed object itself would not cross


def test_replicas_get_one_gpu_each_or_a_share_of_the_cores(tiny_model_dir):
    from glmv.backends.replicas.engine import plan_replicas
    from glmv.config import EngineConfig, ModelConfig

    mc = ModelConfig.from_dir(tiny_model_dir)
    times = {"startup_timeout_s": 60.0, "drain_timeout_s": 5.0}
    gpu = plan_replicas(mc, EngineConfig(model="m", device="cuda", data_parallel_size=2), visible_gpus=["3", "5", "6"],
                        cpu_count=32, **times)
    assert [(p.cuda_device, p.torch_threads, p.engine_config["device"]) for p in gpu] == [("3", 16, "cuda"),
                                                                                         ("5", 16, "cuda")]
    assert gpu[1].env()["CUDA_VISIBLE_DEVICES"] == "5"
    cpu = plan_replicas(mc, EngineConfig(model="m", device="cpu", data_parallel_size=3), visible_gpus=[], cpu_count=7,
                        **times)
    assert [(p.cuda_device, p.torch_threads) for p in cpu] == [(None, 2)] * 3
    assert cpu[0].env().get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")  # left as it was
    with pytest.raises(ValueError, match="shows 1 GPU"):
        plan_replicas(mc, EngineConfig(model="m", device="cuda", data_parallel_size=2), visible_gpus=["0"],
                      cpu_count=8, **times)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"data_parallel_size": 0}, "at least 1"),
    ({"data_parallel_size": 2, "engine": "vllm"}, "data_parallel_size"),
    ({"data_parallel_size": 2, "device": "cuda:1"}, "CUDA_VISIBLE_DEVICES"),
])
def test_data_parallel_flags_that_cannot_work_are_refused(kwargs, message):
    from glmv.config import EngineConfig

    with pytest.raises(ValueError, match=message):
        EngineConfig(model="m", **kwargs)


def test_the_engine_config_crosses_as_builtins_kernel_choices_included():
    from glmv.backends.replicas.wire import engine_config_from_wire, engine_config_to_wire
    from glmv.config import EngineConfig
    from glmv.options import KernelOptions

    cfg = EngineConfig(model="m", device="cpu", data_parallel_size=2, max_num_seqs=7,
                       kernels=KernelOptions(attention="torch", fused=False), vllm_engine_args={"a": 1})
    back = engine_config_from_wire(_crosses(engine_config_to_wire(cfg)))
    assert back == cfg and back.kernels == cfg.kernels and back.gc_mode == cfg.gc_mode
