"""Triton implementation of :mod:`tensorkernels.quant` (quantize + pack; dequantize + sum over ranks)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _quant_pack_kernel(x_ptr, cs_ptr, cz_ptr, rs_ptr, o_ptr, D, NB, stride_x,
                       HAS_ROW: tl.constexpr, BITS: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    jb = tl.program_id(1)
    j = jb * BLOCK + tl.arange(0, BLOCK)           # output byte index
    qmax = (1 << BITS) - 1
    rs = 1.0
    if HAS_ROW:
        rs = tl.load(rs_ptr + n).to(tl.float32)
    row = x_ptr + n.to(tl.int64) * stride_x
    if BITS == 8:
        m = j < D
        x = tl.load(row + j, mask=m, other=0.0).to(tl.float32)
        s = tl.load(cs_ptr + j, mask=m, other=1.0) * rs
        z = tl.load(cz_ptr + j, mask=m, other=0.0)
        q = tl.minimum(tl.maximum(_rnd(x / s + z), 0.0), qmax)
        tl.store(o_ptr + n.to(tl.int64) * NB + j, q.to(tl.uint8), mask=m)
    else:
        c0 = 2 * j
        c1 = 2 * j + 1
        m0 = c0 < D
        m1 = c1 < D
        x0 = tl.load(row + c0, mask=m0, other=0.0).to(tl.float32)
        x1 = tl.load(row + c1, mask=m1, other=0.0).to(tl.float32)
        s0 = tl.load(cs_ptr + c0, mask=m0, other=1.0) * rs
        s1 = tl.load(cs_ptr + c1, mask=m1, other=1.0) * rs
        z0 = tl.load(cz_ptr + c0, mask=m0, other=0.0)
        z1 = tl.load(cz_ptr + c1, mask=m1, other=0.0)
        q0 = tl.minimum(tl.maximum(_rnd(x0 / s0 + z0), 0.0), qmax).to(tl.int32)
        q1 = tl.minimum(tl.maximum(_rnd(x1 / s1 + z1), 0.0), qmax).to(tl.int32)
        q1 = tl.where(m1, q1, 0)
        b = q0 | (q1 << 4)
        tl.store(o_ptr + n.to(tl.int64) * NB + j, b.to(tl.uint8), mask=j < NB)


@triton.jit
def _rnd(v):
    # round half to even (torch.round semantics): floor(v + 0.5), minus 1 on exact odd ties
    f = tl.floor(v + 0.5)
    tie = (f - v) == 0.5
    odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
    return tl.where(tie & odd, f - 1.0, f)


@triton.jit
def _dequant_sum_kernel(p_ptr, cs_ptr, cz_ptr, rs_ptr, o_ptr, W, N, D, NB,
                        HAS_ROW: tl.constexpr, BITS: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    cb = tl.program_id(1)
    c = cb * BLOCK + tl.arange(0, BLOCK)
    m = c < D
    cs = tl.load(cs_ptr + c, mask=m, other=0.0)
    cz = tl.load(cz_ptr + c, mask=m, other=0.0)
    if BITS == 8:
        byte = c
    else:
        byte = c // 2
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for w in range(0, W):
        base = (w * N + n).to(tl.int64) * NB
        b = tl.load(p_ptr + base + byte, mask=m, other=0).to(tl.int32)
        if BITS == 4:
            b = tl.where((c % 2) == 0, b & 15, b >> 4)
        s = cs
        if HAS_ROW:
            s = s * tl.load(rs_ptr + w * N + n).to(tl.float32)
        acc += (b.to(tl.float32) - cz) * s
    tl.store(o_ptr + n.to(tl.int64) * D + c, acc, mask=m)


def triton_quantize_pack(x, col_scale, col_zero, row_scale, bits: int) -> torch.Tensor:
    N, D = x.shape
    x = x if x.stride(1) == 1 else x.contiguous()
    NB = (D * bits + 7) // 8
    out = torch.empty(N, NB, dtype=torch.uint8, device=x.device)
    if N == 0 or D == 0:
        return out
    cs = col_scale.float().contiguous()
    cz = col_zero.float().contiguous()
    rs = row_scale.float().contiguous() if row_scale is not None else cs
    BLOCK = min(1024, triton.next_power_of_2(NB))
    grid = (N, triton.cdiv(NB, BLOCK))
    _quant_pack_kernel[grid](x, cs, cz, rs, out, D, NB, x.stride(0), HAS_ROW=row_scale is not None,
                             BITS=bits, BLOCK=BLOCK)
    return out


def triton_dequantize_sum(packed, col_scale, col_zero, D: int, row_scale, bits: int) -> torch.Tensor:
    W, N, NB = packed.shape
    packed = packed.contiguous()
    out = torch.empty(N, D, dtype=torch.float32, device=packed.device)
    if N == 0 or D == 0:
        return out
    cs = col_scale.float().contiguous()
    cz = col_zero.float().contiguous()
    rs = row_scale.float().contiguous() if row_scale is not None else cs
    BLOCK = min(1024, triton.next_power_of_2(D))
    grid = (N, triton.cdiv(D, BLOCK))
    _dequant_sum_kernel[grid](packed, cs, cz, rs, out, W, N, D, NB, HAS_ROW=row_scale is not None,
                              BITS=bits, BLOCK=BLOCK)
    return out
