"""glmv's engine on a CUDA device (never in CI): exact greedy parity of the tiny model in float32 with the Triton
kernels and with CUDA graphs, and bf16 parity on a larger preset (GLMV_GPU_PARITY_PRESET, default "small").

    python -m pytest tests/engine/test_cuda.py -q        # on a machine with a GPU
"""

from __future__ import annotations

import math
import os
import time

import pytest
import torch

from glmv.config import EngineConfig, ModelConfig
from glmv.engine.engine import LLMEngine
from glmv.engine.model_runner import ModelRunner
from glmv.models.glm4v import Glm4vModel
from glmv.sampling import SamplingParams

from .conftest import greedy, run_to_completion, tokens_of

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

NAMES = ["text", "image", "two_images", "video"]


def cuda_engine(model_config, tokenizer, model, dtype="float32", **kw) -> LLMEngine:
    cfg = EngineConfig(model=str(model_config.path), device="cuda", dtype=dtype, **({"max_model_len": 512,
                       "max_num_seqs": 16, "max_num_batched_tokens": 256, "kv_cache_memory": 64 << 20} | kw))
    runner = ModelRunner(model_config, cfg, cfg.max_model_len, model=model)
    return LLMEngine(model_config, cfg, tokenizer, runner=runner)


@pytest.fixture(scope="module")
def hf_cuda(tiny_dir):
    from transformers import Glm4vForConditionalGeneration

    return Glm4vForConditionalGeneration.from_pretrained(str(tiny_dir), dtype=torch.float32).to("cuda").eval()


@pytest.fixture(scope="module")
def reference(prompts, hf_cuda):
    from glmv.engine.reference import hf_inputs

    out = {}
    for name in NAMES:
        with torch.inference_mode():
            ids = hf_cuda.generate(**hf_inputs(prompts[name], "cuda", torch.float32), max_new_tokens=24,
                                   min_new_tokens=24, do_sample=False, eos_token_id=None)
        out[name] = ids[0, len(prompts[name]):].tolist()
    return out


@pytest.mark.parametrize("attention", ["native", "torch"])
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "cuda-graphs"])
def test_tiny_greedy_parity_on_cuda(attention, graphs, model_config, tokenizer, prompts, reference, monkeypatch):
    if attention == "torch":
        monkeypatch.setenv("GLMV_ATTENTION", "torch")
    model = Glm4vModel.load(model_config, "cuda", torch.float32, max_positions=1024)
    engine = cuda_engine(model_config, tokenizer, model, max_num_batched_tokens=32)
    if graphs:
        assert engine.runner.decode_graphs.capture([1, 2, 4, 8]) == [1, 2, 4, 8]
    for name in NAMES:
        engine.add_request(name, prompts[name], greedy(24))
    done = run_to_completion(engine)
    for name in NAMES:
        assert tokens_of(done, name) == reference[name], (name, model.kernels.describe())
    assert engine.pool.all_free()


def test_graphs_and_eager_agree_when_sampling(model_config, tokenizer, prompts):
    model = Glm4vModel.load(model_config, "cuda", torch.float32, max_positions=1024)
    params = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=16, seed=3, ignore_eos=True)
    results = []
    for graphs in (False, True):
        engine = cuda_engine(model_config, tokenizer, model)
        if graphs:
            engine.runner.decode_graphs.capture()
        for i, name in enumerate(NAMES):
            engine.add_request(f"{name}{i}", prompts[name], params)
        done = run_to_completion(engine)
        results.append({k: v[0].token_ids for k, v in done.items()})
    assert results[0] == results[1]


@pytest.fixture(scope="module")
def preset_dir(tmp_path_factory):
    from glmv.models.tiny import make_tiny_model

    preset = os.environ.get("GLMV_GPU_PARITY_PRESET", "small")
    path = os.environ.get("GLMV_GPU_PARITY_DIR") or str(tmp_path_factory.mktemp("preset") / preset)
    if not os.path.exists(os.path.join(path, "config.json")):
        make_tiny_model(path, preset=preset)
    return path


