"""Inverse-pole-figure colours with the EDAX TSL key (as MTEX and orix's ``IPFColorKeyTSL``), on torch.

For an orientation ``q`` (passive, sample -> crystal) and a sample direction ``d``, the crystal direction
``v = q d q*`` is moved to the fundamental sector of the Laue class (among ``+-R_k v``), and coloured by its
polar coordinates about the sector's centre (Nolze & Hielscher 2016, section 2.4): the hue from the azimuth
(corrected so that each sector corner gets a third of the hue circle), the lightness from the distance to
the sector boundary. The sector tables (normals, vertices, centre) are those of orix
(``Symmetry.fundamental_sector``), so the colours match ``IPFColorKeyTSL(symmetry, direction)``.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..errors import EBSDValueError
from ._util import as_quat, numpy_edge
from .quaternion import quat_rotate
from .symmetry import get_symmetry

__all__ = ["ipf_colors", "ipf_directions", "ipf_colors_by_phase"]

_R2 = math.sqrt(0.5)
_S3 = math.sqrt(3.0) / 2
_I3 = 1.0 / math.sqrt(3.0)

# Laue class -> (normals, vertices, centre); orix.quaternion.Symmetry.fundamental_sector
_SECTORS = {
    "-1": ([(0, 0, 1)], [], (0, 0, 1)),
    "2/m": ([(0, 0, 1), (0, 1, 0)], [(1, 0, 0), (-1, 0, 0)], (0, 0.5, 0.5)),
    "mmm": ([(0, 0, 1), (0, 1, 0), (1, 0, 0)], [(1, 0, 0), (0, 0, 1), (0, 1, 0)], None),
    "4/m": ([(0, 0, 1), (0, 1, 0), (1, 0, 0)], [(1, 0, 0), (0, 0, 1), (0, 1, 0)], None),
    "4/mmm": ([(0, 0, 1), (0, 1, 0), (_R2, -_R2, 0)], [(1, 0, 0), (0, 0, 1), (_R2, _R2, 0)], None),
    "-3": ([(0, 0, 1), (0, 1, 0), (_S3, 0.5, 0)], [(1, 0, 0), (0, 0, 1), (-0.5, _S3, 0)], None),
    "-3m": ([(0, 0, 1), (0.5, _S3, 0), (0.5, -_S3, 0)], [(_S3, -0.5, 0), (0, 0, 1), (_S3, 0.5, 0)], None),
    "6/m": ([(0, 0, 1), (0, 1, 0), (_S3, -0.5, 0)], [(1, 0, 0), (0, 0, 1), (0.5, _S3, 0)], None),
    "6/mmm": ([(0, 0, 1), (0, 1, 0), (0.5, -_S3, 0)], [(1, 0, 0), (0, 0, 1), (_S3, 0.5, 0)], None),
    "m-3": ([(1, 0, 0), (0, -1, 1), (-1, 0, 1), (0, 1, 0), (0, 0, 1)],
            [(0, _R2, _R2), (_I3, _I3, _I3), (_R2, 0, _R2), (0, 0, 1)], (0.349928, 0.348069, 0.869711)),
    "m-3m": ([(1, -1, 0), (-1, 0, 1), (0, 1, 0)], [(_I3, _I3, _I3), (_R2, 0, _R2), (0, 0, 1)], None),
}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.arccos(np.clip((_unit(a) * _unit(b)).sum(-1), -1, 1))


@functools.lru_cache(maxsize=None)
def _sector_tables(laue: str):
    """Float64 numpy tables: normals (k, 3), unit centre, rx, ry and the azimuth-correction lookup
    (x = raw azimuth grid, y = corrected azimuth), ported from orix/MTEX ``correctAngle``."""
    normals, vertices, centre = _SECTORS[laue]
    normals = np.array(normals, dtype=np.float64)
    vertices = np.array(vertices, dtype=np.float64).reshape(-1, 3)
    if centre is None:
        centre = vertices.mean(0)
    c = _unit(np.array(centre, dtype=np.float64))
    rx = (np.array([0.0, 0, 1]) if len(vertices) else np.array([1.0, 0, 0])) - c
    rx_o = _unit(rx - rx.dot(c) * c)
    ry = _unit(np.cross(c, rx_o))
    table = None
    if len(vertices):
        m = 1000
        az2 = np.linspace(0, 2 * np.pi, m)
        n0 = _unit(np.cross(rx, c))
        t = az2[:-1]
        # rotate n0 about c by t (Rodrigues' formula)
        rot = (n0[None] * np.cos(t)[:, None] + np.cross(c, n0)[None] * np.sin(t)[:, None]
               + c[None] * (c.dot(n0)) * (1 - np.cos(t))[:, None])
        polar = np.min(np.stack([_angle(np.cross(nrm[None], rot), c[None]) for nrm in normals]), axis=0)
        if len(vertices) == 3:
            d = _unit(vertices - c)
            ang = np.mod(np.arctan2(d @ ry, d @ rx_o), 2 * np.pi)
            ang[np.isnan(ang)] = 0
            a3 = np.round(m * np.sort(ang) / (2 * np.pi)).astype(int)
            if a3[0] < 10:
                a3 = np.delete(a3, 0)
            for idx in (np.arange(a3[0]), np.arange(a3[0], a3[1]), np.arange(a3[1], polar.size)):
                polar[idx] /= np.sum(polar[idx]) / 3
        cum = 2 * np.pi * np.cumsum(np.append(np.zeros(1), polar / np.sum(polar)))
        table = (az2, cum)
    return normals, c, rx_o, ry, table


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """``np.interp`` for increasing ``xp`` (clamped at the ends)."""
    i = torch.searchsorted(xp, x.contiguous()).clamp(1, xp.numel() - 1)
    x0, x1 = xp[i - 1], xp[i]
    y0, y1 = fp[i - 1], fp[i]
    w = ((x - x0) / (x1 - x0)).clamp(0, 1)
    return y0 + w * (y1 - y0)


def _hsv_to_rgb(h, s, v):
    """matplotlib.colors.hsv_to_rgb, elementwise."""
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = torch.remainder(i, 6)
    p = v * (1 - s)
    q = v * (1 - s * f)
    t = v * (1 - s * (1 - f))
    conds = [i == k for k in range(6)]
    r = torch.where(conds[0], v, torch.where(conds[1], q, torch.where(conds[2], p, torch.where(
        conds[3], p, torch.where(conds[4], t, v)))))
    g = torch.where(conds[0], t, torch.where(conds[1], v, torch.where(conds[2], v, torch.where(
        conds[3], q, torch.where(conds[4], p, p)))))
    b = torch.where(conds[0], p, torch.where(conds[1], p, torch.where(conds[2], t, torch.where(
        conds[3], v, torch.where(conds[4], v, q)))))
    zero_s = s == 0
    r = torch.where(zero_s, v, r)
    g = torch.where(zero_s, v, g)
    b = torch.where(zero_s, v, b)
    return torch.stack((r, g, b), dim=-1)


def _to_sector(v: torch.Tensor, ops: torch.Tensor, normals: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The equivalent ``+-R_k v`` inside the sector (closest to its centre among those inside)."""
    eq = quat_rotate(ops, v[..., None, :])  # (n, N, 3)
    eq = torch.cat((eq, -eq), dim=-2)  # the Laue class contains the inversion
    inside = ((eq @ normals.T) >= -1e-9).all(-1)
    score = eq @ c + 2.0 * inside.to(eq.dtype)  # prefer inside, then closest to the centre
    k = score.argmax(-1)
    return torch.gather(eq, -2, k[..., None, None].expand(*k.shape, 1, 3)).squeeze(-2)


