"""Triton implementation of :func:`tensorkernels.misorientation.misorientation_angle` (432 and 622).

One program handles ``BLOCK`` pairs: 8 loads, the relative rotation ``M = q2 q1^-1``, the symmetry reduction
with the group's rotations as compile-time constants (closed form for 432, an unrolled loop over the
6-fold and 2-fold rotations for 622), and one store. Float64 inputs are computed in float64, everything
else in float32.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

# compile-time constants (Triton reads module globals only when they are tl.constexpr)
_R2 = tl.constexpr(math.sqrt(0.5))
# cos/sin of k * 30 degrees, k = 0..5 (the 622 operators, see tensorkernels.misorientation.HEXAGONAL_OPERATORS)
_C0, _C1, _C2, _C3, _C4, _C5 = (tl.constexpr(math.cos(k * math.pi / 6)) for k in range(6))
_S0, _S1, _S2, _S3, _S4, _S5 = (tl.constexpr(math.sin(k * math.pi / 6)) for k in range(6))
_HALF_PI = tl.constexpr(math.pi / 2)
_QUARTER_PI = tl.constexpr(math.pi / 4)
_TAN_PI_8 = tl.constexpr(math.tan(math.pi / 8))


@triton.jit
def _load(ptr, mask, other, F64: tl.constexpr):
    x = tl.load(ptr, mask=mask, other=other)
    if F64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


@triton.jit
def _sort2(x, y):
    return tl.maximum(x, y), tl.minimum(x, y)


@triton.jit
def _pick(bc, bs, ck, sk):
    better = ck > bc
    return tl.where(better, ck, bc), tl.where(better, sk, bs)


@triton.jit
def _hex_pair(bc, bs, u, v, rest, ct: tl.constexpr, st: tl.constexpr):
    ck = tl.abs(u * ct + v * st)
    w = v * ct - u * st
    return _pick(bc, bs, ck, w * w + rest)


@triton.jit
def _misorientation_kernel(
    q1_ptr, q2_ptr, o_ptr, n, HEX: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    base = offs * 4
    a1 = _load(q1_ptr + base, mask, 1.0, F64)
    b1 = _load(q1_ptr + base + 1, mask, 0.0, F64)
    c1 = _load(q1_ptr + base + 2, mask, 0.0, F64)
    d1 = _load(q1_ptr + base + 3, mask, 0.0, F64)
    a2 = _load(q2_ptr + base, mask, 1.0, F64)
    b2 = _load(q2_ptr + base + 1, mask, 0.0, F64)
    c2 = _load(q2_ptr + base + 2, mask, 0.0, F64)
    d2 = _load(q2_ptr + base + 3, mask, 0.0, F64)
    # M = q2 * conj(q1)
    a = a2 * a1 + b2 * b1 + c2 * c1 + d2 * d1
    b = b2 * a1 - a2 * b1 - c2 * d1 + d2 * c1
    c = c2 * a1 - a2 * c1 + b2 * d1 - d2 * b1
    d = d2 * a1 - a2 * d1 - b2 * c1 + c2 * b1
    if HEX:
        ad2 = a * a + d * d
        bc2 = b * b + c * c
        bc_ = tl.abs(a)
        bs_ = d * d + bc2
        bc_, bs_ = _hex_pair(bc_, bs_, a, d, bc2, _C1, _S1)
        bc_, bs_ = _hex_pair(bc_, bs_, a, d, bc2, _C2, _S2)
        bc_, bs_ = _hex_pair(bc_, bs_, a, d, bc2, _C3, _S3)
        bc_, bs_ = _hex_pair(bc_, bs_, a, d, bc2, _C4, _S4)
        bc_, bs_ = _hex_pair(bc_, bs_, a, d, bc2, _C5, _S5)
        bc_, bs_ = _hex_pair(bc_, bs_, b, c, ad2, _C0, _S0)
        bc_, bs_ = _hex_pair(bc_, bs_, b, c, ad2, _C1, _S1)
        bc_, bs_ = _hex_pair(bc_, bs_, b, c, ad2, _C2, _S2)
        bc_, bs_ = _hex_pair(bc_, bs_, b, c, ad2, _C3, _S3)
        bc_, bs_ = _hex_pair(bc_, bs_, b, c, ad2, _C4, _S4)
        bc_, bs_ = _hex_pair(bc_, bs_, b, c, ad2, _C5, _S5)
        cbest = bc_
        sbest = bs_
    else:
        x0, x1 = _sort2(tl.abs(a), tl.abs(b))
        x2, x3 = _sort2(tl.abs(c), tl.abs(d))
        x0, x2 = _sort2(x0, x2)
        x1, x3 = _sort2(x1, x3)
        x1, x2 = _sort2(x1, x2)
        t23 = x2 * x2 + x3 * x3
        d01 = x0 - x1
        d02 = x0 - x2
        d03 = x0 - x3
        d12 = x1 - x2
        d13 = x1 - x3
        d23 = x2 - x3
        cbest, sbest = _pick(x0, x1 * x1 + t23, (x0 + x1) * _R2, 0.5 * d01 * d01 + t23)
        s3 = 0.25 * (d01 * d01 + d02 * d02 + d03 * d03 + d12 * d12 + d13 * d13 + d23 * d23)
        cbest, sbest = _pick(cbest, sbest, 0.5 * (x0 + x1 + x2 + x3), s3)
    # 2 * atan2(sqrt(s), c) with c >= 0: use atan(y/x) for y <= x and pi/2 - atan(x/y) otherwise
    y = tl.sqrt(sbest)
    x = cbest
    small = y <= x
    num = tl.where(small, y, x)
    den = tl.where(small, x, y)
    r = tl.where(den > 0, num / tl.where(den > 0, den, 1.0), 0.0)
    t = _atan_unit(r)
    ang = tl.where(small, t, _HALF_PI - t)
    tl.store(o_ptr + offs, (2.0 * ang).to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _atan_unit(r):
    """atan(r) for 0 <= r <= 1: range reduction about tan(pi/8) and an odd Taylor series;
    accurate to ~1e-15 in float64 after two reductions, ~1e-7 in float32."""
    # reduce with atan(r) = pi/4 + atan((r - 1) / (r + 1)) for r > tan(pi/8)
    big = r > _TAN_PI_8
    z = tl.where(big, (r - 1.0) / (r + 1.0), r)  # |z| <= tan(pi/8)
    # second reduction: atan(z) = 2 atan(z / (1 + sqrt(1 + z^2)))
    z = z / (1.0 + tl.sqrt(1.0 + z * z))  # |z| <= tan(pi/16) ~ 0.199
    z2 = z * z
    # atan(z) = z - z^3/3 + z^5/5 - ... ; |z| < 0.2: 11 terms give < 1e-16
    p = 1.0 / 21.0
    p = p * z2 - 1.0 / 19.0
    p = p * z2 + 1.0 / 17.0
    p = p * z2 - 1.0 / 15.0
    p = p * z2 + 1.0 / 13.0
    p = p * z2 - 1.0 / 11.0
    p = p * z2 + 1.0 / 9.0
    p = p * z2 - 1.0 / 7.0
    p = p * z2 + 1.0 / 5.0
    p = p * z2 - 1.0 / 3.0
    at = 2.0 * (z + z * z2 * p)
    return tl.where(big, _QUARTER_PI + at, at)


def triton_misorientation_angle(q1: torch.Tensor, q2: torch.Tensor, group: str) -> torch.Tensor:
    shape = torch.broadcast_shapes(q1.shape, q2.shape)
    a = q1.expand(shape).contiguous()  # no copy when already of the full shape and contiguous
    b = q2.expand(shape).contiguous()
    out = torch.empty(shape[:-1], dtype=a.dtype, device=a.device)
    n = out.numel()
    if n == 0:
        return out
    BLOCK = 512
    grid = (triton.cdiv(n, BLOCK),)
    _misorientation_kernel[grid](
        a, b, out, n, HEX=(group == "622"), F64=(a.dtype == torch.float64), BLOCK=BLOCK, num_warps=4,
    )
    return out
