"""Homochoric and cubochoric coordinates of rotations (Rosca, Morawiec, De Graef 2014; Singh & De Graef 2016).

* Homochoric: ``h = (3/4 (w - sin w))^(1/3) n`` for the rotation by ``w`` in ``[0, pi]`` about the unit axis
  ``n``: an equal-volume map of rotation space onto the ball of radius ``(3 pi / 4)^(1/3)``.
* Cubochoric: the ball mapped onto the cube ``[-pi^(2/3) / 2, pi^(2/3) / 2]^3`` by the equal-volume
  Lambert-type map of Rosca et al. (six square pyramids, one per cube face). It is continuous inside the
  cube and bounded, so it is a convenient network input/output.

``q`` and ``-q`` give the same coordinates (``q`` is taken with ``a >= 0``). Rotations by ``pi`` lie on the
boundary, where ``h`` and ``-h`` (opposite cube faces) are the same rotation. Same sign conventions as orix
(``orix.quaternion._conversions.qu2ho``, ``cu2ho``, ``ho2ax``); torch, any leading shape, CPU or GPU.
"""
from __future__ import annotations

import math

import torch

from ._util import as_quat, numpy_edge
from .conversions import positive_hemisphere

__all__ = [
    "quat_to_homochoric",
    "homochoric_to_quat",
    "quat_to_cubochoric",
    "cubochoric_to_quat",
    "homochoric_to_cubochoric",
    "cubochoric_to_homochoric",
    "HOMOCHORIC_RADIUS",
    "CUBOCHORIC_HALF_EDGE",
]

HOMOCHORIC_RADIUS = (0.75 * math.pi) ** (1.0 / 3.0)
CUBOCHORIC_HALF_EDGE = 0.5 * math.pi ** (2.0 / 3.0)
_SC = (math.pi / 6.0) ** (1.0 / 6.0)  # cube -> scaled cube (ratio of grid parameters)
_PREF = math.sqrt(6.0 / math.pi)
_PREK = HOMOCHORIC_RADIUS * 2.0 ** 0.25 / (math.pi ** (5.0 / 6.0) / 6.0 ** (1.0 / 6.0) / 2.0)
_R2 = math.sqrt(2.0)
_PI12 = math.pi / 12.0


def _vec3(x, name):
    x = torch.as_tensor(x)
    if not torch.is_floating_point(x):
        x = x.to(torch.get_default_dtype())
    if x.shape[-1:] != (3,):
        from ..errors import EBSDValueError

        raise EBSDValueError(f"{name} needs a last dimension of 3, got shape {tuple(x.shape)}")
    return x


def _w_minus_sin(w: torch.Tensor) -> torch.Tensor:
    """``w - sin(w)`` without cancellation for small ``w`` (Taylor series below 0.5)."""
    w2 = w * w
    series = w * w2 / 6.0 * (1 - w2 / 20.0 * (1 - w2 / 42.0 * (1 - w2 / 72.0 * (1 - w2 / 110.0 * (1 - w2 / 156.0)))))
    return torch.where(w < 0.5, series, w - torch.sin(w))


