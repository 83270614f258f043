"""Writes an AutoAWQ GEMM checkpoint (4-bit, group 128, zero points) of a bf16 GLM-4.1V folder, for gpu_bench.

Round-to-nearest per group of 128 from each group's min/max (AutoAWQ's pseudo_quantize_tensor without the
activation-aware search, which needs calibration data and does not change the layout or the speed), packed in
AutoAWQ's GEMM layout (qweight [in, out/8] int32, nibble order 0,2,4,6,1,3,5,7; qzeros likewise; fp16 scales
[in/128, out]), vectorized so the 9B preset converts in about a minute on a GPU. The layout is the one
tests/quant/packers.py reproduces loop by loop and glmv's reader is tested against.

    python bench/awq_checkpoint.py SRC OUT [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

DECODER = re.compile(r"\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate_up|gate|up|down)_proj)\.weight$")
NIBBLE_OF_COLUMN = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])  # column AWQ_ORDER[i] goes to nibble i


def awq_pack(w: torch.Tensor) -> dict[str, torch.Tensor]:
    out, in_ = w.shape
    g = w.float().reshape(out, in_ // 128, 128)
    mx, mn = g.amax(-1, keepdim=True), g.amin(-1, keepdim=True)
    scales = ((mx - mn).clamp(min=1e-5) / 15).half().float()
    zeros = (-torch.round(mn / scales)).clamp(0, 15)
    q = torch.clamp(torch.round(g / scales) + zeros, 0, 15).reshape(out, in_).int()

    def pack(v: torch.Tensor) -> torch.Tensor:  # v [rows, out] -> [rows, out/8]
        cols = v.reshape(v.shape[0], -1, 8)[:, :, NIBBLE_OF_COLUMN.to(v.device)]
        shifts = torch.arange(8, device=v.device, dtype=torch.int32) * 4
        return (cols.int() << shifts).sum(-1, dtype=torch.int32)

    return {"qweight": pack(q.t().contiguous()), "qzeros": pack(zeros.squeeze(-1).t().contiguous()),
            "scales": scales.squeeze(-1).t().contiguous().half()}


def convert(src: Path, out: Path, device: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for shard in sorted(src.glob("*.safetensors")):
        tensors = {}
        with safe_open(str(shard), framework="pt", device=device) as f:
            for name in f.keys():
                t = f.get_tensor(name)
                if DECODER.search(name) and "visual" not in name:
                    module = name[: -len(".weight")]
                    tensors.update({f"{module}.{k}": v.cpu() for k, v in awq_pack(t).items()})
                else:
                    tensors[name] = t.cpu()
        save_file(tensors, str(out / shard.name), metadata={"format": "pt"})
        weight_map.update({n: shard.name for n in tensors})
        print(f"{shard.name}: done", flush=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy(f, out / f.name)
    if (src / "model.safetensors.index.json").is_file():
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
                                  "version": "gemm", "modules_to_not_convert": ["visual"]}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    convert(Path(a.src), Path(a.out), a.device)
