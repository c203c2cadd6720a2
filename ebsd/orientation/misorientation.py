"""Misorientation between orientation fields with crystal symmetry.

Orientations are passive (sample -> crystal) with the crystal symmetry on the left, as in orix: ``q`` and
``S_i q`` describe the same orientation. The misorientation of ``q1`` to ``q2`` is ``M = q2 q1^-1``; over all
equivalents it is ``S_i M S_j^-1``. The rotation angle is invariant under conjugation, so
``angle(S_i M S_j^-1) = angle(S_j^-1 S_i M)`` and the minimum over the N^2 pairs is the minimum over the N
rotations ``S_k`` of the group:

    omega(q1, q2) = 2 acos( max_k |<S_k, M>| )

(``|.|`` because ``q`` and ``-q`` are the same rotation; ``<S_k, M>`` is the scalar part of ``S_k^-1 M``).
This is what orix's ``Orientation.angle_with`` computes. For ``m-3m`` and ``6/mmm`` the hot path is the
closed form in :mod:`tensorkernels.misorientation` (torch anywhere, Triton on CUDA); other groups use a small
matrix product with the operator table.
"""
from __future__ import annotations

import torch

from tensorkernels.misorientation import misorientation_angle as _kernel_angle
from tensorkernels._dispatch import resolve_backend

from ..errors import EBSDValueError
from ._util import as_quat, chunked_rows, common, numpy_edge
from .quaternion import positive_hemisphere, quat_conjugate, quat_multiply
from .symmetry import get_symmetry

__all__ = ["misorientation_angle", "misorientation", "symmetry_equivalents"]

_KERNEL_GROUPS = ("432", "622")
_ROWS = 1 << 16  # chunk size of the (n, N) intermediate products


def _generic_angle(M: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """Angles of ``M (n, 4)`` reduced by the rotations ``ops (N, 4)``; accurate near 0 (atan2 of the
    best equivalent's parts rather than acos of a dot product)."""
    d = (M @ ops.T).abs()  # (n, N) = |scal(S_k^-1 M)|
    k = d.argmax(-1)
    best = quat_multiply(quat_conjugate(ops[k]), M)
    return 2.0 * torch.atan2(best[..., 1:].norm(dim=-1), best[..., 0].abs())


@numpy_edge
def misorientation_angle(q1, q2, symmetry, backend: str | None = None) -> torch.Tensor:
    """Smallest rotation angle (radians, ``[0, pi]``) taking orientation ``q1`` to ``q2`` over all
    symmetry-equivalent pairs (same crystal symmetry on both sides).

    Args:
        q1, q2: unit quaternions ``(..., 4)`` (leading shapes broadcast), torch or numpy, same device.
        symmetry: anything :func:`~ebsd.orientation.get_symmetry` accepts (``"m-3m"``, ``"Oh"``, 43, ...).
        backend: for ``m-3m``/``6/mmm``: ``None``/``"auto"`` (Triton on CUDA), ``"torch"`` or ``"triton"``.

    Returns:
        ``(...)`` angles in radians, dtype of the (promoted) inputs; numpy when ``q1`` is numpy.
    """
    sym = get_symmetry(symmetry)
    q1, q2 = common(as_quat(q1, "q1"), as_quat(q2, "q2"))
    if sym.proper in _KERNEL_GROUPS:
        return _kernel_angle(q1, q2, sym.proper, backend=backend)
    if backend is not None and resolve_backend(backend, q1, q2) == "triton":
        raise EBSDValueError(
            f"backend='triton' supports the symmetries m-3m and 6/mmm only, not {sym.name}; use backend='torch'"
        )
    M = quat_multiply(q2, quat_conjugate(q1))
    shape = M.shape[:-1]
    ops = sym.operators_as(M)
    out = chunked_rows(lambda m: _generic_angle(m, ops), [M.reshape(-1, 4)], _ROWS)
    return out.reshape(shape)


def symmetry_equivalents(q: torch.Tensor, symmetry) -> torch.Tensor:
    """All equivalents ``S_i q``: ``(..., 4)`` -> ``(..., N, 4)``."""
    q = as_quat(q)
    ops = get_symmetry(symmetry).operators_as(q)
    return quat_multiply(ops, q[..., None, :])


def _lexmax(cand: torch.Tensor, tol: float) -> torch.Tensor:
    """Index over dim -2 of the lexicographically largest ``(b, c, d)`` (ties within ``tol``)."""
    mask = torch.ones(cand.shape[:-1], dtype=torch.bool, device=cand.device)
    neg = torch.finfo(cand.dtype).min
    for j in (1, 2):
        key = torch.where(mask, cand[..., j], neg)
        mask &= key >= key.amax(-1, keepdim=True) - tol
    return torch.where(mask, cand[..., 3], neg).argmax(-1)


def _disorientation(M: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    k = (M @ ops.T).abs().argmax(-1)
    M1 = quat_multiply(quat_conjugate(ops[k]), M)  # smallest angle
    conj = quat_multiply(quat_multiply(ops, M1[:, None, :]), quat_conjugate(ops))  # (n, N, 4): S_j M1 S_j^-1, same angle
    cand = positive_hemisphere(torch.cat((conj, quat_conjugate(conj)), dim=-2))  # with grain exchange
    tol = 1e-9 if M.dtype == torch.float64 else 1e-5
    idx = _lexmax(cand, tol)
    return torch.gather(cand, -2, idx[:, None, None].expand(-1, 1, 4)).squeeze(-2)


@numpy_edge
def misorientation(q1, q2, symmetry) -> torch.Tensor:
    """Disorientation quaternion from ``q1`` to ``q2`` (``(..., 4)``, broadcast), scalar part ``>= 0``.

    It is the equivalent of ``M = q2 q1^-1`` (among ``S_i M S_j^-1`` and, with the grain-exchange symmetry,
    their inverses) with the smallest angle, so its angle is :func:`misorientation_angle`; among those of
    equal angle the one with the lexicographically largest axis ``(b, c, d)`` is returned — for ``m-3m``
    this is the standard triangle ``b >= c >= d >= 0`` (Mackenzie's disorientation). Axis components closer
    than 1e-5 (float32) or 1e-9 (float64) count as equal in that comparison (rounding); farther apart, the
    order is kept.
    """
    sym = get_symmetry(symmetry)
    q1, q2 = common(as_quat(q1, "q1"), as_quat(q2, "q2"))
    M = quat_multiply(q2, quat_conjugate(q1))
    shape = M.shape
    ops = sym.operators_as(M)
    out = chunked_rows(lambda m: _disorientation(m, ops), [M.reshape(-1, 4)], _ROWS // sym.order)
    return out.reshape(shape)
