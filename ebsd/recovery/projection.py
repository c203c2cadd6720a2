"""The projection step: snap each voxel of a missing slice to a grain of the adjacent known slices.

Grains of the known slice just below and just above the gap are found by misorientation segmentation
(:func:`ebsd.orientation.segment_grains`); each grain gets its mean orientation
(:func:`ebsd.orientation.mean_orientation`). For a voxel ``(y, x)`` of a missing slice, the candidates are
the grains found within ``radius`` voxels of ``(y, x)`` in either adjacent slice; each is scored by

    cost = misorientation(guess(y, x), grain mean) [deg]
         + spatial_weight * (in-plane distance to the nearest voxel of that grain) [deg per voxel]
         + z_weight * (fraction of the gap between the voxel's slice and that adjacent slice) [deg]

and the voxel takes the mean orientation of the cheapest grain. Outputs are therefore orientations of real
neighbouring grains; the guess only decides which one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..orientation import mean_orientation, segment_grains
from ._common import misorientation_deg


@dataclass
class NeighbourGrains:
    """Grains of the adjacent known slices. ``labels``: ``(S, Y, X)`` long, index into ``means`` or -1
    (unindexed); ``means``: ``(K, 4)`` mean orientations; ``offsets``: ``(S,)`` float, position of each
    adjacent slice in the gap coordinate (0 below, 1 above)."""

    labels: torch.Tensor
    means: torch.Tensor
    positions: torch.Tensor


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
        order = torch.argsort(lab.flatten(), stable=True)
        counts = torch.bincount(lab.flatten().clamp_min(-1) + 1, minlength=n + 1).tolist()
        members = torch.split(order, counts)[1:]  # voxel indices of grain 0, 1, ...
        qf = q.reshape(-1, 4)
        means.extend(mean_orientation(qf[m], symmetry).reshape(4).to(q.dtype) for m in members)
        all_labels.append(torch.where(lab >= 0, lab + offset, lab))
        offset += n
        positions.append(pos)
    dev = slices[0][0].device
    M = torch.stack(means) if means else torch.zeros(0, 4, device=dev)
    return NeighbourGrains(torch.stack(all_labels), M, torch.tensor(positions, dtype=torch.float32, device=dev))


def _shift(lab: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[y, x] = lab[y + dy, x + dx]`` (``-1`` outside)."""
    Y, X = lab.shape
    out = torch.full_like(lab, -1)
    ys, yd = (slice(0, Y - dy), slice(dy, Y)) if dy >= 0 else (slice(-dy, Y), slice(0, Y + dy))
    xs, xd = (slice(0, X - dx), slice(dx, X)) if dx >= 0 else (slice(-dx, X), slice(0, X + dx))
    out[ys, xs] = lab[yd, xd]
    return out


def project(guess: torch.Tensor, positions, grains: NeighbourGrains, symmetry: str, radius: int = 3,
            spatial_weight: float = 1.0, z_weight: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Project guesses ``(G, Y, X, 4)`` for the missing slices at gap positions ``positions`` (``G``
    floats in ``(0, 1)``; 0 is the slice below) onto the neighbouring grains.

    Returns ``(quaternions (G, Y, X, 4), grain index (G, Y, X))``; the index is into ``grains.means``, -1
    where no candidate lies within ``radius`` (those voxels keep their guess).
    """
    G, Y, X, _ = guess.shape
    means = grains.means.to(guess)
    pos = torch.as_tensor(positions, dtype=torch.float32, device=guess.device).reshape(G)
    best_cost = torch.full((G, Y, X), float("inf"), device=guess.device)
    best = torch.full((G, Y, X), -1, dtype=torch.long, device=guess.device)
    if len(means) == 0:
        return guess.clone(), best
    offs = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if dy * dy + dx * dx <= radius * radius]
    offs.sort(key=lambda o: o[0] ** 2 + o[1] ** 2)
    for s in range(grains.labels.shape[0]):
        zpen = z_weight * (pos - grains.positions[s].to(pos)).abs()  # (G,)
        for dy, dx in offs:
            cand = _shift(grains.labels[s], dy, dx)  # (Y, X)
            ok = cand >= 0
            if not bool(ok.any()):
                continue
            m = means[cand.clamp_min(0)]  # (Y, X, 4)
            cost = misorientation_deg(guess, m.unsqueeze(0), symmetry)  # (G, Y, X)
            cost = cost + spatial_weight * (dy * dy + dx * dx) ** 0.5 + zpen[:, None, None]
            cost = torch.where(ok.unsqueeze(0), cost, torch.full_like(cost, float("inf")))
            better = cost < best_cost
            best_cost = torch.where(better, cost, best_cost)
            best = torch.where(better, cand.unsqueeze(0).expand_as(best), best)
    out = torch.where((best >= 0).unsqueeze(-1), means[best.clamp_min(0)], guess)
    return out, best
