"""Misorientation angle between two orientation fields with cubic (432) or hexagonal (622) crystal symmetry.

For unit quaternions ``q1, q2`` with the same crystal symmetry acting on the left (orix's passive
convention: ``S_i q`` is the same orientation as ``q``), the misorientation between any two equivalents is
``S_i q2 q1^-1 S_j^-1``. Its angle is unchanged by conjugation with ``S_j``, so it equals the angle of
``S_j^-1 S_i M`` with ``M = q2 q1^-1``: the minimum over *pairs* is a minimum over the group,

    omega = min_k angle(S_k^-1 M) = 2 * acos(max_k |<S_k, M>|),

and ``|.|`` takes care of ``q ~ -q`` (each rotation is stored once). We evaluate it as
``2 * atan2(|vec(S_k^-1 M)|, |scal(S_k^-1 M)|)`` for the best ``k``, with the vector norm written as a sum of
squares, which keeps small angles accurate in float32 (``acos`` near 1 would lose half the digits).

* ``432`` (24 rotations): with ``x1 >= x2 >= x3 >= x4`` the sorted ``|a|, |b|, |c|, |d|`` of ``M``, the
  24 dot products reduce to three candidates: ``x1`` (identity and the 2-folds about <100>),
  ``(x1 + x2) / sqrt(2)`` (4-folds about <100>, 2-folds about <110>), ``(x1 + x2 + x3 + x4) / 2`` (3-folds
  about <111>).
* ``622`` (12 rotations, 6-fold along z, 2-folds along x and y as in orix ``D6``): the 6-fold rotations
  only mix ``(a, d)``, the 2-folds only ``(b, c)``; each gives ``|u cos t + v sin t|`` for ``t = k*30 deg``.

Backends: ``"triton"`` (``_triton_misorientation``: the same formulas with the operators as compile-time
constants, one fused pass); ``"torch"``: :func:`torch_misorientation_angle`, the reference (any device).
With the default ``backend=None``/``"auto"`` on CPU tensors, the same formulas run as one fused,
multi-threaded loop compiled by numba when numba is importable (it is a dependency of orix); eager torch
needs ~80 passes over memory for these few flops per pair, the fused loop one. The numba loop is tested
against the torch reference; ``backend="torch"`` (or ``EBSDTK_KERNEL_BACKEND=torch``) skips it.
"""
from __future__ import annotations

import functools
import math
import os

import torch

from ._dispatch import resolve_backend

__all__ = ["misorientation_angle", "CUBIC_OPERATORS", "HEXAGONAL_OPERATORS", "GROUP_ALIASES"]

_R2 = math.sqrt(0.5)
_R3 = math.sqrt(0.75)

# The rotation groups as unit quaternions (scalar first), one per rotation. Same rotations as orix's O and D6.
CUBIC_OPERATORS = (
    (1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0),
    (_R2, _R2, 0.0, 0.0), (_R2, -_R2, 0.0, 0.0), (_R2, 0.0, _R2, 0.0), (_R2, 0.0, -_R2, 0.0),
    (_R2, 0.0, 0.0, _R2), (_R2, 0.0, 0.0, -_R2), (0.0, _R2, _R2, 0.0), (0.0, _R2, -_R2, 0.0),
    (0.0, _R2, 0.0, _R2), (0.0, _R2, 0.0, -_R2), (0.0, 0.0, _R2, _R2), (0.0, 0.0, _R2, -_R2),
    (0.5, 0.5, 0.5, 0.5), (0.5, 0.5, 0.5, -0.5), (0.5, 0.5, -0.5, 0.5), (0.5, 0.5, -0.5, -0.5),
    (0.5, -0.5, 0.5, 0.5), (0.5, -0.5, 0.5, -0.5), (0.5, -0.5, -0.5, 0.5), (0.5, -0.5, -0.5, -0.5),
)
_HEX_T = [k * math.pi / 6 for k in range(6)]  # 0, 30, ..., 150 degrees
HEXAGONAL_OPERATORS = tuple((math.cos(t), 0.0, 0.0, math.sin(t)) for t in _HEX_T) + tuple(
    (0.0, math.cos(t), math.sin(t), 0.0) for t in _HEX_T
)

GROUP_ALIASES = {
    "432": "432", "m-3m": "432", "m3m": "432", "oh": "432", "o": "432",
    "622": "622", "6/mmm": "622", "d6h": "622", "d6": "622",
}


def _group(group: str) -> str:
    g = GROUP_ALIASES.get(str(group).strip().lower())
    if g is None:
        raise ValueError(f"misorientation kernel supports the groups 432 (m-3m) and 622 (6/mmm), got {group!r}")
    return g


