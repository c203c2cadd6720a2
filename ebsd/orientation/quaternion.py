"""Quaternion algebra on torch tensors (any leading shape, CPU or GPU, float32 or float64).

Quaternions are ``(..., 4)`` tensors ``(a, b, c, d)``, scalar first. The product is Hamilton's, as in orix
(``orix.quaternion.Quaternion.__mul__``); :func:`quat_rotate` and :func:`quat_to_matrix` apply the rotation
actively to vectors (``v' = q v q*``), exactly like ``Rotation * Vector3d`` and ``Rotation.to_matrix`` in orix.
Leading shapes broadcast (``quat_multiply(p[:, None], q[None])`` gives the outer product).
"""
from __future__ import annotations

import torch

from ._util import as_quat as _q
from .conversions import _as_float, positive_hemisphere

__all__ = [
    "quat_multiply",
    "quat_conjugate",
    "quat_normalize",
    "positive_hemisphere",
    "quat_rotate",
    "axis_angle_to_quat",
    "quat_to_axis_angle",
    "quat_to_matrix",
    "matrix_to_quat",
    "quat_angle",
]


def quat_multiply(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``p * q`` of ``(..., 4)`` quaternions (leading shapes broadcast).

    The rotation ``p * q`` applies ``q`` first, then ``p``."""
    p, q = _q(p), _q(q)
    if p.dtype != q.dtype:
        dt = torch.promote_types(p.dtype, q.dtype)
        p, q = p.to(dt), q.to(dt)
    a1, b1, c1, d1 = p.unbind(-1)
    a2, b2, c2, d2 = q.unbind(-1)
    return torch.stack(
        (
            a1 * a2 - b1 * b2 - c1 * c2 - d1 * d2,
            a1 * b2 + b1 * a2 + c1 * d2 - d1 * c2,
            a1 * c2 - b1 * d2 + c1 * a2 + d1 * b2,
            a1 * d2 + b1 * c2 - c1 * b2 + d1 * a2,
        ),
        dim=-1,
    )


def quat_conjugate(q: torch.Tensor) -> torch.Tensor:
    """``(a, -b, -c, -d)``: the inverse of a unit quaternion."""
    q = _q(q)
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def quat_normalize(q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale ``(..., 4)`` quaternions to unit norm (zero quaternions stay zero)."""
    q = _q(q)
    return q / q.norm(dim=-1, keepdim=True).clamp_min(eps)


def quat_rotate(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate vectors ``v (..., 3)`` by unit quaternions ``q (..., 4)``: ``q v q*`` (shapes broadcast).

    Same as ``quat_to_matrix(q) @ v`` and as orix's ``Rotation * Vector3d``."""
    q = _q(q)
    v = torch.as_tensor(v, dtype=q.dtype, device=q.device)
    a = q[..., :1]
    u = q[..., 1:]
    shape = torch.broadcast_shapes(u.shape, v.shape)
    u, v = u.expand(shape), v.expand(shape)
    # v' = v + a t + u x t with t = 2 (u x v)
    t = 2.0 * torch.cross(u, v, dim=-1)
    return v + a * t + torch.cross(u, t, dim=-1)


def axis_angle_to_quat(axis: torch.Tensor, angle: torch.Tensor | float) -> torch.Tensor:
    """Rotation axes ``(..., 3)`` (normalised here) and angles (radians, ``(...)``) -> unit quaternions
    ``(cos(w/2), sin(w/2) n)``, like orix's ``Rotation.from_axes_angles``."""
    axis = _as_float(torch.as_tensor(axis))
    angle = torch.as_tensor(angle, dtype=axis.dtype, device=axis.device)
    n = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    half = 0.5 * angle[..., None]
    shape = torch.broadcast_shapes(half.shape[:-1], n.shape[:-1])
    return torch.cat((torch.cos(half).expand(*shape, 1), torch.sin(half) * n.expand(*shape, 3)), dim=-1)


def quat_to_axis_angle(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit quaternions ``(..., 4)`` -> ``(axis (..., 3), angle (...))`` with angle in ``[0, pi]``
    (``q`` is taken in the positive hemisphere first). The identity gets the axis ``(0, 0, 1)``."""
    q = positive_hemisphere(_q(q))
    v = q[..., 1:]
    s = v.norm(dim=-1)
    angle = 2.0 * torch.atan2(s, q[..., 0])
    tiny = s < (1e-12 if q.dtype == torch.float64 else 1e-7)
    z = torch.zeros_like(v)
    z[..., 2] = 1.0
    axis = torch.where(tiny[..., None], z, v / s.clamp_min(1e-30)[..., None])
    return axis, angle


def quat_angle(q: torch.Tensor) -> torch.Tensor:
    """Rotation angle in ``[0, pi]`` of ``(..., 4)`` quaternions (accurate near 0 and near pi)."""
    q = _q(q)
    return 2.0 * torch.atan2(q[..., 1:].norm(dim=-1), q[..., 0].abs())


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` -> rotation matrices ``(..., 3, 3)`` (``R @ v == quat_rotate(q, v)``;
    orix's ``Rotation.to_matrix``)."""
    q = _q(q)
    a, b, c, d = q.unbind(-1)
    m = torch.stack(
        (
            1 - 2 * (c * c + d * d), 2 * (b * c - a * d), 2 * (b * d + a * c),
            2 * (b * c + a * d), 1 - 2 * (b * b + d * d), 2 * (c * d - a * b),
            2 * (b * d - a * c), 2 * (c * d + a * b), 1 - 2 * (b * b + c * c),
        ),
        dim=-1,
    )
    return m.reshape(*q.shape[:-1], 3, 3)


def matrix_to_quat(m: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` -> unit quaternions ``(..., 4)`` with ``a >= 0``
    (inverse of :func:`quat_to_matrix`; numerically stable branch choice, as Shepperd's method)."""
    m = _as_float(torch.as_tensor(m))
    if m.shape[-2:] != (3, 3):
        from ..errors import EBSDValueError

        raise EBSDValueError(f"rotation matrices need trailing shape (3, 3), got {tuple(m.shape)}")
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # four candidate (unnormalised) quaternions; use the one with the largest leading term
    cand = torch.stack(
        (
            torch.stack((1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01), -1),
            torch.stack((m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20), -1),
            torch.stack((m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21), -1),
            torch.stack((m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22), -1),
        ),
        dim=-2,
    )  # (..., 4, 4)
    lead = torch.stack((cand[..., 0, 0], cand[..., 1, 1], cand[..., 2, 2], cand[..., 3, 3]), -1)
    idx = lead.argmax(-1)
    q = torch.gather(cand, -2, idx[..., None, None].expand(*idx.shape, 1, 4)).squeeze(-2)
    return positive_hemisphere(quat_normalize(q))