# ------------------------------------------------------------------------------------------------ homochoric
@numpy_edge
def quat_to_homochoric(q) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` -> homochoric vectors ``(..., 3)`` (|h| <= (3 pi / 4)^(1/3))."""
    q = positive_hemisphere(as_quat(q))
    v = q[..., 1:]
    s = v.norm(dim=-1, keepdim=True)
    w = 2.0 * torch.atan2(s, q[..., :1])
    f = (0.75 * _w_minus_sin(w)).clamp_min(0) ** (1.0 / 3.0)
    return torch.where(s > 0, v * (f / torch.where(s > 0, s, 1.0)), torch.zeros_like(v))


# EMsoft's fit of cos(w/2) as a polynomial in |h|^2 (also used by orix.ho2ax); refined by Newton steps below
_FIT = (
    0.9999999999999968, -0.49999999999986866, -0.025000000000632055, -0.003928571496460683,
    -0.0008164666077062752, -0.00019411896443261646, -0.00004985822229871769, -0.000014164962366386031,
    -1.9000248160936107e-6, -5.72184549898506e-6, 7.772149920658778e-6, -0.00001053483452909705,
    9.528014229335313e-6, -5.660288876265125e-6, 1.2844901692764126e-6, 1.1255185726258763e-6,
    -1.3834391419956455e-6, 7.513691751164847e-7, -2.401996891720091e-7, 4.386887017466388e-8,
    -3.5917775353564864e-9,
)


@numpy_edge
def homochoric_to_quat(h) -> torch.Tensor:
    """Homochoric vectors ``(..., 3)`` -> unit quaternions ``(..., 4)`` with ``a >= 0``."""
    h = _vec3(h, "homochoric vectors")
    t = (h * h).sum(-1, keepdim=True)
    r = torch.sqrt(t)
    # initial guess from the fit (Horner in t), then Newton on g(w) = 3/4 (w - sin w) - |h|^3
    c = torch.full_like(t, _FIT[-1])
    for coef in _FIT[-2::-1]:
        c = c * t + coef
    w = 2.0 * torch.acos(c.clamp(-1.0, 1.0))
    target = t * r
    for _ in range(2):
        g = 0.75 * _w_minus_sin(w) - target
        dg = 0.75 * (1.0 - torch.cos(w))
        step = torch.where(w > 0.05, g / torch.where(dg > 0, dg, 1.0), torch.zeros_like(w))
        w = (w - step).clamp(0.0, math.pi)
    half = 0.5 * w
    axis = torch.where(r > 0, h / torch.where(r > 0, r, 1.0), torch.zeros_like(h))
    return torch.cat((torch.cos(half), torch.sin(half) * axis), dim=-1)


# ------------------------------------------------------------------------------------------------ cubochoric
def _to_pyramid_frame(x, y, z):
    """Permute coordinates so that the dominant one comes last; returns the permuted triple and the
    masks for the x- and y-dominant pyramids (orix: pyramids 3/4 and 5/6)."""
    ax, ay, az = x.abs(), y.abs(), z.abs()
    zdom = (az >= ax) & (az >= ay)
    xdom = ~zdom & (ax >= ay)
    ydom = ~zdom & ~xdom
    # x-dominant: (x, y, z) -> (y, z, x); y-dominant: (x, y, z) -> (z, x, y)
    u = torch.where(xdom, y, torch.where(ydom, z, x))
    v = torch.where(xdom, z, torch.where(ydom, x, y))
    w = torch.where(xdom, x, torch.where(ydom, y, z))
    return u, v, w, xdom, ydom


def _from_pyramid_frame(u, v, w, xdom, ydom):
    x = torch.where(xdom, w, torch.where(ydom, v, u))
    y = torch.where(xdom, u, torch.where(ydom, w, v))
    z = torch.where(xdom, v, torch.where(ydom, u, w))
    return torch.stack((x, y, z), dim=-1)


def _safe(d):
    return torch.where(d != 0, d, torch.ones_like(d))


@numpy_edge
def cubochoric_to_homochoric(c) -> torch.Tensor:
    """Cubochoric ``(..., 3)`` (in the cube of half edge ``pi^(2/3) / 2``) -> homochoric ``(..., 3)``."""
    c = _vec3(c, "cubochoric coordinates")
    x, y, z, xdom, ydom = _to_pyramid_frame(*c.unbind(-1))
    x, y, z = x * _SC, y * _SC, z * _SC
    ax, ay = x.abs(), y.abs()
    xmaj = ay <= ax
    num = torch.where(xmaj, y, x)
    den = torch.where(xmaj, x, y)
    ang = _PI12 * num / _safe(den)
    cq, sq = torch.cos(ang), torch.sin(ang)
    qq = _PREK * den / torch.sqrt(_R2 - cq)
    ta = (_R2 * cq - 1.0) * qq  # along the major axis
    tb = _R2 * sq * qq  # along the minor axis
    t1 = torch.where(xmaj, ta, tb)
    t2 = torch.where(xmaj, tb, ta)
    cc = t1 * t1 + t2 * t2
    zs = _safe(z)
    s = math.pi * cc / (24.0 * zs * zs)
    k = torch.sqrt((1.0 - s).clamp_min(0))
    hz = _PREF * z - math.sqrt(math.pi / 24.0) * cc / zs
    planar0 = (ax == 0) & (ay == 0)
    h1 = torch.where(planar0, torch.zeros_like(x), t1 * k)
    h2 = torch.where(planar0, torch.zeros_like(x), t2 * k)
    h3 = torch.where(planar0, _PREF * z, hz)
    h3 = torch.where(z == 0, torch.zeros_like(z), h3)
    return _from_pyramid_frame(h1, h2, h3, xdom, ydom)


@numpy_edge
def homochoric_to_cubochoric(h) -> torch.Tensor:
    """Homochoric ``(..., 3)`` -> cubochoric ``(..., 3)`` (inverse of :func:`cubochoric_to_homochoric`)."""
    h = _vec3(h, "homochoric vectors")
    x, y, z, xdom, ydom = _to_pyramid_frame(*h.unbind(-1))
    rs = torch.sqrt(x * x + y * y + z * z)
    # inverse of the ball <- "cylinder" step: recovers (T1, T2) and the scaled-cube z
    f = torch.sqrt(2.0 * rs / _safe(rs + z.abs()))
    t1, t2 = x * f, y * f
    zc = torch.where(z < 0, -rs, rs) / _PREF
    # inverse of the square -> disc step: solve for the scaled-cube (x, y)
    a1, a2 = t1.abs(), t2.abs()
    xmaj = a2 <= a1
    big = torch.where(xmaj, a1, a2)
    small = torch.where(xmaj, a2, a1)
    qxy = a1 * a1 + a2 * a2
    root = torch.sqrt(qxy + big * big)
    # cos q = (s^2 + b R) / (sqrt2 |T|^2), sin q = s / (sqrt2 (R + b)) with R = sqrt(2 b^2 + s^2):
    # atan2 of the two keeps q accurate near 0, where acos(cos q) would lose half the digits
    cosq = ((small * small + big * root) / (_R2 * _safe(qxy))).clamp(-1.0, 1.0)
    sinq = small / (_R2 * _safe(root + big))
    ang = torch.atan2(sinq, cosq)  # in [0, pi/12]
    # |T|^2 = PREK^2 m^2 (3 - 2 sqrt2 cos q) / (sqrt2 - cos q) for the major cube coordinate m
    m = torch.sqrt(qxy * (_R2 - cosq) / (3.0 - 2.0 * _R2 * cosq)) / _PREK
    minor = m * ang / _PI12
    zero = qxy == 0
    m = torch.where(zero, torch.zeros_like(m), m)
    minor = torch.where(zero, torch.zeros_like(minor), minor)
    sx = torch.where(t1 < 0, -1.0, 1.0).to(h.dtype)
    sy = torch.where(t2 < 0, -1.0, 1.0).to(h.dtype)
    cx = sx * torch.where(xmaj, m, minor)
    cy = sy * torch.where(xmaj, minor, m)
    return _from_pyramid_frame(cx / _SC, cy / _SC, zc / _SC, xdom, ydom)


@numpy_edge
def quat_to_cubochoric(q) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` -> cubochoric coordinates ``(..., 3)`` in ``[-pi^(2/3)/2, pi^(2/3)/2]^3``."""
    return homochoric_to_cubochoric(quat_to_homochoric(q))


@numpy_edge
def cubochoric_to_quat(c) -> torch.Tensor:
    """Cubochoric coordinates ``(..., 3)`` -> unit quaternions ``(..., 4)`` with ``a >= 0``."""
    return homochoric_to_quat(cubochoric_to_homochoric(c))
