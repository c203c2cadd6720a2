"""Fused CPU loops for :func:`tensorkernels.misorientation.misorientation_angle` (numba, multi-threaded).

The same formulas as the torch reference and the Triton kernel (see :mod:`tensorkernels.misorientation`), one
pass per pair: load 8 numbers, relative rotation, symmetry reduction, ``2 atan2(|vec|, |scal|)``.
Compiled on first use and cached on disk (``cache=True``).
"""
from __future__ import annotations

import math

import numba as nb

_R2 = math.sqrt(0.5)
_HC = tuple(math.cos(k * math.pi / 6) for k in range(6))
_HS = tuple(math.sin(k * math.pi / 6) for k in range(6))


@nb.njit(inline="always", cache=True)
def _relative(q1, q2, i):
    a1, b1, c1, d1 = q1[i, 0], q1[i, 1], q1[i, 2], q1[i, 3]
    a2, b2, c2, d2 = q2[i, 0], q2[i, 1], q2[i, 2], q2[i, 3]
    return (a2 * a1 + b2 * b1 + c2 * c1 + d2 * d1, b2 * a1 - a2 * b1 - c2 * d1 + d2 * c1,
            c2 * a1 - a2 * c1 + b2 * d1 - d2 * b1, d2 * a1 - a2 * d1 - b2 * c1 + c2 * b1)


@nb.njit(parallel=True, cache=True)
def cubic_angles(q1, q2, out):
    """432: ``out[i]`` = misorientation angle of rows ``q1[i]``, ``q2[i]`` (``(n, 4)`` C-contiguous)."""
    for i in nb.prange(out.shape[0]):
        a, b, c, d = _relative(q1, q2, i)
        x0, x1, x2, x3 = abs(a), abs(b), abs(c), abs(d)
        if x1 > x0:
            x0, x1 = x1, x0
        if x3 > x2:
            x2, x3 = x3, x2
        if x2 > x0:
            x0, x2 = x2, x0
        if x3 > x1:
            x1, x3 = x3, x1
        if x2 > x1:
            x1, x2 = x2, x1
        t23 = x2 * x2 + x3 * x3
        d01 = x0 - x1
        cb, sb = x0, x1 * x1 + t23
        c2 = (x0 + x1) * _R2
        if c2 > cb:
            cb, sb = c2, 0.5 * d01 * d01 + t23
        c3 = 0.5 * (x0 + x1 + x2 + x3)
        if c3 > cb:
            d02, d03, d12, d13, d23 = x0 - x2, x0 - x3, x1 - x2, x1 - x3, x2 - x3
            cb = c3
            sb = 0.25 * (d01 * d01 + d02 * d02 + d03 * d03 + d12 * d12 + d13 * d13 + d23 * d23)
        out[i] = 2.0 * math.atan2(math.sqrt(sb), cb)


@nb.njit(parallel=True, cache=True)
def hexagonal_angles(q1, q2, out):
    """622: as :func:`cubic_angles` for the 6-fold about z and the 2-folds in the basal plane."""
    for i in nb.prange(out.shape[0]):
        a, b, c, d = _relative(q1, q2, i)
        ad2 = a * a + d * d
        bc2 = b * b + c * c
        cb, sb = abs(a), d * d + bc2
        for k in range(6):
            ct, st = _HC[k], _HS[k]
            ck = abs(a * ct + d * st)
            if ck > cb:
                w = d * ct - a * st
                cb, sb = ck, w * w + bc2
            ck = abs(b * ct + c * st)
            if ck > cb:
                w = c * ct - b * st
                cb, sb = ck, w * w + ad2
        out[i] = 2.0 * math.atan2(math.sqrt(sb), cb)
