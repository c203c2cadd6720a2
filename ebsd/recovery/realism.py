"""Make synthetic training volumes look like measured ones, and measure what "measured" looks like.

Real maps differ from the synthetic generator's flat grains in three ways that matter for slice recovery:
orientation drifts smoothly inside grains (lattice curvature, ~0.1-1 deg per voxel), single voxels are
misindexed (a random orientation, or a pseudo-symmetric variant of the right one), and a few percent are not
indexed. :func:`map_statistics` measures these on a real 2-D or 3-D map; :func:`add_realism` puts them into
a synthetic volume (into the truth as well where they are real structure: the gradient is; misindexing is
not). ``python -m ebsd.recovery.realism MAP [MAP ...]`` prints the statistics as JSON (the numbers used for
training are in ``data/slice_recovery/calibration.json``).
"""
from __future__ import annotations

import json
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F

from ..orientation import quat_multiply
from ._common import misorientation_deg


def _rotvec_to_quat(w: torch.Tensor) -> torch.Tensor:
    ang = w.norm(dim=-1, keepdim=True)
    axis = w / ang.clamp_min(1e-12)
    return torch.cat([torch.cos(ang / 2), axis * torch.sin(ang / 2)], -1)


def smooth_rotation_field(shape, length: float, gen: torch.Generator) -> torch.Tensor:
    """``(Z, Y, X, 3)`` smooth random rotation vectors (radians, unscaled) with correlation length
    ``length`` voxels (coarse Gaussian noise, trilinearly upsampled)."""
    Z, Y, X = shape
    L = max(1.0, float(length))
    cz, cy, cx = (max(2, int(math.ceil(n / L)) + 2) for n in (Z, Y, X))
    coarse = torch.randn(1, 3, cz, cy, cx, generator=gen)
    fine = F.interpolate(coarse, size=(Z, Y, X) if Z > 1 else (1, Y, X), mode="trilinear", align_corners=False)
    return fine[0].permute(1, 2, 3, 0).contiguous()


def add_realism(q_obs: torch.Tensor, q_clean: torch.Tensor, valid: torch.Tensor, symmetry: str, seed: int,
                gradient_deg: float = 0.3, gradient_length: float = 8.0, misindexed: float = 0.02,
                pseudo_fraction: float = 0.3, z_ratio: float = 1.0):
    """Add an intragranular gradient (to both the observed and the clean orientations) and misindexed voxels
    (observed only) to a synthetic volume. ``q_obs``, ``q_clean`` ``(Z, Y, X, 4)``; ``valid`` ``(Z, Y, X)``.

    ``gradient_deg``: mean misorientation between in-plane neighbours caused by the gradient (deg/voxel);
    ``gradient_length``: its correlation length (voxels); ``misindexed``: fraction of valid voxels given a
    wrong orientation, of which ``pseudo_fraction`` are the right one turned by a pseudo-symmetry (60 deg
    about <111> for cubic, 30 deg about [0001] for hexagonal, 90 deg about [001] otherwise) and the rest
    random; ``z_ratio``: section spacing in in-plane steps (the gradient changes ``z_ratio`` times faster
    per section). Returns ``(q_obs, q_clean, misindexed_mask)``.
    """
    gen = torch.Generator().manual_seed(int(seed))
    shape = tuple(q_obs.shape[:3])
    Z = shape[0]
    if gradient_deg > 0:
        # build the field on a grid stretched along z by z_ratio, then sample every z_ratio-th plane
        zf = max(1, int(round((Z - 1) * z_ratio)) + 1)
        w = smooth_rotation_field((zf, shape[1], shape[2]), gradient_length, gen)
        zi = torch.round(torch.arange(Z, dtype=torch.float32) * z_ratio).long().clamp(max=zf - 1)
        w = w[zi]
        # scale so that the in-plane neighbour misorientation is gradient_deg on average
        dx = (w[:, :, 1:] - w[:, :, :-1]).norm(dim=-1).mean() if shape[2] > 1 else (w[:, 1:] - w[:, :-1]).norm(dim=-1).mean()
        w = w * (math.radians(gradient_deg) / float(dx.clamp_min(1e-9)))
        r = _rotvec_to_quat(w).to(q_obs)
        q_obs = quat_multiply(q_obs, r)
        q_clean = quat_multiply(q_clean, r)
    mis = torch.zeros(shape, dtype=torch.bool)
    if misindexed > 0:
        mis = (torch.rand(shape, generator=gen) < misindexed) & valid.cpu()
        n = int(mis.sum())
        if n:
            rnd = torch.randn(n, 4, generator=gen)
            rnd = rnd / rnd.norm(dim=-1, keepdim=True)
            if symmetry in ("m-3m", "m-3"):
                axis, ang = torch.tensor([1.0, 1.0, 1.0]) / math.sqrt(3), math.radians(60)
            elif symmetry in ("6/mmm", "6/m"):
                axis, ang = torch.tensor([0.0, 0.0, 1.0]), math.radians(30)
            else:
                axis, ang = torch.tensor([0.0, 0.0, 1.0]), math.radians(90)
            ps = torch.cat([torch.tensor([math.cos(ang / 2)]), axis * math.sin(ang / 2)])
            pseudo = quat_multiply(ps.expand(n, 4), q_obs[mis].cpu())
            pick = torch.rand(n, generator=gen) < pseudo_fraction
            new = torch.where(pick[:, None], pseudo, rnd).to(q_obs)
            q_obs = q_obs.clone()
            q_obs[mis.to(q_obs.device)] = new
    q_obs = q_obs / q_obs.norm(dim=-1, keepdim=True)
    q_clean = q_clean / q_clean.norm(dim=-1, keepdim=True)
    return q_obs, q_clean, mis


