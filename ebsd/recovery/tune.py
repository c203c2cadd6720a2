"""Choose the projection step's weights on validation volumes (never the benchmark's held-out seeds).

The projection cost (:mod:`ebsd.recovery.projection`) has four knobs: ``spatial_weight`` (deg per voxel
of in-plane distance), ``z_weight`` (deg per gap fraction), ``radius`` and ``smooth`` (cost aggregation
radius). A large ``spatial_weight`` makes the step pick the grain at the same position in the nearer slice (the "projection of nearest" baseline);
a small one trusts the network. :func:`tune_projection` runs the network once per validation volume, then
scores every grid point by the mean misorientation to the noise-free truth on the recovered voxels (and
reports the grain-boundary F1 of :mod:`ebsd.recovery.metrics` beside it).
Projection runs on the CPU.
"""
from __future__ import annotations

import itertools

import torch

from ._common import gap_neighbours, gap_position, misorientation_deg
from .api import DEFAULT_INFERENCE, predict_slices
from .baselines import adjacent_grains
from .data import VALIDATION_SEED_BASE
from .metrics import boundary_counts, f1
from .projection import project

DEFAULT_GRID = {"spatial_weight": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0], "z_weight": [0.0, 2.0, 5.0, 10.0, 20.0],
                "radius": [2, 3], "smooth": [0]}


def tune_projection(net, n_volumes: int = 6, shape=(16, 64, 64), grain_sizes=(6.0, 10.0, 16.0), gaps=(1, 3),
                    grid: dict | None = None, settings: dict | None = None) -> tuple[dict, list[dict]]:
    """Return ``(best, results)``: the grid point with the lowest mean misorientation (deg) and every
    point's score. Validation seeds are ``VALIDATION_SEED_BASE + k``."""
    from ..synthetic import synthetic_volume

    grid = grid or DEFAULT_GRID
    cfg = dict(DEFAULT_INFERENCE, **getattr(net, "inference_settings", {}), **(settings or {}))
    net.eval()
    dev = next(net.parameters()).device
    cases = []
    for k in range(n_volumes):
        gs, gap = grain_sizes[k % len(grain_sizes)], gaps[k % len(gaps)]
        z0 = shape[0] // 2 - gap // 2
        missing = list(range(z0, z0 + gap))
        vol, truth = synthetic_volume(shape, gs, "m-3m", VALIDATION_SEED_BASE + k, twins=0.3, noise_deg=1.0,
                                      unindexed_fraction=0.01, missing_slices=missing, return_truth=True)
        run = (missing[0], missing[-1])
        guess = predict_slices(net, vol.to(dev), run, set(missing), cfg).float().cpu()
        lo, hi = gap_neighbours(run, shape[0], set(missing))
        pos = [gap_position(z, lo, hi) for z in missing]
        cases.append((guess, pos, adjacent_grains(vol, run, lo, hi, cfg["threshold_deg"]), vol.symmetry,
                      truth.clean_quaternions[missing], truth.grain_ids[missing]))
    results = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values))
        err, n, bc = 0.0, 0, [0, 0, 0, 0]
        for guess, pos, grains, sym, clean, ids in cases:
            out, _ = project(guess, pos, grains, sym, **point)
            e = misorientation_deg(out, clean, sym)
            err, n = err + float(e.sum()), n + e.numel()
            for i in range(out.shape[0]):
                bc = [a + b for a, b in zip(bc, boundary_counts(out[i], ids[i], sym))]
        results.append({**point, "mean_misorientation_deg": err / n, "boundary_f1": f1(bc)})
    best = min(results, key=lambda r: r["mean_misorientation_deg"])
    return {k: best[k] for k in grid}, results
