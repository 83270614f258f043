"""The greedy tokens of a decode step at GLM-4.1V-9B's lm_head (151,552 x 4,096, bf16): how long the lm_head and
the argmax take together, four ways, in CUDA graphs (us per call; two weight copies alternate so L2 does not serve
them):

- cuBLAS + torch.argmax (what the sampler did before session 4),
- the planned decode matmul + torch.argmax,
- the planned decode matmul + glmv's two-launch argmax kernel (glmv/kernels/triton_argmax.py),
- the planned decode matmul with its argmax epilogue + the one short pick launch (what the decode graph runs).

Usage: PYTHONPATH=. python3 bench/probe_argmax.py (about 30 s on an H100).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glmv.kernels.timing import graph_time_us
from tests.gpu.where import TRITON as kernels


def ways(x: torch.Tensor, weights: list[torch.Tensor], cfg, tokens: torch.Tensor) -> dict:
    """name -> fn(i): the lm_head over weight copy i % 2, then its argmax into tokens."""
    out = {"cublas_torch": lambda i: torch.argmax(F.linear(x, weights[i % 2]), dim=-1, out=tokens)}
    if cfg is not None:
        out["gemv_torch"] = lambda i: torch.argmax(kernels.gemv(x, weights[i % 2], None, cfg), dim=-1, out=tokens)
        out["gemv_argmax"] = lambda i: kernels.argmax(kernels.gemv(x, weights[i % 2], None, cfg), out=tokens)
        if cfg.split_k == 1:
            out["epilogue"] = lambda i: kernels.gemv(x, weights[i % 2], None, cfg, argmax_out=tokens)
    return out


def main() -> int:
    if not torch.cuda.is_available():
        print("probe_argmax: no CUDA device here")
        return 2
    torch.manual_seed(0)
    vocab, hidden = 151552, 4096
    weights = [(torch.randn(vocab, hidden, device="cuda") * 0.02).to(torch.bfloat16) for _ in range(2)]
    names = ("cublas_torch", "gemv_torch", "gemv_argmax", "epilogue")
    print(f"{'rows':>5} {'config':<78}" + "".join(f"{n:>14}" for n in names))
    for rows in (1, 16, 64, 128):
        cfg = kernels.plan_gemv([(weights, None)], [rows]).get((vocab, hidden, False, rows))
        x = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)
        tokens = torch.empty(rows, dtype=torch.int64, device="cuda")
        us = {name: graph_time_us(fn, 8) for name, fn in ways(x, weights, cfg, tokens).items()}
        print(f"{rows:>5} {str(cfg):<78}" + "".join(f"{us[n]:>14.1f}" if n in us else f"{'-':>14}" for n in names),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
