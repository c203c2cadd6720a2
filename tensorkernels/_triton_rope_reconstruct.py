"""Triton implementation of :func:`tensorkernels.rope_reconstruct.rope_reconstruct`.

One program per (batch, key-value head, block of BLOCK_N selected tokens): it gathers the r-vectors of its rows,
multiplies them by the head's two halves of ``Bf`` (blocks of BLOCK_R ranks, float32 accumulation), then rotates
and writes both halves.

The rotation's cos/sin come from a ``(B, T, D/2)`` table computed by torch, not from ``tl.cos``/``tl.sin`` (which
may lower to approximate GPU instructions whose error grows with the angle, and position x frequency reaches
thousands of radians): the table matches torch's (and HF's) own RoPE values and costs one read per gathered row.
float32 products are explicit IEEE ``tl.dot``s: written as a broadcast-multiply-sum they ran ~1e-3 off a float64
reference on an H100 (2026-12-07) while exact in the interpreter, as Triton turns that pattern into a TF32 dot.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rope_reconstruct_kernel(
    a_ptr, b_ptr, idx_ptr, cos_ptr, sin_ptr, o_ptr,
    T, R, N, HK, HALF,
    s_ab, s_at, s_ar,
    s_bb, s_br, s_bc,
    s_ib, s_ih, s_in,
    s_cb, s_ct,
    s_ob, s_oh, s_on, s_od,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr, USE_DOT: tl.constexpr,
    CDT: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = pid_bh // HK
    h = pid_bh % HK
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = tl.load(idx_ptr + b * s_ib + h * s_ih + offs_n * s_in, mask=mask_n, other=0).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < HALF
    col1 = h * (2 * HALF) + offs_h
    col2 = col1 + HALF
    acc1 = tl.zeros((BLOCK_N, BLOCK_H), dtype=CDT)
    acc2 = tl.zeros((BLOCK_N, BLOCK_H), dtype=CDT)
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < R
        a = tl.load(a_ptr + b * s_ab + rows[:, None] * s_at + offs_r[None, :] * s_ar,
                    mask=mask_n[:, None] & mask_r[None, :], other=0.0)
        bm = mask_r[:, None] & mask_h[None, :]
        b1 = tl.load(b_ptr + b * s_bb + offs_r[:, None] * s_br + col1[None, :] * s_bc, mask=bm, other=0.0)
        b2 = tl.load(b_ptr + b * s_bb + offs_r[:, None] * s_br + col2[None, :] * s_bc, mask=bm, other=0.0)
        if USE_DOT:
            acc1 += tl.dot(a, b1, out_dtype=tl.float32)
            acc2 += tl.dot(a, b2, out_dtype=tl.float32)
        elif CDT == tl.float32:
            # explicit full-precision product: Triton's compiler turns the broadcast-multiply-sum below into a
            # tensor-core dot with its default (TF32) precision for float32, ~1e-3 off on an H100
            acc1 += tl.dot(a.to(tl.float32), b1.to(tl.float32), input_precision="ieee", out_dtype=tl.float32)
            acc2 += tl.dot(a.to(tl.float32), b2.to(tl.float32), input_precision="ieee", out_dtype=tl.float32)
        else:
            af = a.to(CDT)
            acc1 += tl.sum(af[:, :, None] * b1.to(CDT)[None, :, :], axis=1)
            acc2 += tl.sum(af[:, :, None] * b2.to(CDT)[None, :, :], axis=1)
    om = mask_n[:, None] & mask_h[None, :]
    toff = b * s_cb + rows[:, None] * s_ct + offs_h[None, :]
    c = tl.load(cos_ptr + toff, mask=om, other=0.0)
    s = tl.load(sin_ptr + toff, mask=om, other=0.0)
    o1 = acc1 * c - acc2 * s
    o2 = acc2 * c + acc1 * s
    base = o_ptr + b * s_ob + h * s_oh + offs_n[:, None] * s_on
    tl.store(base + offs_h[None, :] * s_od, o1.to(o_ptr.dtype.element_ty), mask=om)
    tl.store(base + (offs_h[None, :] + HALF) * s_od, o2.to(o_ptr.dtype.element_ty), mask=om)


def triton_rope_reconstruct(A, Bf, idx, positions, inv_freq, scaling: float) -> torch.Tensor:
    B, T, R = A.shape
    HK, N = idx.shape[1], idx.shape[2]
    HALF = inv_freq.shape[0]
    out = torch.empty(B, HK, N, 2 * HALF, dtype=A.dtype, device=A.device)
    if out.numel() == 0:
        return out
    if Bf.dtype != A.dtype:
        Bf = Bf.to(A.dtype)
    is64 = A.dtype == torch.float64
    cdt = torch.float64 if is64 else torch.float32
    th = positions.to(cdt)[..., None] * inv_freq.to(device=A.device, dtype=cdt)   # (B, T, HALF)
    cos_t = (th.cos() * scaling).contiguous()
    sin_t = (th.sin() * scaling).contiguous()
    BLOCK_H = max(16, triton.next_power_of_2(HALF))
    # tl.dot for half-precision factors on a GPU; the exact float32/float64 products otherwise
    use_dot = A.is_cuda and A.dtype in (torch.float16, torch.bfloat16)
    BLOCK_N = 32 if use_dot else 16
    BLOCK_R = 32 if use_dot else 16
    grid = (B * HK, triton.cdiv(N, BLOCK_N))
    _rope_reconstruct_kernel[grid](
        A, Bf, idx, cos_t, sin_t, out,
        T, R, N, HK, HALF,
        A.stride(0), A.stride(1), A.stride(2),
        Bf.stride(0), Bf.stride(1), Bf.stride(2),
        idx.stride(0), idx.stride(1), idx.stride(2),
        cos_t.stride(0), cos_t.stride(1),
        out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        BLOCK_N=BLOCK_N, BLOCK_R=BLOCK_R, BLOCK_H=BLOCK_H, USE_DOT=use_dot, CDT=tl.float64 if is64 else tl.float32,
        num_warps=4,
    )
    return out
