"""Triton implementation of :func:`tensorkernels.threshold.threshold_residual`."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _threshold_residual_kernel(
    y_ptr, x_ptr, o_ptr, n, zeta,
    HAS_X: tl.constexpr, SOFT: tl.constexpr, RESIDUAL: tl.constexpr, KEPT: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    d = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_X:
        d = d - tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = tl.abs(d)
    if SOFT:
        if RESIDUAL:
            r = -tl.minimum(tl.maximum(d, -zeta), zeta)
        elif KEPT:
            r = tl.minimum(tl.maximum(d, -zeta), zeta)
        else:
            mag = tl.maximum(a - zeta, 0.0)
            r = tl.where(d > 0, mag, tl.where(d < 0, -mag, 0.0))
    else:
        if RESIDUAL:
            r = tl.where(a <= zeta, -d, 0.0)
        elif KEPT:
            r = tl.where(a <= zeta, d, 0.0)
        else:
            r = tl.where(a > zeta, d, 0.0)
    tl.store(o_ptr + offs, r.to(o_ptr.dtype.element_ty), mask=mask)


def triton_threshold_residual(Y, X, zeta: float, mode: str, out: str) -> torch.Tensor:
    Yc = Y.contiguous()
    Xc = X.contiguous() if X is not None else Yc
    o = torch.empty_like(Yc)
    n = Yc.numel()
    if n == 0:
        return o
    BLOCK = 4096
    grid = (triton.cdiv(n, BLOCK),)
    _threshold_residual_kernel[grid](
        Yc, Xc, o, n, zeta,
        HAS_X=X is not None, SOFT=(mode == "soft"), RESIDUAL=(out == "residual"), KEPT=(out == "kept"), BLOCK=BLOCK,
        num_warps=8,
    )
    return o
