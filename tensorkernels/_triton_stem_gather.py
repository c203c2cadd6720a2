"""Triton implementation of :func:`tensorkernels.stem_gather.gather_act_mul` (float32 arithmetic)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_gathered_ff import _ACT_CODE, _act


@triton.jit
def _gather_act_mul_kernel(g_ptr, idx_ptr, t_ptr, h_ptr, F, sgr, sgf, st0, st1, shr,
                           ACT: tl.constexpr, BLOCK_F: tl.constexpr):
    r = tl.program_id(0)
    pf = tl.program_id(1)
    offs = pf * BLOCK_F + tl.arange(0, BLOCK_F)
    m = offs < F
    row = tl.load(idx_ptr + r).to(tl.int64)
    g = tl.load(g_ptr + r.to(tl.int64) * sgr + offs * sgf, mask=m, other=0.0).to(tl.float32)
    e = tl.load(t_ptr + row * st0 + offs * st1, mask=m, other=0.0).to(tl.float32)
    h = _act(g, ACT) * e
    tl.store(h_ptr + r.to(tl.int64) * shr + offs, h.to(h_ptr.dtype.element_ty), mask=m)


def triton_gather_act_mul(gate: torch.Tensor, idx: torch.Tensor, table: torch.Tensor, act: str) -> torch.Tensor:
    F = gate.shape[-1]
    g2 = gate.reshape(-1, F)
    i1 = idx.reshape(-1)
    if not i1.is_contiguous():
        i1 = i1.contiguous()
    R = g2.shape[0]
    h = torch.empty((R, F), device=gate.device, dtype=gate.dtype)
    if R == 0 or F == 0:
        return h.reshape(gate.shape)
    BLOCK_F = min(1024, triton.next_power_of_2(F))
    _gather_act_mul_kernel[(R, triton.cdiv(F, BLOCK_F))](
        g2, i1, table, h, F, g2.stride(0), g2.stride(1), table.stride(0), table.stride(1), h.stride(0),
        ACT=_ACT_CODE[act], BLOCK_F=BLOCK_F, num_warps=4,
    )
    return h.reshape(gate.shape)


@triton.jit
def _gather_rows_kernel(t_ptr, idx_ptr, o_ptr, W, st0, so0, BLOCK: tl.constexpr):
    r = tl.program_id(0)
    pw = tl.program_id(1)
    offs = pw * BLOCK + tl.arange(0, BLOCK)
    m = offs < W
    row = tl.load(idx_ptr + r).to(tl.int64)
    v = tl.load(t_ptr + row * st0 + offs, mask=m, other=0.0)
    tl.store(o_ptr + r.to(tl.int64) * so0 + offs, v, mask=m)


def triton_gather_rows(table: torch.Tensor, idx: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    R, W = out.shape
    if R == 0 or W == 0:
        return out
    i1 = idx if idx.is_contiguous() else idx.contiguous()
    BLOCK = min(4096, triton.next_power_of_2(W))
    _gather_rows_kernel[(R, triton.cdiv(W, BLOCK))](table, i1, out, W, table.stride(0), out.stride(0),
                                                    BLOCK=BLOCK, num_warps=4)
    return out