def map_statistics(vol, angle_deg: float = 5.0) -> dict:
    """Statistics of a measured map (2-D or 3-D ``EBSDVolume``), in voxels and degrees, over in-plane
    neighbour pairs: ``gradient_deg_mean``/``_median`` (misorientation of pairs below ``angle_deg``),
    ``boundary_pair_fraction`` (pairs above it), ``isolated_fraction`` (valid voxels misoriented by more
    than ``angle_deg`` from every valid in-plane neighbour: misindexing), ``unindexed_fraction``, and the
    grain size: ``grain_ecd_median``/``_p10``/``_p90`` (equivalent circle diameter of grains of >= 2 voxels
    in each section, segmented at ``angle_deg``)."""
    from ..orientation import segment_grains

    q, valid, sym = vol.quaternions, vol.valid, vol.symmetry
    Z, Y, X = vol.shape
    angs, iso_far, iso_cnt = [], torch.ones(Z, Y, X, dtype=torch.bool), torch.zeros(Z, Y, X, dtype=torch.int32)
    for axis, n in ((2, X), (1, Y)):
        if n < 2:
            continue
        a, b = q.narrow(axis, 0, n - 1), q.narrow(axis, 1, n - 1)
        m = valid.narrow(axis, 0, n - 1) & valid.narrow(axis, 1, n - 1)
        ang = misorientation_deg(a, b, sym)
        angs.append(ang[m])
        far = (ang > angle_deg) | ~m
        for sl, other in ((slice(0, n - 1), slice(1, n)), (slice(1, n), slice(0, n - 1))):
            idx = [slice(None)] * 3
            idx[axis] = sl
            iso_far[tuple(idx)] &= far
            iso_cnt[tuple(idx)] += m.int()
    ang = torch.cat(angs)
    small = ang[ang < angle_deg]
    iso = iso_far & valid & (iso_cnt > 0)
    ecd = []
    for z in range(Z):
        lab, n = segment_grains(q[z], sym, angle_deg, valid=valid[z])
        if n:
            cnt = torch.bincount(lab[lab >= 0].reshape(-1), minlength=n).float()
            cnt = cnt[cnt >= 2]
            ecd.append(torch.sqrt(4 * cnt / math.pi))
    e = torch.cat(ecd) if ecd else torch.zeros(1)
    return {
        "shape": list(vol.shape), "symmetry": sym,
        "gradient_deg_mean": float(small.mean()), "gradient_deg_median": float(small.median()),
        "boundary_pair_fraction": float((ang >= angle_deg).float().mean()),
        "isolated_fraction": float(iso.sum() / valid.sum().clamp_min(1)),
        "unindexed_fraction": float(1 - valid.float().mean()),
        "grain_ecd_median": float(e.median()), "grain_ecd_p10": float(e.quantile(0.1)),
        "grain_ecd_p90": float(e.quantile(0.9)),
    }


def main(argv=None) -> int:
    from ..io import load_volume

    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: python -m ebsd.recovery.realism MAP [MAP ...]   (any file load_volume reads)")
        return 2
    out = {p: map_statistics(load_volume(p)) for p in paths}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