def _colors_rows(q: torch.Tensor, direction: torch.Tensor, laue: str, ops: torch.Tensor) -> torch.Tensor:
    normals_np, c_np, rx_np, ry_np, table = _sector_tables(laue)
    dt, dev = q.dtype, q.device
    normals = torch.as_tensor(normals_np, dtype=dt, device=dev)
    c, rx, ry = (torch.as_tensor(a, dtype=dt, device=dev) for a in (c_np, rx_np, ry_np))
    v = quat_rotate(q, direction)  # crystal direction of the sample direction
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    h = _to_sector(v, ops, normals, c)
    # azimuth about the centre
    d = h - c
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    az = torch.remainder(torch.atan2(d @ ry, d @ rx), 2 * math.pi)
    if table is not None:
        az = _interp(az, torch.as_tensor(table[0], dtype=dt, device=dev), torch.as_tensor(table[1], dtype=dt, device=dev))
    # distance to the boundary, relative to the centre's
    vc = torch.cross(h, c.expand_as(h), dim=-1)
    vc = vc / vc.norm(dim=-1, keepdim=True)
    polar = torch.full(h.shape[:-1], math.inf, dtype=dt, device=dev)
    for nrm in normals:
        bp = torch.cross(vc, nrm.expand_as(vc), dim=-1)
        bp = bp / bp.norm(dim=-1, keepdim=True)
        num = torch.acos((-h * bp).sum(-1).clamp(-1, 1))
        den = torch.acos((-c * bp).sum(-1).clamp(-1, 1))
        dist = num / den
        polar = torch.minimum(polar, torch.where(torch.isnan(dist), torch.ones_like(dist), dist))
    light = 0.5 + polar / 2
    hue = torch.remainder(az / (2 * math.pi), 1.0)
    # HSL (saturation 1) -> HSV
    l2 = 2 * light
    s2 = torch.where(l2 <= 1, l2, 2 - l2)
    sat = 2 * s2 / (l2 + s2)
    sat = torch.where(torch.isnan(sat), torch.zeros_like(sat), sat)
    val = (l2 + s2) / 2
    return _hsv_to_rgb(hue, sat, val).clamp(0, 1)