def test_bf16_parity_on_a_larger_preset(preset_dir):
    """bf16: the first token's logprobs within 8 bf16 ulps of transformers' (top 20) and the first greedy token equal
    (or, where the reference's top tokens are closer than that tolerance, one the reference ranks within it).

    Measured on an H100 (ulp 0.031 at both sizes): small preset 0.016 / 0.031 nats (text / image, 8 of 8 greedy
    tokens equal); full 9B dims 0.094 / 0.187 nats (text 8 of 8 equal; image the first 3, then random weights'
    near-ties diverge)."""
    from transformers import Glm4vForConditionalGeneration

    from glmv.engine.reference import hf_inputs
    from glmv.inputs.processor import LoadedMedia, PromptBuilder

    from .media import noise_image

    config = ModelConfig.from_dir(preset_dir)
    builder = PromptBuilder(preset_dir)
    text = builder.render([{"role": "user", "content": [{"type": "image"},
                                                        {"type": "text", "text": "What is in this image? " * 8}]}])
    prompts = {"text": builder.from_text(builder.render([{"role": "user", "content": "Count to twenty. " * 20}])),
               "image": builder.build(text, LoadedMedia([noise_image(5, 448, 336)], ["p"], [], [], []))}
    hf = Glm4vForConditionalGeneration.from_pretrained(preset_dir, dtype=torch.bfloat16).to("cuda").eval()
    ref_tokens, ref_logits = {}, {}
    for name, prompt in prompts.items():
        with torch.inference_mode():
            kw = hf_inputs(prompt, "cuda", torch.bfloat16)
            ref_logits[name] = hf(**kw).logits[0, -1].float()
            ids = hf.generate(**kw, max_new_tokens=8, min_new_tokens=8, do_sample=False, eos_token_id=None)
        ref_tokens[name] = ids[0, len(prompt):].tolist()
    del hf
    torch.cuda.empty_cache()
    start = time.perf_counter()
    model = Glm4vModel.load(config, "cuda", torch.bfloat16, max_positions=4096)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(f"load: {model.bytes_loaded / 1e9:.2f} GB in {seconds:.1f} s ({model.bytes_loaded / 1e9 / seconds:.2f} GB/s)")
    engine = cuda_engine(config, builder.tokenizer, model, dtype="bfloat16", max_model_len=2048,
                         kv_cache_memory=1 << 30)
    engine.runner.decode_graphs.capture()
    for name, prompt in prompts.items():
        engine.add_request(name, prompt, greedy(8, logprobs=20))
    done = run_to_completion(engine)
    for name in prompts:
        ours = done[name][0]
        first = {t: lp for t, _, lp in ours.logprobs[0].top}
        ref = ref_logits[name].log_softmax(-1)
        diffs = [abs(first[t] - ref[t].item()) for t in first]
        # Tolerance: 8 bf16 ulps at the magnitude of the largest logit (both sides round logits to bf16).
        ulp = 2.0 ** (math.floor(math.log2(ref_logits[name].abs().max().item())) - 7)
        top2 = ref.topk(2)
        gap = (ref[ref_tokens[name][0]] - ref[ours.token_ids[0]]).item()
        print(f"{name}: ours {ours.token_ids} ref {ref_tokens[name]} max |dlogprob| top-20 {max(diffs):.4f} "
              f"(bf16 ulp at max logit {ulp:.4f}); reference top-2 {top2.indices.tolist()} "
              f"{[round(v, 4) for v in top2.values.tolist()]}, its gap to our first token {gap:.4f}")
        assert max(diffs) <= 8 * ulp
        # The first greedy token is the reference's, unless the reference's own margin between its best token and
        # ours is within the logit tolerance above (a near-tie that tolerance cannot order: random weights at 9B dims
        # give near-flat distributions; seen on an H100: image prompt, margin 4 ulps, our deviation 5 ulps).
        assert ours.token_ids[0] == ref_tokens[name][0] or gap <= 8 * ulp


