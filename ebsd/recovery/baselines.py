"""Baselines for slice recovery, with the same interface as :func:`ebsd.recovery.recover_missing_slices`:
``f(vol, missing) -> EBSDVolume`` with the missing slices filled and ``metadata["recovered_slices"]`` set.

* :func:`nearest_slice`: copy the nearest known slice (the one below on ties).
* :func:`slerp_neighbours`: spherical-linear interpolation between the two adjacent known slices, after
  bringing the upper one to the symmetry-equivalent closest to the lower one, voxel by voxel.
* :func:`project_nearest`: the projection step (:mod:`ebsd.recovery.projection`) applied to the
  nearest-slice guess.
"""
from __future__ import annotations

import torch

from ..orientation import align_to_reference
from ._common import check_missing, filled_volume, gap_neighbours, gap_position, runs
from .projection import neighbour_grains, project


def _nearest_guess(vol, run, lo, hi) -> dict[int, torch.Tensor]:
    out = {}
    for z in range(run[0], run[1] + 1):
        t = gap_position(z, lo, hi)
        out[z] = vol.quaternions[lo if t <= 0.5 else hi].clone()
    return out


def nearest_slice(vol, missing):
    """Fill each missing slice with a copy of the nearest known slice (as it is: an unindexed voxel there
    gives an unindexed voxel here; ``recover_missing_slices(method="nearest")`` takes the indexed side)."""
    missing = check_missing(vol, missing)
    filled, sources = {}, {}
    for run in runs(missing):
        lo, hi = gap_neighbours(run, vol.shape[0], set(missing))
        filled.update(_nearest_guess(vol, run, lo, hi))
        for z in range(run[0], run[1] + 1):
            t = gap_position(z, lo, hi)
            sources[z] = torch.full(vol.shape[1:], 0 if (hi is None or (lo is not None and t <= 0.5)) else 1,
                                    dtype=torch.int8, device=vol.device)
    return filled_volume(vol, filled, "nearest_slice", sources)


def slerp(q0: torch.Tensor, q1: torch.Tensor, t: float, symmetry: str) -> torch.Tensor:
    """Symmetry-aware slerp ``(..., 4)``: ``q1`` is replaced by its equivalent closest to ``q0`` first."""
    q1 = align_to_reference(q1, q0, symmetry)
    dot = (q0 * q1).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    small = so < 1e-6
    w0 = torch.where(small, torch.full_like(so, 1 - t), torch.sin((1 - t) * omega) / so.clamp_min(1e-12))
    w1 = torch.where(small, torch.full_like(so, t), torch.sin(t * omega) / so.clamp_min(1e-12))
    q = w0 * q0 + w1 * q1
    return q / q.norm(dim=-1, keepdim=True)


def slerp_neighbours(vol, missing):
    """Fill each missing slice by symmetry-aware slerp of the two adjacent known slices (a copy of the
    one that exists at a volume edge)."""
    missing = check_missing(vol, missing)
    sym = vol.symmetry
    filled, sources = {}, {}
    for run in runs(missing):
        lo, hi = gap_neighbours(run, vol.shape[0], set(missing))
        for z in range(run[0], run[1] + 1):
            t = gap_position(z, lo, hi)
            if lo is None or hi is None:
                filled[z] = vol.quaternions[lo if hi is None else hi].clone()
                sources[z] = torch.full(vol.shape[1:], 0 if hi is None else 1, dtype=torch.int8, device=vol.device)
            else:
                filled[z] = slerp(vol.quaternions[lo], vol.quaternions[hi], t, sym)
                sources[z] = torch.full(vol.shape[1:], 2, dtype=torch.int8, device=vol.device)
    return filled_volume(vol, filled, "slerp", sources)


def adjacent_grains(vol, run, lo, hi, threshold_deg: float = 5.0):
    """:func:`~ebsd.recovery.projection.neighbour_grains` of the known slices around a gap."""
    sl = [(vol.quaternions[z], vol.valid[z], 0.0 if z == lo else 1.0) for z in (lo, hi) if z is not None]
    return neighbour_grains(sl, vol.symmetry, threshold_deg)


def project_nearest(vol, missing, threshold_deg: float = 5.0, **project_kw):
    """The projection step applied to the nearest-slice guess."""
    missing = check_missing(vol, missing)
    filled = {}
    for run in runs(missing):
        lo, hi = gap_neighbours(run, vol.shape[0], set(missing))
        guess = _nearest_guess(vol, run, lo, hi)
        zs = sorted(guess)
        grains = adjacent_grains(vol, run, lo, hi, threshold_deg)
        out, _ = project(torch.stack([guess[z] for z in zs]), [gap_position(z, lo, hi) for z in zs], grains,
                         vol.symmetry, **project_kw)
        filled.update(zip(zs, out))
    return filled_volume(vol, filled, "project_nearest")


BASELINES = {"nearest": nearest_slice, "slerp": slerp_neighbours, "project_nearest": project_nearest}
