"""Find bad slices of a serial-sectioned volume: low mean confidence (CI), low image quality (IQ), few
indexed voxels, or an abrupt orientation jump to *both* neighbours while those neighbours agree with each
other (a smeared, charged, misaligned or garbage slice)."""
from __future__ import annotations

import torch

from ._common import misorientation_deg


def _robust_low(x: torch.Tensor, k: float, rel: float) -> torch.Tensor:
    """True where ``x`` is far below the bulk: ``x < median - max(k * 1.4826 * MAD, rel * |median|)``."""
    med = x.median()
    mad = (x - med).abs().median() * 1.4826
    return x < med - torch.maximum(k * mad, rel * med.abs())


def _jump_fraction(qa, qb, va, vb, symmetry, angle_deg) -> torch.Tensor:
    """Fraction of voxels (valid in both) whose misorientation between two slices exceeds ``angle_deg``."""
    both = va & vb
    if not bool(both.any()):
        return torch.tensor(1.0)
    ang = misorientation_deg(qa[both], qb[both], symmetry)
    return (ang > angle_deg).float().mean().cpu()


def find_bad_slices(vol, *, k: float = 5.0, rel: float = 0.3, jump_deg: float = 5.0, jump_margin: float = 0.25,
                    use_ci: bool = True, use_iq: bool = True, use_jump: bool = True, return_stats: bool = False):
    """Indices of slices that look bad, sorted.

    A slice is bad when any enabled test flags it:
      * its mean CI (unindexed voxels count as 0) or its indexed fraction is far below the other slices'
        (``median - max(k * MAD, rel * median)``);
      * its mean IQ is far below the other slices' (same rule);
      * the fraction of voxels misoriented by more than ``jump_deg`` to the slice below *and* to the slice
        above both exceed, by ``jump_margin``, that fraction between the two neighbours themselves (at a
        volume edge: to its one neighbour vs. that neighbour to the next).

    Returns ``list[int]``, or ``(list[int], stats)`` with per-slice tensors when ``return_stats``.
    """
    Z = vol.shape[0]
    valid = vol.valid
    ci = torch.where(valid, vol.confidence.clamp_min(0), torch.zeros_like(vol.confidence)).flatten(1).mean(1).cpu()
    frac = valid.flatten(1).float().mean(1).cpu()
    iq = vol.image_quality.flatten(1).float().mean(1).cpu()
    bad = torch.zeros(Z, dtype=torch.bool)
    stats = {"mean_ci": ci, "indexed_fraction": frac, "mean_iq": iq}
    if Z >= 3:
        if use_ci:
            bad |= _robust_low(ci, k, rel) | _robust_low(frac, k, rel)
        if use_iq:
            bad |= _robust_low(iq, k, rel)
    bad |= frac == 0
    if use_jump and Z >= 3:
        q = vol.quaternions
        step = torch.stack([_jump_fraction(q[z], q[z + 1], valid[z], valid[z + 1], vol.symmetry, jump_deg) for z in range(Z - 1)])
        skip = torch.stack([_jump_fraction(q[z], q[z + 2], valid[z], valid[z + 2], vol.symmetry, jump_deg) for z in range(Z - 2)])
        jump = torch.zeros(Z, dtype=torch.bool)
        for z in range(Z):
            if 0 < z < Z - 1:
                lo, hi, ref = step[z - 1], step[z], skip[z - 1]
                jump[z] = bool(min(lo, hi) > ref + jump_margin)
            elif z == 0:
                jump[z] = bool(step[0] > step[1] + jump_margin)
            else:
                jump[z] = bool(step[Z - 2] > step[Z - 3] + jump_margin)
        stats.update(step_jump=step, skip_jump=skip, jump=jump)
        bad |= jump
    out = [int(z) for z in torch.nonzero(bad).flatten()]
    return (out, stats) if return_stats else out
