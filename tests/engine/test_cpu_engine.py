"""glmv's bfloat16 CPU path (C kernels + oneDNN-packed weights) against the PyTorch path, and the engine loop run from
a caller's thread (what `glmv serve` does on the CPU).

The model is driven directly with teacher forcing: one prompt prefilled, then the same forced tokens decoded one at a
time for two sequences batched together, so both paths see identical inputs at every step and their logits can be
compared position by position (greedy generation would diverge at the first near-tie and compare nothing after).
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from glmv.config import EngineConfig
from glmv.cpu import ops
from glmv.engine.async_engine import AsyncEngine
from glmv.inputs.prompt import Prompt
from glmv.layers.attention import AttentionMetadata
from glmv.layers.kernels import TORCH_KERNELS
from glmv.models.glm4v import Glm4vModel
from glmv.sampling import SamplingParams

BLOCK = 16


def teacher_forced_logits(model: Glm4vModel, prompts: list[list[int]], forced: list[list[int]]) -> list[torch.Tensor]:
    """Prefill each prompt alone, then decode the forced tokens with all sequences in one batch per step.
    Returns, per sequence, float32 logits [1 + len(forced), vocab] (the prompt's last position, then each step)."""
    t = model.dims
    per_seq_blocks = 8
    caches = [(torch.zeros(1 + per_seq_blocks * len(prompts), BLOCK, t.num_kv_heads, t.head_dim, dtype=model.dtype),
               torch.zeros(1 + per_seq_blocks * len(prompts), BLOCK, t.num_kv_heads, t.head_dim, dtype=model.dtype))
              for _ in range(t.num_layers)]
    tables = torch.arange(1, 1 + per_seq_blocks * len(prompts), dtype=torch.int32).view(len(prompts), per_seq_blocks)
    out: list[list[torch.Tensor]] = [[] for _ in prompts]
    with torch.inference_mode():
        for s, ids in enumerate(prompts):
            n = len(ids)
            meta = AttentionMetadata(
                slot_mapping=tables[s, 0].long() * BLOCK + torch.arange(n), num_prefill_tokens=n,
                prefill_block_tables=tables[s:s + 1], prefill_cu_seqlens_q=torch.tensor([0, n], dtype=torch.int32),
                prefill_seq_lens=torch.tensor([n], dtype=torch.int32), prefill_max_seqlen_q=n, prefill_dense=True)
            hidden = model.forward(model.embed(torch.tensor(ids)), torch.arange(n).expand(3, -1), caches, meta)
            out[s].append(model.logits(hidden[-1:])[0])
        for step in range(len(forced[0])):
            positions = [len(p) + step for p in prompts]
            slots = torch.tensor([int(tables[s, p // BLOCK]) * BLOCK + p % BLOCK for s, p in enumerate(positions)])
            meta = AttentionMetadata(slot_mapping=slots, decode_block_tables=tables,
                                     decode_seq_lens=torch.tensor([p + 1 for p in positions], dtype=torch.int32))
            ids = torch.tensor([f[step] for f in forced])
            hidden = model.forward(model.embed(ids), torch.tensor(positions).expand(3, -1), caches, meta)
            for s, row in enumerate(model.logits(hidden)):
                out[s].append(row)
    return [torch.stack(rows) for rows in out]


@pytest.mark.skipif(not ops.available(), reason="no C compiler here")
def test_bf16_cpu_kernels_track_the_torch_path(model_config):
    fast = Glm4vModel.load(model_config, "cpu", torch.bfloat16, max_positions=512, load_vision=False)
    assert fast.kernels.name == "cpu"
    packed = fast.pack_cpu_weights()
    reference = Glm4vModel.load(model_config, "cpu", torch.bfloat16, max_positions=512, load_vision=False,
                                kernels=TORCH_KERNELS)  # plain PyTorch steps, plain weights
    exact = Glm4vModel.load(model_config, "cpu", torch.float32, max_positions=512, load_vision=False)

    gen = torch.Generator().manual_seed(0)
    vocab = model_config.text.vocab_size
    prompts = [torch.randint(100, vocab, (n,), generator=gen).tolist() for n in (21, 40)]
    forced = [torch.randint(100, vocab, (20,), generator=gen).tolist() for _ in prompts]  # crosses a block boundary
    got = teacher_forced_logits(fast, prompts, forced)
    want = teacher_forced_logits(reference, prompts, forced)
    truth = teacher_forced_logits(exact, prompts, forced)
    for g, w, x in zip(got, want, truth, strict=True):
        assert torch.isfinite(g).all()
        err_fast = float((g - x).norm() / x.norm())
        err_torch = float((w - x).norm() / x.norm())
        assert err_fast < 0.05 and err_fast < 1.5 * err_torch + 1e-3, (err_fast, err_torch)
        assert float((g.argmax(-1) == x.argmax(-1)).float().mean()) >= 0.9
    if packed:  # on CPUs with oneDNN bf16: every decoder matmul weight and the lm_head
        assert packed == 4 * model_config.text.num_layers + 1


def test_run_loop_serves_from_the_calling_thread(make_engine):
    """The engine loop runs in a thread the caller owns; requests come from an event loop in another thread; shutdown
    from that event loop ends the caller's loop."""
    engine = AsyncEngine(make_engine().model_config, EngineConfig(model="tiny", device="cpu", dtype="float32"),
                         tokenizer=None, engine=make_engine())
    results: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def client() -> None:
        async def run() -> None:
            params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)

            async def one(rid: str, ids: list[int]) -> None:
                async for out in engine.generate(Prompt(token_ids=ids), params, rid):
                    results.setdefault(rid, []).extend(out.outputs[0].token_ids)

            await asyncio.gather(one("a", [5, 6, 7, 8]), one("b", [9, 10, 11]))
            await engine.shutdown()

        try:
            asyncio.run(run())
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
            engine.stop_loop()

    loop_thread = threading.Thread(target=engine.run_loop, kwargs={"on_ready": threading.Thread(target=client).start})
    loop_thread.start()
    loop_thread.join(60)
    assert not loop_thread.is_alive(), "run_loop did not return after shutdown()"
    assert not errors, errors
    assert len(results["a"]) == 6 and len(results["b"]) == 6
    with pytest.raises(RuntimeError, match="already running"):  # a second loop on a live one is refused
        engine._thread = threading.current_thread()
        engine.run_loop()


@pytest.mark.skipif(not ops.available(), reason="no C compiler here")
@pytest.mark.parametrize("name", ["image", "video"])
def test_bf16_cpu_engine_takes_pictures(model_config, tiny_dir, tokenizer, prompts, name):
    """The vision tower under the CPU's fused set (some kernels it lacks fall back to torch, never to Triton) gives
    the torch path's embeddings, and the whole bf16 CPU engine serves a picture prompt."""
    from glmv.engine.engine import LLMEngine

    model = Glm4vModel.load(model_config, "cpu", torch.bfloat16, max_positions=4096)
    assert model.vision.kernels is model.kernels and model.kernels.name == "cpu"
    prompt = prompts[name]
    mm = prompt.mm
    pixels, grids = (mm.pixel_values, mm.image_grid_thw) if name == "image" else (mm.pixel_values_videos,
                                                                                   mm.video_grid_thw)
    grids = [tuple(g) for g in grids.tolist()]
    fused = model.vision.encode(pixels, grids)
    plain = Glm4vModel.load(model_config, "cpu", torch.bfloat16, max_positions=4096,
                            kernels=TORCH_KERNELS).vision.encode(pixels, grids)
    assert float((fused.float() - plain.float()).norm() / plain.float().norm()) < 2e-2

    config = EngineConfig(model=str(tiny_dir), device="cpu", dtype="bfloat16", max_model_len=4096)
    engine = LLMEngine(model_config, config, tokenizer)
    engine.add_request("pic", prompt, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    assert outputs and outputs[-1].finished and outputs[-1].outputs[0].num_tokens == 5


def test_staged_prompts_give_the_same_tokens(model_config, tiny_dir, tokenizer, prompts):
    """stage_prompt converts pixels where doors build prompts (off the engine loop); the engine then skips its own
    conversion and must produce exactly what it produces from the float32 pixels."""
    config = EngineConfig(model=str(tiny_dir), device="cpu", dtype="bfloat16", max_model_len=4096)
    engine = AsyncEngine(model_config, config, tokenizer)
    prompt = prompts["image"]
    staged = engine.stage_prompt(prompt)
    assert staged.mm.pixel_values.dtype == torch.bfloat16 and prompt.mm.pixel_values.dtype == torch.float32
    assert torch.equal(staged.mm.pixel_values, prompt.mm.pixel_values.to(torch.bfloat16))
    assert engine.stage_prompt(staged).mm.pixel_values is staged.mm.pixel_values  # already staged: no copy
    assert engine.stage_prompt(prompts["text"]) is prompts["text"]

    def tokens(p: Prompt) -> list[int]:  # a fresh engine each time: no vision-cache or prefix-cache hits
        fresh = AsyncEngine(model_config, config, tokenizer).engine
        fresh.add_request("r", p, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
        out = []
        while fresh.has_unfinished_requests():
            out += [t for o in fresh.step() for t in o.outputs[0].token_ids]
        return out

    plain = tokens(prompt)
    assert tokens(staged) == plain and len(plain) == 6
