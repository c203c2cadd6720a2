"""Grain (feature) statistics of a segmented volume, as DREAM.3D's statistics filters compute them:
*Find Feature Sizes* (NumElements, Volumes, EquivalentDiameters), *Find Feature Phases*, *Find Avg
Orientations* (AvgQuats), *Find Feature Centroids*, *Find Feature Shapes* (AspectRatios from the second
moments), *Find Feature Neighbors* (NumNeighbors, shared faces), *Find Surface Features* and *Find Feature
Neighbor Misorientations* (the misorientation distribution), multi-phase aware (each phase's own symmetry;
the misorientation of two grains of different phases is not defined and is left out).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import EBSDValueError
from ..volume import EBSDVolume

__all__ = ["grain_statistics", "GrainStatistics", "grain_mean_orientations"]


def grain_mean_orientations(vol: EBSDVolume, labels: torch.Tensor, n_grains: int | None = None,
                            n_iter: int = 3, chunk: int = 1 << 20) -> torch.Tensor:
    """``(G, 4)`` symmetry-aware mean orientation of each grain (its phase's symmetry), reduced to the
    fundamental zone; zeros for grains with no voxel. Each voxel is moved to its equivalent nearest the
    grain's current mean (first: the grain's first voxel), the quaternions are summed and normalised;
    ``n_iter`` rounds (a few degrees of spread converge in 2)."""
    from ..orientation import align_to_reference, reduce_to_fundamental_zone

    lab = labels.reshape(-1)
    G = int(lab.max()) + 1 if n_grains is None else int(n_grains)
    q = vol.quaternions.reshape(-1, 4).double()
    ph = vol.phases.reshape(-1)
    sel = torch.nonzero(lab >= 0).squeeze(1)
    out = torch.zeros((G, 4), dtype=torch.float64, device=q.device)
    if sel.numel() == 0 or G == 0:
        return out.float()
    gl = lab[sel]
    first = torch.full((G,), sel.numel(), dtype=torch.int64, device=q.device)
    first.scatter_reduce_(0, gl, torch.arange(sel.numel(), device=q.device), reduce="amin")
    has = first < sel.numel()
    ref = torch.zeros((G, 4), dtype=torch.float64, device=q.device)
    ref[has] = q[sel[first[has]]]
    gphase = torch.full((G,), -1, dtype=torch.int64, device=q.device)
    gphase[has] = ph[sel[first[has]]].long()
    syms = {int(k): p.symmetry for k, p in vol.phase_info.items()}
    for _ in range(max(1, n_iter)):
        acc = torch.zeros((G, 4), dtype=torch.float64, device=q.device)
        for s0 in range(0, sel.numel(), chunk):
            idx = sel[s0:s0 + chunk]
            g = gl[s0:s0 + chunk]
            qq = q[idx]
            pp = gphase[g]
            al = qq.clone()
            for pid, sym in syms.items():
                m = pp == pid
                if bool(m.any()):
                    al[m] = align_to_reference(qq[m], ref[g[m]], sym)
            sign = torch.where((al * ref[g]).sum(-1) < 0, -1.0, 1.0).to(al.dtype)
            acc.index_add_(0, g, al * sign[:, None])
        nrm = acc.norm(dim=-1, keepdim=True)
        ref = torch.where(nrm > 0, acc / nrm.clamp_min(1e-300), ref)
    for pid, sym in syms.items():
        m = gphase == pid
        if bool(m.any()):
            out[m] = reduce_to_fundamental_zone(ref[m], sym)
    out[~has] = 0.0
    return out.float()


@dataclass
class GrainStatistics:
    """Per-grain arrays (numpy, index = grain label) and the grain-boundary misorientations.

    Attributes:
        n_voxels: ``(G,)`` int64 (DREAM.3D NumElements).
        volume: ``(G,)`` float64, cubic micrometres (DREAM.3D Volumes).
        esd: ``(G,)`` float64 equivalent-sphere diameter, micrometres (DREAM.3D EquivalentDiameters); for a
            single section (``Z = 1``) the equivalent-circle diameter.
        phase: ``(G,)`` int64 phase id (DREAM.3D Phases).
        mean_quaternion: ``(G, 4)`` float32 mean orientation (DREAM.3D AvgQuats, here scalar first).
        centroid: ``(G, 3)`` float64 ``(z, y, x)`` micrometres from the origin (DREAM.3D Centroids).
        axis_lengths: ``(G, 3)`` float64 principal semi-axes ``a >= b >= c`` of the ellipsoid with the grain's
            second moments, micrometres.
        aspect_ratios: ``(G, 2)`` float64 ``(b / a, c / a)`` (DREAM.3D AspectRatios); nan for 1-voxel grains.
        n_neighbours: ``(G,)`` int64 face-sharing neighbour grains (DREAM.3D NumNeighbors).
        touches_border: ``(G,)`` bool, grain reaches the volume's faces or a not-measured voxel (DREAM.3D
            SurfaceFeatures).
        pairs: ``(B, 2)`` int64 neighbouring grain pairs ``a < b``; ``shared_faces``: ``(B,)`` int64.
        misorientation_deg: ``(B,)`` float64 disorientation angle between the pair's mean orientations
            (nan for pairs of different phases) (DREAM.3D MisorientationList).
    """

    n_voxels: np.ndarray
    volume: np.ndarray
    esd: np.ndarray
    phase: np.ndarray
    mean_quaternion: np.ndarray
    centroid: np.ndarray
    axis_lengths: np.ndarray
    aspect_ratios: np.ndarray
    n_neighbours: np.ndarray
    touches_border: np.ndarray
    pairs: np.ndarray
    shared_faces: np.ndarray
    misorientation_deg: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_grains(self) -> int:
        return len(self.n_voxels)

    def misorientation_distribution(self, bins: int | np.ndarray = 63, weighted: bool = True,
                                    max_deg: float | None = None):
        """Histogram of the boundary misorientations (same-phase pairs): ``(density, bin_edges)``.

        ``weighted``: each boundary counts by its shared area (faces), as a boundary-area distribution
        (else each pair counts once). ``density`` sums to 1 over the bins (times bin width: a density
        per degree). Default range 0..max misorientation of the data (62.8 deg for m-3m)."""
        ok = np.isfinite(self.misorientation_deg)
        m = self.misorientation_deg[ok]
        w = self.shared_faces[ok].astype(np.float64) if weighted else None
        hi = max_deg if max_deg is not None else max(63.0, float(m.max()) if m.size else 63.0)
        return np.histogram(m, bins=bins, range=(0.0, hi), weights=w, density=True)

    def summary(self, exclude_border: bool = True, min_voxels: int = 1) -> dict[str, Any]:
        """Mean / median ESD, grain count, mean neighbours, mean aspect ratios (interior grains only by
        default, as the edge-cut grains bias sizes down)."""
        sel = self.n_voxels >= min_voxels
        if exclude_border:
            sel &= ~self.touches_border
        e = self.esd[sel]
        return {
            "n_grains": int(self.n_grains), "n_used": int(sel.sum()),
            "mean_esd_um": float(e.mean()) if e.size else float("nan"),
            "median_esd_um": float(np.median(e)) if e.size else float("nan"),
            "std_log_esd": float(np.log(e).std()) if e.size > 1 else float("nan"),
            "mean_neighbours": float(self.n_neighbours[sel].mean()) if sel.any() else float("nan"),
            "mean_aspect_ratios": np.nanmean(self.aspect_ratios[sel], axis=0).tolist() if sel.any() else [],
            "mean_boundary_misorientation_deg": float(np.nanmean(self.misorientation_deg))
            if np.isfinite(self.misorientation_deg).any() else float("nan"),
        }


def grain_statistics(vol: EBSDVolume, labels=None, threshold_deg: float = 5.0) -> GrainStatistics:
    """Statistics of every grain of ``labels`` (segmented here with ``threshold_deg`` when None).

    Args:
        vol: the volume (its spacing gives micrometres; its phases' symmetries the orientations).
        labels: ``(Z, Y, X)`` grain labels ``0..G-1`` (``-1`` = none), torch or numpy.
        threshold_deg: segmentation threshold when ``labels`` is None.

    Returns:
        :class:`GrainStatistics`.
    """
    from ..orientation import misorientation_angle, segment_grains

    if not isinstance(vol, EBSDVolume):
        raise EBSDValueError(f"grain_statistics needs an EBSDVolume, got {type(vol).__name__}")
    if labels is None:
        labels, _ = segment_grains(vol, threshold_deg=threshold_deg)
    lab_t = torch.from_numpy(np.ascontiguousarray(labels)) if isinstance(labels, np.ndarray) else labels
    if tuple(lab_t.shape) != tuple(vol.shape):
        raise EBSDValueError(f"labels must have shape {vol.shape}, got {tuple(lab_t.shape)}")
    lab_t = lab_t.to(device=vol.device, dtype=torch.int64)
    lab = lab_t.cpu().numpy()
    G = int(lab.max()) + 1 if lab.size and lab.max() >= 0 else 0
    dz, dy, dx = vol.spacing
    Z, Y, X = vol.shape
    sel = lab >= 0
    gl = lab[sel]
    n = np.bincount(gl, minlength=G).astype(np.int64)
    vox = dz * dy * dx
    volume = n * vox
    if Z == 1:
        esd = 2.0 * np.sqrt(n * dy * dx / math.pi)
    else:
        esd = (6.0 * volume / math.pi) ** (1.0 / 3.0)
    ph = vol.phases.cpu().numpy()
    phase = np.full(G, -1, np.int64)
    phase[gl] = ph[sel]
    # centroids and second moments (micrometres, voxel centres at origin + index * spacing)
    zz, yy, xx = np.nonzero(sel)
    coords = np.stack([zz * dz + vol.origin[0], yy * dy + vol.origin[1], xx * dx + vol.origin[2]], 1)
    cnt = np.maximum(n, 1)[:, None]
    c1 = np.zeros((G, 3))
    np.add.at(c1, gl, coords)
    centroid = c1 / cnt
    d = coords - centroid[gl]
    cov = np.zeros((G, 3, 3))
    for i in range(3):
        for j in range(i, 3):
            acc = np.bincount(gl, weights=d[:, i] * d[:, j], minlength=G)
            cov[:, i, j] = cov[:, j, i] = acc
    cov /= cnt[:, :, None]
    # a voxel's own extent (uniform box of side s: variance s^2 / 12) keeps 1-voxel-thick grains finite
    cov += np.diag([dz * dz / 12.0, dy * dy / 12.0, dx * dx / 12.0])[None]
    ev = np.linalg.eigvalsh(cov)[:, ::-1]  # descending
    axes = np.sqrt(5.0 * np.maximum(ev, 0))  # semi-axes of the uniform ellipsoid with that covariance
    with np.errstate(invalid="ignore", divide="ignore"):
        aspect = np.stack([axes[:, 1] / axes[:, 0], axes[:, 2] / axes[:, 0]], 1)
    aspect[n <= 1] = np.nan
    # neighbours
    from .cleanup import _face_pairs

    a, b, faces = _face_pairs(lab)
    nn = np.bincount(np.concatenate([a, b]), minlength=G).astype(np.int64) if len(a) else np.zeros(G, np.int64)
    # border: faces of the box, or next to a not-measured voxel
    border = np.zeros(G, bool)
    for ax in range(3):
        if vol.shape[ax] == 1:
            continue
        for end in (0, -1):
            sl = np.take(lab, [end], axis=ax)
            border[sl[sl >= 0]] = True
    unm = ~vol.measured.cpu().numpy()
    if unm.any():
        from scipy import ndimage

        near = ndimage.binary_dilation(unm, structure=ndimage.generate_binary_structure(3, 1)) & sel
        border[np.unique(lab[near])] = True
    gq = grain_mean_orientations(vol, lab_t, G)
    mis = np.full(len(a), np.nan)
    if len(a):
        at, bt = torch.from_numpy(a).to(vol.device), torch.from_numpy(b).to(vol.device)
        pa, pb = phase[a], phase[b]
        for pid, p in vol.phase_info.items():
            m = (pa == int(pid)) & (pb == int(pid))
            if m.any():
                mt = torch.from_numpy(m).to(vol.device)
                ang = misorientation_angle(gq[at[mt]].double(), gq[bt[mt]].double(), p.symmetry)
                mis[m] = np.degrees(ang.cpu().numpy())
    return GrainStatistics(
        n_voxels=n, volume=volume, esd=esd, phase=phase, mean_quaternion=gq.cpu().numpy(), centroid=centroid,
        axis_lengths=axes, aspect_ratios=aspect, n_neighbours=nn, touches_border=border,
        pairs=np.stack([a, b], 1) if len(a) else np.zeros((0, 2), np.int64), shared_faces=faces,
        misorientation_deg=mis, params={"spacing": list(vol.spacing)})
