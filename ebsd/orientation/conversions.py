"""Conversions between orientation representations, on torch tensors (any leading shape, CPU or GPU).

Conventions follow orix (Rowenhorst et al. 2015, P = -1): unit quaternions ``(a, b, c, d)`` scalar first,
Bunge Euler angles ``(phi1, Phi, phi2)`` in radians, passive rotations from the sample to the crystal frame.
Quaternions returned here have ``a >= 0``.
"""
from __future__ import annotations

import math

import torch


def _as_float(x: torch.Tensor) -> torch.Tensor:
    if not torch.is_floating_point(x):
        x = x.to(torch.get_default_dtype())
    return x


def positive_hemisphere(q: torch.Tensor) -> torch.Tensor:
    """Return ``q`` or ``-q`` so that the scalar part is ``>= 0`` (same rotation)."""
    return torch.where(q[..., :1] < 0, -q, q)


def euler_to_quat(euler: torch.Tensor) -> torch.Tensor:
    """Bunge Euler angles ``(..., 3)`` (radians) -> unit quaternions ``(..., 4)``, ``a >= 0``."""
    euler = _as_float(torch.as_tensor(euler))
    if euler.shape[-1] != 3:
        raise ValueError(f"Euler angles need a last dimension of 3, got shape {tuple(euler.shape)}")
    phi1, Phi, phi2 = euler.unbind(-1)
    sigma = 0.5 * (phi1 + phi2)
    delta = 0.5 * (phi1 - phi2)
    c = torch.cos(0.5 * Phi)
    s = torch.sin(0.5 * Phi)
    q = torch.stack(
        (c * torch.cos(sigma), -s * torch.cos(delta), -s * torch.sin(delta), -c * torch.sin(sigma)), dim=-1
    )
    return positive_hemisphere(q)


def quat_to_euler(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` -> Bunge Euler angles ``(..., 3)`` in radians, each in ``[0, 2pi)``
    (``Phi`` in ``[0, pi]``)."""
    q = _as_float(torch.as_tensor(q))
    a, b, c, d = q.unbind(-1)
    # a = cos(Phi/2) cos(s), b = -sin(Phi/2) cos(t), c = -sin(Phi/2) sin(t), d = -cos(Phi/2) sin(s)
    # with s = (phi1 + phi2) / 2, t = (phi1 - phi2) / 2
    q03 = torch.sqrt(a * a + d * d)
    q12 = torch.sqrt(b * b + c * c)
    eps = 1e-12 if q.dtype == torch.float64 else 1e-6
    Phi = 2 * torch.atan2(q12, q03)
    s = torch.atan2(-d, a)
    t = torch.atan2(-c, -b)
    # degenerate: Phi = 0 -> t undefined; Phi = pi -> s undefined. Put all of the rotation in phi1.
    t = torch.where(q12 < eps, s, t)
    s = torch.where(q03 < eps, t, s)
    phi1 = s + t
    phi2 = s - t
    two_pi = 2 * math.pi
    return torch.stack((torch.remainder(phi1, two_pi), Phi, torch.remainder(phi2, two_pi)), dim=-1)
