"""Triton implementation of :func:`tensorkernels.gathered_ff.gathered_ff` (two kernels, float32 accumulation)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_ACT_CODE = {"silu": 0, "gelu": 1, "gelu_tanh": 2, "relu": 3}


@triton.jit
def _act(g, ACT: tl.constexpr):
    if ACT == 0:
        r = g * tl.sigmoid(g)
    elif ACT == 1:
        r = 0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476))
    elif ACT == 2:
        z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        r = 0.5 * g * (1.0 + (2.0 * tl.sigmoid(2.0 * z) - 1.0))
    else:
        r = tl.maximum(g, 0.0)
    return r


@triton.jit
def _gathered_in_kernel(
    x_ptr, idx_ptr, wu_ptr, wg_ptr, bu_ptr, bg_ptr, h_ptr,
    S, D, K,
    sxr, sxd, sib, sik, swu0, swu1, swg0, swg1,
    GATED: tl.constexpr, HAS_BU: tl.constexpr, HAS_BG: tl.constexpr, ACT: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    r = tl.program_id(0)            # token row: b * S + s
    pk = tl.program_id(1)
    b = r // S
    offs_k = pk * BLOCK_K + tl.arange(0, BLOCK_K)
    mk = offs_k < K
    rows = tl.load(idx_ptr + b * sib + offs_k * sik, mask=mk, other=0).to(tl.int64)
    acc_u = tl.zeros((BLOCK_K,), dtype=tl.float32)
    acc_g = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        md = offs_d < D
        xv = tl.load(x_ptr + r.to(tl.int64) * sxr + offs_d * sxd, mask=md, other=0.0).to(tl.float32)
        m2 = mk[:, None] & md[None, :]
        wu = tl.load(wu_ptr + rows[:, None] * swu0 + offs_d[None, :] * swu1, mask=m2, other=0.0).to(tl.float32)
        acc_u += tl.sum(wu * xv[None, :], axis=1)
        if GATED:
            wg = tl.load(wg_ptr + rows[:, None] * swg0 + offs_d[None, :] * swg1, mask=m2, other=0.0).to(tl.float32)
            acc_g += tl.sum(wg * xv[None, :], axis=1)
    if HAS_BU:
        acc_u += tl.load(bu_ptr + rows, mask=mk, other=0.0).to(tl.float32)
    if GATED:
        if HAS_BG:
            acc_g += tl.load(bg_ptr + rows, mask=mk, other=0.0).to(tl.float32)
        h = _act(acc_g, ACT) * acc_u
    else:
        h = _act(acc_u, ACT)
    tl.store(h_ptr + r.to(tl.int64) * K + offs_k, h, mask=mk)


@triton.jit
def _gathered_out_kernel(
    h_ptr, idx_ptr, wd_ptr, y_ptr,
    S, K, N,
    sib, sik, swd0, swd1, syr, syn,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
):
    r = tl.program_id(0)
    pn = tl.program_id(1)
    b = r // S
    offs_n = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    mn = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for t0 in range(0, K, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mt = offs_t < K
        rows = tl.load(idx_ptr + b * sib + offs_t * sik, mask=mt, other=0).to(tl.int64)
        hv = tl.load(h_ptr + r.to(tl.int64) * K + offs_t, mask=mt, other=0.0)
        w = tl.load(wd_ptr + rows[:, None] * swd0 + offs_n[None, :] * swd1,
                    mask=mt[:, None] & mn[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(w * hv[:, None], axis=0)
    tl.store(y_ptr + r.to(tl.int64) * syr + offs_n * syn, acc.to(y_ptr.dtype.element_ty), mask=mn)


def triton_gathered_ff(x, idx, w_up, w_down_t, w_gate, b_up, b_gate, act: str) -> torch.Tensor:
    squeeze = x.dim() == 2
    xs = x.unsqueeze(1) if squeeze else x
    B, S, D = xs.shape
    K = idx.shape[1]
    N = w_down_t.shape[1]
    x2 = xs.reshape(B * S, D)
    y = torch.empty((B * S, N), device=x.device, dtype=x.dtype)
    if B * S == 0 or N == 0:
        return y.reshape(B, S, N).squeeze(1) if squeeze else y.reshape(B, S, N)
    if K == 0:
        y.zero_()
        return y.reshape(B, S, N).squeeze(1) if squeeze else y.reshape(B, S, N)
    h = torch.empty((B * S, K), device=x.device, dtype=torch.float32)
    gated = w_gate is not None
    wg = w_gate if gated else w_up
    BLOCK_K, BLOCK_D = 32, 128
    _gathered_in_kernel[(B * S, triton.cdiv(K, BLOCK_K))](
        x2, idx, w_up, wg, b_up if b_up is not None else w_up, b_gate if b_gate is not None else w_up, h,
        S, D, K,
        x2.stride(0), x2.stride(1), idx.stride(0), idx.stride(1), w_up.stride(0), w_up.stride(1),
        wg.stride(0), wg.stride(1),
        GATED=gated, HAS_BU=b_up is not None, HAS_BG=b_gate is not None, ACT=_ACT_CODE[act],
        BLOCK_K=BLOCK_K, BLOCK_D=BLOCK_D, num_warps=4,
    )
    BLOCK_T, BLOCK_N = 32, 128
    _gathered_out_kernel[(B * S, triton.cdiv(N, BLOCK_N))](
        h, idx, w_down_t, y,
        S, K, N,
        idx.stride(0), idx.stride(1), w_down_t.stride(0), w_down_t.stride(1), y.stride(0), y.stride(1),
        BLOCK_T=BLOCK_T, BLOCK_N=BLOCK_N, num_warps=4,
    )
    y = y.reshape(B, S, N)
    return y.squeeze(1) if squeeze else y