def _prep(q1: torch.Tensor, q2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if q1.shape[-1:] != (4,) or q2.shape[-1:] != (4,):
        raise ValueError(f"quaternions need a last dimension of 4, got {tuple(q1.shape)} and {tuple(q2.shape)}")
    if q1.device != q2.device:
        raise ValueError(f"q1 and q2 are on different devices ({q1.device}, {q2.device})")
    dt = torch.promote_types(q1.dtype, q2.dtype)
    if not dt.is_floating_point:
        dt = torch.get_default_dtype()
    return q1.to(dt), q2.to(dt)


def _relative(q1: torch.Tensor, q2: torch.Tensor):
    """Components of ``M = q2 * conj(q1)`` (broadcast)."""
    a1, b1, c1, d1 = q1.unbind(-1)
    a2, b2, c2, d2 = q2.unbind(-1)
    a = a2 * a1 + b2 * b1 + c2 * c1 + d2 * d1
    b = b2 * a1 - a2 * b1 - c2 * d1 + d2 * c1
    c = c2 * a1 - a2 * c1 + b2 * d1 - d2 * b1
    d = d2 * a1 - a2 * d1 - b2 * c1 + c2 * b1
    return a, b, c, d


def _cubic_cos_sin2(a, b, c, d):
    """(cos(w/2), sin(w/2)^2) of the smallest-angle 432-equivalent of (a, b, c, d)."""
    x0, x1, x2, x3 = a.abs(), b.abs(), c.abs(), d.abs()
    # sorting network, descending: (0,1) (2,3) (0,2) (1,3) (1,2)
    x0, x1 = torch.maximum(x0, x1), torch.minimum(x0, x1)
    x2, x3 = torch.maximum(x2, x3), torch.minimum(x2, x3)
    x0, x2 = torch.maximum(x0, x2), torch.minimum(x0, x2)
    x1, x3 = torch.maximum(x1, x3), torch.minimum(x1, x3)
    x1, x2 = torch.maximum(x1, x2), torch.minimum(x1, x2)
    t23 = x2 * x2 + x3 * x3
    c1, s1 = x0, x1 * x1 + t23
    d01 = x0 - x1
    c2, s2 = (x0 + x1) * _R2, 0.5 * d01 * d01 + t23
    c3 = 0.5 * (x0 + x1 + x2 + x3)
    d02, d03, d12, d13, d23 = x0 - x2, x0 - x3, x1 - x2, x1 - x3, x2 - x3
    s3 = 0.25 * (d01 * d01 + d02 * d02 + d03 * d03 + d12 * d12 + d13 * d13 + d23 * d23)
    take2 = c2 > c1
    cb, sb = torch.where(take2, c2, c1), torch.where(take2, s2, s1)
    take3 = c3 > cb
    return torch.where(take3, c3, cb), torch.where(take3, s3, sb)


def _hex_cos_sin2(a, b, c, d):
    """(cos(w/2), sin(w/2)^2) of the smallest-angle 622-equivalent of (a, b, c, d)."""
    ad2 = a * a + d * d
    bc2 = b * b + c * c
    best_c = best_s = None
    for t in _HEX_T:
        ct, st = math.cos(t), math.sin(t)
        for u, v, rest in ((a, d, bc2), (b, c, ad2)):  # 6-fold about z mixes (a, d); 2-folds mix (b, c)
            ck = (u * ct + v * st).abs()
            w = v * ct - u * st
            sk = w * w + rest
            if best_c is None:
                best_c, best_s = ck, sk
            else:
                better = ck > best_c
                best_c = torch.where(better, ck, best_c)
                best_s = torch.where(better, sk, best_s)
    return best_c, best_s


def torch_misorientation_angle(q1: torch.Tensor, q2: torch.Tensor, group: str) -> torch.Tensor:
    """Reference implementation (any device, the input dtype)."""
    g = _group(group)
    q1, q2 = _prep(q1, q2)
    comps = _relative(q1, q2)
    c, s2 = (_cubic_cos_sin2 if g == "432" else _hex_cos_sin2)(*comps)
    return 2.0 * torch.atan2(torch.sqrt(s2), c)


def misorientation_angle(
    q1: torch.Tensor, q2: torch.Tensor, group: str = "432", backend: str | None = None
) -> torch.Tensor:
    """Smallest rotation angle (radians, in ``[0, pi]``) between symmetry-equivalents of ``q1`` and ``q2``.

    Args:
        q1, q2: unit quaternions ``(..., 4)``, scalar first; leading shapes broadcast. Same device.
        group: ``"432"`` (also ``"m-3m"``, ``"Oh"``) or ``"622"`` (``"6/mmm"``, ``"D6h"``).
        backend: ``None``/``"auto"``, ``"torch"`` or ``"triton"`` (see :mod:`tensorkernels`).

    Returns:
        Angles shaped like the broadcast leading shape, in the promoted floating dtype of the inputs.
    """
    g = _group(group)
    q1, q2 = _prep(q1, q2)
    if resolve_backend(backend, q1, q2) == "triton":
        from ._triton_misorientation import triton_misorientation_angle

        return triton_misorientation_angle(q1, q2, g)
    choice = (backend if backend is not None else os.environ.get("EBSDTK_KERNEL_BACKEND", "auto")).lower()
    if choice == "auto" and q1.device.type == "cpu" and q1.dtype in (torch.float32, torch.float64):
        fused = _numba_kernel(g)
        if fused is not None:
            return _run_fused(fused, q1, q2)
    return torch_misorientation_angle(q1, q2, g)


# ------------------------------------------------------------------------------------------ fused CPU loop
def _run_fused(kernel, q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    shape = torch.broadcast_shapes(q1.shape, q2.shape)
    a = q1.detach().expand(shape).reshape(-1, 4).contiguous()
    b = q2.detach().expand(shape).reshape(-1, 4).contiguous()
    out = torch.empty(a.shape[0], dtype=a.dtype)
    if out.numel():
        kernel(a.numpy(), b.numpy(), out.numpy())
    return out.reshape(shape[:-1])


@functools.lru_cache(maxsize=None)
def _numba_kernel(group: str):
    """The numba-compiled fused loop for ``group`` (``_numba_misorientation``), or ``None`` without numba."""
    try:
        from . import _numba_misorientation as nbm
    except Exception:  # pragma: no cover - numba comes with orix
        return None
    return nbm.cubic_angles if group == "432" else nbm.hexagonal_angles