def test_default_sizing_and_graph_capture(tiny_dir, model_config, tokenizer, prompts, reference):
    """No kv_cache_memory: the cache takes what gpu_memory_utilization leaves after a profiled step; decode graphs
    are captured when the decode attention is a native kernel."""
    config = EngineConfig(model=str(tiny_dir), device="cuda", dtype="float32", max_model_len=512, max_num_seqs=8,
                          gpu_memory_utilization=0.3)
    engine = LLMEngine(model_config, config, tokenizer)
    free, total = torch.cuda.mem_get_info()
    kv_bytes = engine.runner.num_blocks * engine.runner.kv_plan.bytes_per_block
    print(f"KV cache {kv_bytes / 2**30:.2f} GiB of {total / 2**30:.1f} GiB; graphs {sorted(engine.runner.decode_graphs.graphs)}")
    assert 0.1 * total < kv_bytes < 0.3 * total
    assert bool(engine.runner.decode_graphs.graphs) == engine.runner.decode_graphs.worthwhile
    engine.add_request("t", prompts["text"], greedy(24))
    assert tokens_of(run_to_completion(engine), "t") == reference["text"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vision_tower_graph_replays_equal_the_eager_tower(model_config, prompts, dtype):
    """A shape's second encode records a CUDA graph; every replay gives the eager tower's bits, for new pixels too,
    and shapes the graphs cannot take (unequal frames) stay eager."""
    model = Glm4vModel.load(model_config, "cuda", dtype)
    vision = model.vision
    assert vision.use_graphs and vision.kernels.name == "triton"
    mm = prompts["image"].mm
    grids = [tuple(int(v) for v in g) for g in mm.image_grid_thw.tolist()]
    pixels = mm.pixel_values.to("cuda").to(dtype)
    vision.use_graphs = False
    eager = vision.encode(pixels, grids)
    vision.use_graphs = True
    outs = [vision.encode(pixels, grids) for _ in range(3)]  # eager (first sight), capture + replay, replay
    assert len(vision._graphs) == 1
    for out in outs:
        assert torch.equal(out, eager)
    fresh = torch.randn_like(pixels)
    vision.use_graphs = False
    eager_fresh = vision.encode(fresh, grids)
    vision.use_graphs = True
    assert torch.equal(vision.encode(fresh, grids), eager_fresh)
    assert torch.equal(vision.encode(pixels, grids), eager)  # the static input is refilled on every call
    two = prompts["two_images"].mm
    two_grids = [tuple(int(v) for v in g) for g in two.image_grid_thw.tolist()]
    if len({h * w for _, h, w in two_grids}) > 1:
        assert vision._graph_key(two.pixel_values.to("cuda"), two_grids) is None


def dense_prefill(model: Glm4vModel, ids: torch.Tensor) -> torch.Tensor:
    """The decoder's final hidden states for one fresh prompt (one chunk, dense attention) on a scratch cache."""
    from glmv.layers.attention import AttentionMetadata

    t, n, bs = model.dims, ids.numel(), 16
    blocks = -(-n // bs) + 1
    cache = torch.zeros(t.num_layers, 2, blocks, bs, t.num_kv_heads, t.head_dim, dtype=model.dtype, device="cuda")
    meta = AttentionMetadata(
        slot_mapping=torch.arange(n, device="cuda") + bs, num_prefill_tokens=n,
        prefill_block_tables=torch.arange(1, blocks, dtype=torch.int32, device="cuda").unsqueeze(0),
        prefill_cu_seqlens_q=torch.tensor([0, n], dtype=torch.int32, device="cuda"),
        prefill_seq_lens=torch.tensor([n], dtype=torch.int32, device="cuda"), prefill_max_seqlen_q=n,
        prefill_dense=True)
    with torch.inference_mode():
        return model.forward(model.embed(ids), torch.arange(n, device="cuda").expand(3, -1),
                             [(cache[i, 0], cache[i, 1]) for i in range(t.num_layers)], meta)


def test_fused_mlp_gating_matches_the_separate_kernel(model_config, monkeypatch):
    """Interleaved gate/up weights with the gating in the matmul (forced for every row count here) give the decoder
    and the vision tower the outputs of cuBLAS + the separate SiLU kernel, to bf16 rounding."""
    from glmv.kernels.triton_swiglu import CONFIGS

    monkeypatch.setenv("GLMV_SWIGLU", "0")
    plain = Glm4vModel.load(model_config, "cuda", torch.bfloat16)
    monkeypatch.delenv("GLMV_SWIGLU")
    fused = Glm4vModel.load(model_config, "cuda", torch.bfloat16)
    assert fused.gate_up_act.interleaved and not plain.gate_up_act.interleaved
    config = CONFIGS[0]
    weights = [fused.w.layers[0].gate_up.weight, fused.vision.w.blocks[0].gate_up_weight, fused.vision.w.merger_gate_up]
    for w in weights:
        fused.gate_up_act.large_plan[tuple(w.shape)] = [(129, config)]

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    ids = torch.randint(0, model_config.text.vocab_size, (300,), device="cuda")
    assert rel(dense_prefill(fused, ids), dense_prefill(plain, ids)) < 2e-2
    grids = [(1, 16, 24)]  # 384 patches: the tower's MLP rows reach the fused kernel
    patch = 3 * model_config.vision.temporal_patch_size * model_config.vision.patch_size**2
    pixels = torch.randn(16 * 24, patch, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        assert rel(fused.vision.encode(pixels, grids), plain.vision.encode(pixels, grids)) < 2e-2


def test_prompt_logprobs_on_cuda_match_a_whole_forward(tiny_dir, prompts, glmv_model):
    """The image prompt scored in 16-token chunks on CUDA (Triton kernels, the decode graphs captured) equals one
    whole-prompt forward of glmv's model on the CPU (float32 both: only the order of the sums differs)."""
    from .test_model_parity import check_chunked_prompt_logprobs

    check_chunked_prompt_logprobs(tiny_dir, "cuda", glmv_model, prompts["image"], tolerance=1e-3)
