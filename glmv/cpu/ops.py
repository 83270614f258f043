"""The CPU kernels (glmv/cpu/kernels.c) behind the same Python contracts as the CUDA kernels in glmv.kernels.

rms_norm, residual_rms_norm, silu_mul and rotary_write_kv compute glmv.layers.torch_ops' formulas, and
`paged_decode_attention` follows glmv/layers/attention.py's contract; glmv.layers.kernels picks them. bfloat16 only: float32 runs keep PyTorch's ops, which are the exact reference the tests compare against.
Each wrapper checks what the C code assumes (dtype, contiguous last dims) and allocates its outputs.
"""

from __future__ import annotations

import ctypes

import torch

from glmv.cpu import build

_P, _I64, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
_SIGNATURES = {
    "glmv_rms_norm": [_P, _I64, _P, _P, _I64, _I64, _I, _F],
    "glmv_residual_rms_norm": [_P, _I64, _P, _I64, _P, _P, _P, _I64, _P, _I64, _I64, _I, _F],
    "glmv_silu_mul": [_P, _I64, _P, _I64, _I64, _I],
    "glmv_rotary_write_kv": [_P, _I64, _I64, _P, _I64, _I64, _P, _I64, _I64, _P, _I64, _P, _I64, _P, _P, _P, _I64,
                             _I64, _I64, _P, _P, _I64, _I64, _P, _I64, _I64, _I64, _I, _I, _I, _I, _I],
    "glmv_paged_decode_attention": [_P, _I64, _I64, _P, _P, _I64, _I64, _I64, _P, _I64, _P, _P, _I64, _I, _I, _I, _I,
                                    _F],
}
_fns: dict[str, ctypes._CFuncPtr] | None = None


def _lib() -> dict:
    global _fns
    if _fns is None:
        lib = build.load()
        if lib is None:
            raise RuntimeError(f"glmv's CPU kernels are unavailable: {build.load_error()}")
        fns = {}
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, None
            fns[name] = fn
        _fns = fns
    return _fns


def available() -> bool:
    try:
        _lib()
    except RuntimeError:
        return False
    return True


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _check(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype != torch.bfloat16 or t.device.type != "cpu":
            raise ValueError(f"glmv's CPU kernels take bfloat16 CPU tensors, got {t.dtype} on {t.device}")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    _check(x, weight)
    rows = _rows(x)
    out = torch.empty(rows.shape, dtype=x.dtype)
    _lib()["glmv_rms_norm"](rows.data_ptr(), rows.stride(0), weight.contiguous().data_ptr(), out.data_ptr(),
                            out.stride(0), rows.shape[0], rows.shape[1], eps)
    return out.view(x.shape)


def residual_rms_norm(x: torch.Tensor, residual: torch.Tensor, post_weight: torch.Tensor, next_weight: torch.Tensor,
                      eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    _check(x, residual, post_weight, next_weight)
    xs, rs = _rows(x), _rows(residual)
    hidden = torch.empty(xs.shape, dtype=x.dtype)
    normed = torch.empty_like(hidden)
    _lib()["glmv_residual_rms_norm"](xs.data_ptr(), xs.stride(0), rs.data_ptr(), rs.stride(0),
                                     post_weight.contiguous().data_ptr(), next_weight.contiguous().data_ptr(),
                                     hidden.data_ptr(), hidden.stride(0), normed.data_ptr(), normed.stride(0),
                                     xs.shape[0], xs.shape[1], eps)
    return hidden.view(x.shape), normed.view(x.shape)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    _check(gate_up)
    rows = _rows(gate_up)
    inter = rows.shape[-1] // 2
    out = torch.empty((rows.shape[0], inter), dtype=gate_up.dtype)
    _lib()["glmv_silu_mul"](rows.data_ptr(), rows.stride(0), out.data_ptr(), out.stride(0), rows.shape[0], inter)
    return out.view(*gate_up.shape[:-1], inter)


def rotary_write_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                    k_out: torch.Tensor | None = None, v_out: torch.Tensor | None = None) -> torch.Tensor:
    _check(q, k, v, cos, sin, k_cache, v_cache)
    tokens, heads, dim = q.shape
    kv_heads = k.shape[1]
    if dim % 2 or q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("rotary_write_kv needs an even head_dim and q, k, v with a contiguous last dim")
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1:
        raise ValueError("rotary_write_kv needs K and V caches of one layout with a contiguous last dim")
    cos, sin = cos.contiguous(), sin.contiguous()
    slots = slot_mapping.to(torch.int64).contiguous()
    q_out = torch.empty((tokens, heads, dim), dtype=q.dtype)
    for name, dense in (("k_out", k_out), ("v_out", v_out)):
        if dense is not None and (dense.shape != k.shape or dense.stride(-1) != 1 or dense.dtype != k.dtype):
            raise ValueError(f"rotary_write_kv: {name} must have k's shape and dtype and a contiguous last dim")
    if tokens:
        _lib()["glmv_rotary_write_kv"](
            q.data_ptr(), q.stride(0), q.stride(1), k.data_ptr(), k.stride(0), k.stride(1),
            v.data_ptr(), v.stride(0), v.stride(1), cos.data_ptr(), cos.stride(0), sin.data_ptr(), sin.stride(0),
            q_out.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), k_cache.stride(0), k_cache.stride(1),
            k_cache.stride(2), slots.data_ptr(), *_dense_args(k_out), *_dense_args(v_out), tokens, heads, kv_heads, dim, cos.shape[-1], k_cache.shape[1])
    return q_out


def _dense_args(t: torch.Tensor | None) -> tuple:
    return (t.data_ptr(), t.stride(0), t.stride(1)) if t is not None else (None, 0, 0)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                           seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    _check(q, k_cache, v_cache)
    batch, heads, dim = q.shape
    kv_heads = k_cache.shape[2]
    if q.stride(-1) != 1 or k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1 or heads % kv_heads:
        raise ValueError("paged_decode_attention needs contiguous head rows, K/V caches of one layout and "
                         "heads divisible by kv_heads")
    tables = block_tables.to(torch.int32).contiguous()
    lens = seq_lens.to(torch.int32).contiguous()
    out = torch.empty((batch, heads, dim), dtype=q.dtype)
    if batch:
        _lib()["glmv_paged_decode_attention"](
            q.data_ptr(), q.stride(0), q.stride(1), k_cache.data_ptr(), v_cache.data_ptr(), k_cache.stride(0),
            k_cache.stride(1), k_cache.stride(2), tables.data_ptr(), tables.stride(0), lens.data_ptr(), out.data_ptr(),
            batch, heads, kv_heads, dim, k_cache.shape[1], scale)
    return out
