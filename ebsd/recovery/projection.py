"""The projection step: snap each voxel of a missing slice to a grain of the adjacent known slices.

Grains of the known slice just below and just above the gap are found by misorientation segmentation
(:func:`ebsd.orientation.segment_grains`); each grain gets its mean orientation (:func:`grain_means`). For a voxel ``(y, x)`` of a missing slice, the candidates are
the grains found within ``radius`` voxels of ``(y, x)`` in either adjacent slice; each is scored by

    cost = misorientation(guess(y, x), grain mean) [deg]
         + spatial_weight * (in-plane distance to the nearest voxel of that grain) [deg per voxel]
         + z_weight * (fraction of the gap between the voxel's slice and that adjacent slice) [deg]

and the voxel takes the mean orientation of the cheapest grain. Outputs are therefore orientations of real
neighbouring grains; the guess only decides which one.

With ``smooth = r > 0`` the costs are aggregated before the choice, as in stereo matching: a candidate is a
*label* (adjacent slice ``s``, in-plane offset ``(dy, dx)``: "copy the grain of slice ``s`` shifted by
``(dy, dx)``"), and each label's cost map is averaged over the ``(2r+1) x (2r+1)`` window around the voxel.
A voxel whose own guess is ambiguous then follows its neighbours' choice, which removes the speckle of
isolated flips between the grain below and the grain above (spurious boundaries) while a real change of
label along a grain boundary of the guess still moves the boundary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import torch.nn.functional as F

from ..orientation import quat_conjugate, quat_multiply, reduce_to_fundamental_zone, segment_grains
from ._common import cos_half_misorientation, symmetry_operators


@dataclass
class NeighbourGrains:
    """Grains of the adjacent known slices. ``labels``: ``(S, Y, X)`` long, index into ``means`` or -1
    (unindexed); ``means``: ``(K, 4)`` mean orientations; ``positions``: ``(S,)`` float, position of each
    adjacent slice in the gap coordinate (0 below, 1 above)."""

    labels: torch.Tensor
    means: torch.Tensor
    positions: torch.Tensor


def grain_means(q: torch.Tensor, labels: torch.Tensor, n: int, symmetry: str, n_iter: int = 2) -> torch.Tensor:
    """Mean orientation ``(n, 4)`` of each grain ``0..n-1`` of ``labels`` (``-1``: ignored) in the map
    ``q`` (``labels.shape + (4,)``): :func:`ebsd.orientation.mean_orientation` for all grains at once
    (each voxel moved to its equivalent closest to its grain's current mean, summed per grain, normalised;
    the first reference is the grain's first voxel)."""
    lab = labels.reshape(-1)
    keep = lab >= 0
    lab, qv = lab[keep], q.reshape(-1, 4)[keep]
    if n == 0:
        return torch.zeros(0, 4, dtype=q.dtype, device=q.device)
    first = torch.full((n,), lab.numel(), dtype=torch.long, device=q.device)
    first.scatter_reduce_(0, lab, torch.arange(lab.numel(), device=q.device), reduce="amin")
    ref = qv[first]
    ops = symmetry_operators(symmetry, qv)
    for _ in range(n_iter):
        aligned = _align(qv, ref[lab], ops)
        s = torch.zeros(n, 4, dtype=q.dtype, device=q.device).index_add_(0, lab, aligned)
        ref = s / s.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return reduce_to_fundamental_zone(ref, symmetry)


def _align(q: torch.Tensor, ref: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """The equivalent ``+-s q`` (``s`` in ``ops (N, 4)``) closest to ``ref``; ``q``, ``ref``: ``(M, 4)``.
    Same result as :func:`ebsd.orientation.align_to_reference`, with two quaternion products per row
    instead of ``N`` (``<ref, s q> = <conj(s), q conj(ref)>``: one ``(M, 4) x (4, N)`` matmul picks ``s``)."""
    d = quat_multiply(q, quat_conjugate(ref)) @ quat_conjugate(ops).T  # (M, N)
    k = d.abs().argmax(-1)
    best = quat_multiply(ops[k], q)
    sign = torch.gather(d, 1, k[:, None])
    return torch.where(sign < 0, -best, best)


def neighbour_grains(slices: list[tuple[torch.Tensor, torch.Tensor | None, float]], symmetry: str,
                     threshold_deg: float = 5.0) -> NeighbourGrains:
    """Segment each adjacent slice ``(q (Y, X, 4), valid (Y, X) or None, position)`` into grains and
    return one shared table of grain mean orientations."""
    all_labels, means, positions = [], [], []
    offset = 0
    for q, valid, pos in slices:
        if valid is None:
            valid = torch.ones(q.shape[:2], dtype=torch.bool, device=q.device)
        lab, n = segment_grains(q, symmetry, threshold_deg, valid=valid)  # 0..n-1, -1 where invalid
        lab = lab.long()
        means.append(grain_means(q, lab, n, symmetry))
        all_labels.append(torch.where(lab >= 0, lab + offset, lab))
        offset += n
        positions.append(pos)
    dev = slices[0][0].device
    M = torch.cat(means) if means else torch.zeros(0, 4, device=dev)
    return NeighbourGrains(torch.stack(all_labels), M, torch.tensor(positions, dtype=torch.float32, device=dev))


def _shift(lab: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[y, x] = lab[y + dy, x + dx]`` (``-1`` outside)."""
    Y, X = lab.shape
    out = torch.full_like(lab, -1)
    ys, yd = (slice(0, Y - dy), slice(dy, Y)) if dy >= 0 else (slice(-dy, Y), slice(0, Y + dy))
    xs, xd = (slice(0, X - dx), slice(dx, X)) if dx >= 0 else (slice(-dx, X), slice(0, X + dx))
    out[ys, xs] = lab[yd, xd]
    return out


def _box_mean(cost: torch.Tensor, r: int) -> torch.Tensor:
    """Mean of each ``(K, Y, X)`` map over the ``(2r+1)^2`` window (the part inside the image)."""
    return F.avg_pool2d(cost[:, None], 2 * r + 1, 1, r, count_include_pad=False)[:, 0]


def project(guess: torch.Tensor, positions, grains: NeighbourGrains, symmetry: str, radius: int = 3,
            spatial_weight: float = 1.0, z_weight: float = 2.0, smooth: int = 0,
            invalid_cost: float = 90.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Project guesses ``(G, Y, X, 4)`` for the missing slices at gap positions ``positions`` (``G``
    floats in ``(0, 1)``; 0 is the slice below) onto the neighbouring grains.

    ``smooth``: radius (voxels) of the cost aggregation window (0: none; see the module docstring); while
    aggregating, a label with no grain at a voxel (unindexed or outside the slice) costs ``invalid_cost``
    (deg) there, and a label is never chosen where it has no grain itself.

    Returns ``(quaternions (G, Y, X, 4), grain index (G, Y, X))``; the index is into ``grains.means``, -1
    where no candidate lies within ``radius`` (those voxels keep their guess).
    """
    G, Y, X, _ = guess.shape
    means = grains.means.to(guess)
    pos = torch.as_tensor(positions, dtype=torch.float32, device=guess.device).reshape(G)
    best = torch.full((G, Y, X), -1, dtype=torch.long, device=guess.device)
    if len(means) == 0:
        return guess.clone(), best
    offs = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if dy * dy + dx * dx <= radius * radius]
    S = grains.labels.shape[0]
    # all candidates at once: (K = S * len(offs), Y, X) grain indices, their in-plane and z penalties
    cand = torch.stack([_shift(grains.labels[s], dy, dx) for s in range(S) for dy, dx in offs])
    dist = torch.tensor([(dy * dy + dx * dx) ** 0.5 for _ in range(S) for dy, dx in offs], device=guess.device)
    zpos = grains.positions.to(pos).repeat_interleave(len(offs))  # (K,)
    ok = cand >= 0
    m = means[cand.clamp_min(0)]  # (K, Y, X, 4)
    ops = symmetry_operators(symmetry, m)
    for g in range(G):  # one missing slice at a time keeps memory at K * Y * X
        # misorientation (deg) to every candidate: one product per pair + a (4, N) matmul over the operators
        cost = torch.rad2deg(2 * torch.acos(cos_half_misorientation(guess[g].unsqueeze(0), m, ops).clamp(max=1.0)))
        cost = cost + (spatial_weight * dist + z_weight * (pos[g] - zpos).abs())[:, None, None]
        if smooth > 0:
            cost = _box_mean(torch.where(ok, cost, torch.full_like(cost, invalid_cost)), int(smooth))
        cost = torch.where(ok, cost, torch.full_like(cost, float("inf")))
        k = cost.argmin(0)  # (Y, X)
        best[g] = torch.gather(cand, 0, k[None]).squeeze(0)
    out = torch.where((best >= 0).unsqueeze(-1), means[best.clamp_min(0)], guess)
    return out, best
