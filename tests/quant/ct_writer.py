"""Writes compressed-tensors checkpoints of a GLM-4.1V folder with the real llm-compressor (run in its own venv,
.cache/quant-tools-venv: bench/setup_quant_tools.sh), and checks folders with compressed-tensors' own parser.

    python ct_writer.py write MODEL OUT SCHEME      # SCHEME: FP8_DYNAMIC | FP8 | W4A16 | W4A16_ASYM
    python ct_writer.py check FOLDER                # parse its quantization_config with compressed-tensors
    python ct_writer.py dequantize FOLDER OUT       # compressed-tensors' own decompression -> a float32 folder

The text decoder's linears are quantized; the vision tower and lm_head are left alone (ignore), as the model
cards of quantized GLM-4.1V checkpoints do. FP8 (static activation scales) calibrates on a few random token rows.
"""

import sys


def write(model_dir: str, out: str, scheme: str) -> None:
    import torch
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.bfloat16)
    recipe = QuantizationModifier(targets="Linear", scheme=scheme, ignore=["lm_head", "re:.*visual.*"])
    if scheme == "FP8":  # static activation scales need calibration rows
        from datasets import Dataset
        from transformers import AutoTokenizer

        vocab = model.config.text_config.vocab_size
        rows = [{"input_ids": torch.randint(10, vocab - 10, (32,)).tolist()} for _ in range(4)]
        oneshot(model=model, recipe=recipe, dataset=Dataset.from_list(rows), num_calibration_samples=4,
                max_seq_length=32, processor=AutoTokenizer.from_pretrained(model_dir))
    else:
        oneshot(model=model, recipe=recipe)
    model.save_pretrained(out, save_compressed=True)


def check(folder: str) -> None:
    """compressed-tensors' config parser and its compressor for the format, over every module of the folder."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        dequantize(folder, tmp)


def dequantize(folder: str, out: str) -> None:
    """Every quantized module decompressed by compressed-tensors' own compressor for its format (the reader vLLM
    and transformers use), written dense in float32 beside the folder's other files, quantization_config dropped."""
    import json
    import shutil
    from pathlib import Path

    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file, save_file

    src, dst = Path(folder), Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    parsed = QuantizationConfig.model_validate(cfg.pop("quantization_config"))
    (scheme,) = parsed.config_groups.values()
    fmt = scheme.format or parsed.format
    compressor = BaseCompressor.get_value_from_registry(fmt)
    tensors = {}
    for f in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    modules = sorted({n.rsplit(".", 1)[0] for n in tensors if n.endswith(".weight_scale")})
    for module in modules:
        local = {n[len(module) + 1:]: tensors.pop(n) for n in list(tensors) if n.rsplit(".", 1)[0] == module}
        bias = local.pop("bias", None)
        dense = compressor.decompress(local, scheme)
        tensors[module + ".weight"] = dense["weight"].float()
        if bias is not None:
            tensors[module + ".bias"] = bias
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst / "model.safetensors"))
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name != "config.json" and f.is_file():
            shutil.copy(f, dst / f.name)
    print(json.dumps({"modules": len(modules), "format": fmt}))


if __name__ == "__main__":
    {"write": lambda: write(*sys.argv[2:5]), "check": lambda: check(sys.argv[2]),
     "dequantize": lambda: dequantize(sys.argv[2], sys.argv[3])}[sys.argv[1]]()
