"""Fundamental-zone reduction and symmetry-aware averaging of orientations.

The fundamental zone used here is orix's for an orientation with crystal symmetry ``S`` (``Orientation.reduce``
with symmetry ``(C1, S)``): among the equivalents ``S_i q`` the one with the smallest rotation angle
(largest ``|a|``), returned with ``a >= 0`` -- the Rodrigues fundamental zone of the proper group.
"""
from __future__ import annotations

import torch

from ..errors import EBSDValueError
from ._util import as_quat, chunked_rows, numpy_edge
from .quaternion import positive_hemisphere, quat_multiply, quat_normalize
from .symmetry import get_symmetry

__all__ = ["reduce_to_fundamental_zone", "mean_orientation", "align_to_reference"]

_ROWS = 1 << 16


def _reduce_rows(q: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    # scal(S_k q) = a_s a_q - v_s . v_q = <conj(S_k), q>
    conj = ops * ops.new_tensor([1.0, -1.0, -1.0, -1.0])
    k = (q @ conj.T).abs().argmax(-1)
    return positive_hemisphere(quat_multiply(ops[k], q))


@numpy_edge
def reduce_to_fundamental_zone(q, symmetry) -> torch.Tensor:
    """Map unit quaternions ``(..., 4)`` to the equivalent ``S_i q`` of smallest rotation angle, ``a >= 0``.

    Equal to orix's ``Orientation(q, S).reduce()`` up to ties on the zone boundary (measure zero)."""
    sym = get_symmetry(symmetry)
    q = as_quat(q)
    ops = sym.operators_as(q)
    shape = q.shape
    return chunked_rows(lambda x: _reduce_rows(x, ops), [q.reshape(-1, 4)], _ROWS).reshape(shape)


def align_to_reference(q: torch.Tensor, ref: torch.Tensor, symmetry) -> torch.Tensor:
    """The equivalent ``+-S_i q`` closest to ``ref`` (``<ref, out>`` maximal and ``>= 0``); shapes broadcast."""
    ops = get_symmetry(symmetry).operators_as(q)
    eq = quat_multiply(ops, q[..., None, :])  # (..., N, 4)
    d = (eq * ref[..., None, :]).sum(-1)
    k = d.abs().argmax(-1, keepdim=True)
    best = torch.gather(eq, -2, k[..., None].expand(*k.shape, 4)).squeeze(-2)
    sign = torch.gather(d, -1, k)
    return torch.where(sign < 0, -best, best)


@numpy_edge
def mean_orientation(q, symmetry, weights=None, dim: int = -2, n_iter: int = 10, tol: float = 1e-10) -> torch.Tensor:
    """Symmetry-aware mean of unit quaternions along ``dim`` (default: the axis before the quaternion axis).

    Each orientation is moved to its equivalent (``+-S_i q``) closest to a reference, the (weighted)
    quaternions are averaged and normalised, and the mean becomes the next reference; repeated until the
    mean stops moving (at most ``n_iter`` rounds). The first reference is the orientation of largest weight
    (the first one without weights). For the spread of a grain (a few degrees) this is the standard
    symmetry-aware mean; the result is reduced to the fundamental zone.

    Args:
        q: ``(..., K, ...,  4)`` unit quaternions; ``dim`` indexes the K orientations to average.
        symmetry: anything :func:`~ebsd.orientation.get_symmetry` accepts.
        weights: optional non-negative weights shaped like ``q`` without its last axis (broadcastable).
        dim: the axis of ``q`` to average over (must not be the quaternion axis).

    Returns:
        ``q.shape`` without ``dim``: the mean orientations (all zeros where every weight is 0).
    """
    q = as_quat(q)
    nd = q.dim()
    d = dim % nd
    if d == nd - 1:
        raise EBSDValueError("mean_orientation: dim must not be the quaternion axis (the last one)")
    if q.shape[d] == 0:
        raise EBSDValueError("mean_orientation: nothing to average (empty dimension)")
    x = q.movedim(d, -2)  # (..., K, 4)
    if weights is None:
        w = torch.ones(x.shape[:-1], dtype=x.dtype, device=x.device)
    else:
        w = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
        w = torch.broadcast_to(w, q.shape[:-1]).movedim(d, -1)
        if (w < 0).any():
            raise EBSDValueError("mean_orientation: weights must be >= 0")
    first = w.argmax(-1, keepdim=True)  # (..., 1)
    ref = torch.gather(x, -2, first[..., None].expand(*first.shape, 4)).squeeze(-2)
    for _ in range(max(1, n_iter)):
        aligned = align_to_reference(x, ref[..., None, :], symmetry)
        new = quat_normalize((aligned * w[..., None]).sum(-2))
        moved = (1.0 - (new * ref).sum(-1).abs()).abs().max() if new.numel() else torch.tensor(0.0)
        ref = new
        if moved.item() < tol:
            break
    zero = w.sum(-1) <= 0
    out = reduce_to_fundamental_zone(ref, symmetry)
    return torch.where(zero[..., None], torch.zeros_like(out), out)
