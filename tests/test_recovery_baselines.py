"""Projection step and baselines of slice recovery."""
from __future__ import annotations

import math

import pytest
import torch

from ebsd.orientation import get_symmetry, quat_multiply
from ebsd.recovery import nearest_slice, project_nearest, slerp_neighbours
from ebsd.recovery._common import misorientation_deg
from ebsd.recovery.baselines import adjacent_grains, slerp
from ebsd.recovery.projection import project
from ebsd.synthetic import synthetic_volume

from _recovery_helpers import equal_up_to_sign, in_set


@pytest.fixture(scope="module")
def vol_truth():
    return synthetic_volume((10, 32, 32), 7.0, "m-3m", 11, noise_deg=0.5, return_truth=True)


def _rot(axis, deg):
    axis = torch.tensor(axis, dtype=torch.float32)
    axis = axis / axis.norm()
    h = math.radians(deg) / 2
    return torch.cat([torch.tensor([math.cos(h)]), math.sin(h) * axis])


def test_projection_outputs_only_neighbour_grain_orientations(vol_truth):
    vol, _ = vol_truth
    grains = adjacent_grains(vol, (4, 5), 3, 6)
    assert len(grains.means) >= 4
    g = torch.Generator().manual_seed(0)
    guess = torch.randn(2, 32, 32, 4, generator=g)
    guess = guess / guess.norm(dim=-1, keepdim=True)
    out, idx = project(guess, [1 / 3, 2 / 3], grains, "m-3m")
    assert (idx >= 0).all()
    assert in_set(out, grains.means).all()
    # and each chosen grain is present near that voxel in slice 3 or slice 6
    Y = torch.arange(32)
    near = torch.zeros_like(idx, dtype=torch.bool)
    for s in range(2):
        lab = grains.labels[s]
        for dy in range(-3, 4):
            for dx in range(-3, 4):
                if dy * dy + dx * dx > 9:
                    continue
                yy = (Y + dy).clamp(0, 31)
                xx = (Y + dx).clamp(0, 31)
                near |= lab[yy][:, xx].unsqueeze(0) == idx
    assert near.all()


def test_grain_means_are_real_orientations_of_adjacent_slices(vol_truth):
    vol, truth = vol_truth
    grains = adjacent_grains(vol, (4, 5), 3, 6)
    ids = set(truth.grain_ids[3].unique().tolist()) | set(truth.grain_ids[6].unique().tolist())
    gq = truth.grain_quaternions[sorted(ids)]
    best = misorientation_deg(grains.means[:, None], gq[None], "m-3m").amin(1)
    assert best.max() < 3.0  # every mean is (within noise) the orientation of a grain there


def test_projection_of_the_truth_recovers_it(vol_truth):
    vol, truth = vol_truth
    grains = adjacent_grains(vol, (4, 4), 3, 5)
    clean = truth.clean_quaternions[4]
    out, _ = project(clean[None], [0.5], grains, "m-3m")
    err = misorientation_deg(out[0], clean, "m-3m")
    assert err.median() < 2.0


def test_slerp_of_identical_neighbours_returns_them(vol_truth):
    vol, _ = vol_truth
    v = vol.copy()
    v.quaternions[6] = v.quaternions[4]
    new = slerp_neighbours(v, [5])
    assert equal_up_to_sign(new.quaternions[5], v.quaternions[4], 1e-4).all()
    assert new.metadata["recovered_slices"] == [5]
    assert new.valid[5].all()


def test_slerp_is_symmetry_aware_and_geodesic():
    q0 = _rot([1, 2, 3], 17.0).expand(5, 4)
    ops = get_symmetry("m-3m").operators.to(q0)
    step = _rot([0, 0, 1], 20.0)
    q1 = quat_multiply(step, q0)
    q1_eq = -quat_multiply(ops[5], q1)  # another representative of the same orientation
    mid = slerp(q0, q1_eq, 0.5, "m-3m")
    assert torch.allclose(misorientation_deg(mid, q0, "m-3m"), torch.full((5,), 10.0), atol=0.05)
    assert torch.allclose(misorientation_deg(mid, q1, "m-3m"), torch.full((5,), 10.0), atol=0.05)
    assert torch.allclose(slerp(q0, q1_eq, 0.0, "m-3m"), q0, atol=1e-6)


def test_nearest_slice_copies_the_nearest(vol_truth):
    vol, _ = vol_truth
    new = nearest_slice(vol, [4, 5, 6])
    assert torch.equal(new.quaternions[4], vol.quaternions[3])
    assert torch.equal(new.quaternions[5], vol.quaternions[3])  # tie -> below
    assert torch.equal(new.quaternions[6], vol.quaternions[7])
    assert torch.equal(new.quaternions[2], vol.quaternions[2])
    edge = nearest_slice(vol, [0])
    assert torch.equal(edge.quaternions[0], vol.quaternions[1])


def test_project_nearest_gives_grain_means(vol_truth):
    vol, _ = vol_truth
    new = project_nearest(vol, [5])
    grains = adjacent_grains(vol, (5, 5), 4, 6)
    assert in_set(new.quaternions[5], grains.means).all()
    assert new.metadata["recovery_method"] == "project_nearest"


def test_fast_alignment_matches_align_to_reference():
    from ebsd.orientation import align_to_reference
    from ebsd.recovery._common import symmetry_operators
    from ebsd.recovery.projection import _align

    g = torch.Generator().manual_seed(5)
    q = torch.randn(300, 4, generator=g, dtype=torch.float64)
    ref = torch.randn(300, 4, generator=g, dtype=torch.float64)
    q, ref = q / q.norm(dim=-1, keepdim=True), ref / ref.norm(dim=-1, keepdim=True)
    ops = symmetry_operators("m-3m", q)
    assert torch.allclose(_align(q, ref, ops), align_to_reference(q, ref, "m-3m"), atol=1e-10)


def test_cost_aggregation_removes_isolated_flips():
    """Slice below: all grain A; slice above: all grain B; the guess is A except for isolated voxels
    that look like B. Without aggregation those voxels take B; with a 3 x 3 window (8 of 9 voxels vote A)
    every voxel takes A. Positions at the gap's middle, so the z penalty is the same for both."""
    from ebsd.recovery.projection import NeighbourGrains

    A, B = _rot([1, 2, 3], 10.0), _rot([0, 1, 1], 40.0)
    labels = torch.stack([torch.zeros(12, 12, dtype=torch.long), torch.ones(12, 12, dtype=torch.long)])
    grains = NeighbourGrains(labels, torch.stack([A, B]), torch.tensor([0.0, 1.0]))
    flip = torch.zeros(12, 12, dtype=torch.bool)
    flip[1::4, 1::4] = True  # isolated voxels, none adjacent to another
    guess = torch.where(flip[..., None], B, A)[None]
    _, idx0 = project(guess, [0.5], grains, "m-3m", radius=1, spatial_weight=32.0, z_weight=10.0, smooth=0)
    assert torch.equal(idx0[0], flip.long())
    out1, idx1 = project(guess, [0.5], grains, "m-3m", radius=1, spatial_weight=32.0, z_weight=10.0, smooth=1)
    assert (idx1 == 0).all()
    assert equal_up_to_sign(out1, A, 1e-5).all()
