"""Triton kernel for :func:`tensorkernels.tucker_change.tucker_relative_change` (order 3, ranks <= 16).

One program: the float64 cross-Gram matrices ``U_a^T U_b`` of the two iterates' factors (walked in ``BI``-row
chunks), then the three inner products ``<G_a, G_b x_1 M_1 x_2 M_2 x_3 M_3>`` on the zero-padded ``(RP, RP, RP)``
cores in registers, then the relative change: one launch where the torch path takes about 25.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _grams(uo_ptr, un_ptr, I, R, BI: tl.constexpr, RP: tl.constexpr):
    """``(Uo^T Uo, Un^T Un, Uo^T Un)`` in float64 for one mode (``(I, R)`` row-major factors)."""
    offs_r = tl.arange(0, RP)
    mask_r = offs_r < R
    oo = tl.zeros((RP, RP), dtype=tl.float64)
    nn = tl.zeros((RP, RP), dtype=tl.float64)
    on = tl.zeros((RP, RP), dtype=tl.float64)
    for i0 in range(0, I, BI):
        offs_i = i0 + tl.arange(0, BI)
        m = (offs_i < I)[:, None] & mask_r[None, :]
        uo = tl.load(uo_ptr + offs_i[:, None] * R + offs_r[None, :], mask=m, other=0.0).to(tl.float64)
        un = tl.load(un_ptr + offs_i[:, None] * R + offs_r[None, :], mask=m, other=0.0).to(tl.float64)
        uot = tl.trans(uo)
        oo += tl.dot(uot, uo, input_precision="ieee")
        nn += tl.dot(tl.trans(un), un, input_precision="ieee")
        on += tl.dot(uot, un, input_precision="ieee")
    return oo, nn, on


@triton.jit
def _contract3(G, M0, M1, M2, RP: tl.constexpr):
    """``G x_1 M0 x_2 M1 x_3 M2`` for a ``(RP, RP, RP)`` tensor and ``(RP, RP)`` matrices (float64)."""
    T = tl.reshape(tl.dot(M0, tl.reshape(G, (RP, RP * RP)), input_precision="ieee"), (RP, RP, RP))
    T = tl.reshape(tl.dot(tl.reshape(T, (RP * RP, RP)), tl.trans(M2), input_precision="ieee"), (RP, RP, RP))
    T = tl.reshape(tl.permute(T, (0, 2, 1)), (RP * RP, RP))
    T = tl.reshape(tl.dot(T, tl.trans(M1), input_precision="ieee"), (RP, RP, RP))
    return tl.permute(T, (0, 2, 1))


@triton.jit
def _tucker_change_kernel(uo_ptr, un_ptr, co_ptr, cn_ptr, out_ptr, I, R, BI: tl.constexpr, RP: tl.constexpr):
    oo0, nn0, on0 = _grams(uo_ptr, un_ptr, I, R, BI, RP)
    oo1, nn1, on1 = _grams(uo_ptr + I * R, un_ptr + I * R, I, R, BI, RP)
    oo2, nn2, on2 = _grams(uo_ptr + 2 * I * R, un_ptr + 2 * I * R, I, R, BI, RP)
    a = tl.arange(0, RP)
    m = (a < R)[:, None, None] & (a < R)[None, :, None] & (a < R)[None, None, :]
    offs = a[:, None, None] * R * R + a[None, :, None] * R + a[None, None, :]
    go = tl.load(co_ptr + offs, mask=m, other=0.0).to(tl.float64)
    gn = tl.load(cn_ptr + offs, mask=m, other=0.0).to(tl.float64)
    aa = tl.sum(tl.reshape(go * _contract3(go, oo0, oo1, oo2, RP), (RP * RP * RP,)), axis=0)
    bb = tl.sum(tl.reshape(gn * _contract3(gn, nn0, nn1, nn2, RP), (RP * RP * RP,)), axis=0)
    ab = tl.sum(tl.reshape(go * _contract3(gn, on0, on1, on2, RP), (RP * RP * RP,)), axis=0)
    d2 = tl.maximum(aa + bb - 2.0 * ab, 0.0)
    tl.store(out_ptr, tl.sqrt(d2) / tl.maximum(tl.sqrt(aa), 2.2250738585072014e-308))


#: largest rank the kernel takes (the padded cores live in registers)
MAX_RANK = 16


def triton_tucker_relative_change(Uo: torch.Tensor, co: torch.Tensor, Un: torch.Tensor, cn: torch.Tensor) -> torch.Tensor:
    """``Uo``, ``Un``: ``(3, I, r)`` stacked factors; ``co``, ``cn``: ``(r, r, r)`` cores; one dtype/device.
    Returns a 0-d float64 tensor on the device."""
    Uo, Un, co, cn = (t.contiguous() for t in (Uo, Un, co, cn))
    I, R = Uo.shape[1], Uo.shape[2]
    out = torch.empty((), dtype=torch.float64, device=Uo.device)
    RP = max(16, triton.next_power_of_2(R))
    _tucker_change_kernel[(1,)](Uo, Un, co, cn, out, I, R, BI=32, RP=RP, num_warps=8)
    return out