def ipf_directions(q, symmetry, direction=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """Crystal directions of the sample ``direction`` moved to the Laue class's fundamental sector
    (``(..., 4)`` -> ``(..., 3)`` unit vectors): the points plotted in an inverse pole figure."""
    sym = get_symmetry(symmetry)
    q = as_quat(q)
    normals_np, c_np, _, _, _ = _sector_tables(sym.name)
    d = torch.as_tensor(direction, dtype=q.dtype, device=q.device)
    v = quat_rotate(q, d / d.norm())
    return _to_sector(v, sym.operators_as(q), torch.as_tensor(normals_np, dtype=q.dtype, device=q.device),
                      torch.as_tensor(c_np, dtype=q.dtype, device=q.device))


@numpy_edge
def ipf_colors(q, symmetry, direction=(0.0, 0.0, 1.0), chunk: int = 1 << 16) -> torch.Tensor:
    """TSL inverse-pole-figure colours of orientations.

    Args:
        q: unit quaternions ``(..., 4)`` (passive, sample -> crystal), torch (any device) or numpy.
        symmetry: anything :func:`~ebsd.orientation.get_symmetry` accepts (its Laue class is used).
        direction: the sample direction ``(3,)``, e.g. ``(0, 0, 1)`` for IPF-Z, ``(1, 0, 0)`` for IPF-X.

    Returns:
        float32 RGB ``(..., 3)`` in ``[0, 1]`` on ``q``'s device (numpy for numpy input); close to orix's
        ``IPFColorKeyTSL(symmetry, direction).orientation2color``.
    """
    sym = get_symmetry(symmetry)
    q = as_quat(q)
    work = q if q.dtype == torch.float64 else q.to(torch.float32)
    work = work / work.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # any non-zero scale, as in misorientation_angle
    d = torch.as_tensor(direction, dtype=work.dtype, device=work.device)
    if d.shape != (3,) or not torch.isfinite(d).all() or d.norm() == 0:
        raise EBSDValueError(f"direction must be a non-zero 3-vector, got {direction!r}")
    d = d / d.norm()
    ops = sym.operators_as(work)
    flat = work.reshape(-1, 4)
    out = torch.empty(flat.shape[0], 3, dtype=work.dtype, device=work.device)
    for i in range(0, flat.shape[0], chunk):
        out[i:i + chunk] = _colors_rows(flat[i:i + chunk], d, sym.name, ops)
    return out.reshape(*q.shape[:-1], 3).to(torch.float32)


def ipf_colors_by_phase(q, phases, symmetries: dict, direction=(0.0, 0.0, 1.0), valid=None,
                        chunk: int = 1 << 16):
    """TSL IPF colours of a multi-phase map, each voxel with its own phase's symmetry.

    Args:
        q: unit quaternions ``(..., 4)`` (torch or numpy).
        phases: integer phase ids ``(...)``.
        symmetries: ``{phase id: symmetry}`` (e.g. ``EBSDVolume.symmetries``); voxels of other ids are black.
        direction: sample direction, as in :func:`ipf_colors`.
        valid: optional bool mask ``(...)``; voxels outside it are black.

    Returns:
        float32 RGB ``(..., 3)`` in ``[0, 1]`` (numpy for numpy ``q``), never the dominant phase's symmetry
        for all voxels.
    """
    as_np = isinstance(q, np.ndarray)
    qt = torch.from_numpy(np.ascontiguousarray(q)) if as_np else q
    ph = torch.from_numpy(np.asarray(phases)) if isinstance(phases, np.ndarray) else phases
    ph = ph.to(qt.device)
    if tuple(ph.shape) != tuple(qt.shape[:-1]):
        raise EBSDValueError(f"phases has shape {tuple(ph.shape)}, expected {tuple(qt.shape[:-1])}")
    mask = torch.ones_like(ph, dtype=torch.bool)
    if valid is not None:
        v = torch.from_numpy(np.asarray(valid)) if isinstance(valid, np.ndarray) else valid
        mask = v.to(device=qt.device, dtype=torch.bool)
    out = torch.zeros(*qt.shape[:-1], 3, dtype=torch.float32, device=qt.device)
    for pid, sym in symmetries.items():
        sel = mask & (ph == int(pid))
        if bool(sel.any()):
            out[sel] = ipf_colors(qt[sel], sym, direction=direction, chunk=chunk).to(torch.float32)
    return out.cpu().numpy() if as_np else out
