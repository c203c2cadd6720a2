"""The projection step on hand-built cases (grains of the slices next to a gap; their means are known)."""
from __future__ import annotations

import math

import pytest
import torch

from ebsd.recovery.projection import neighbour_grains, project

from _recovery_helpers import equal_up_to_sign


def _rot(axis, deg):
    a = torch.tensor(axis, dtype=torch.float32)
    a = a / a.norm()
    h = math.radians(deg) / 2
    return torch.cat([torch.tensor([math.cos(h)]), a * math.sin(h)])


A, B = _rot([0, 0, 1], 10), _rot([1, 0, 0], 35)
Y, X = 6, 7


def test_projection_picks_the_grain_of_the_slice_above():
    """Below: grain A everywhere; above: grain B. A guess equal to B is projected onto B's mean (the upper
    slice's grain indices are offset after the lower slice's)."""
    lo, hi = A.expand(Y, X, 4).clone(), B.expand(Y, X, 4).clone()
    g = neighbour_grains([(lo, None, 0.0), (hi, None, 1.0)], "m-3m")
    assert g.means.shape == (2, 4) and g.labels[1].min() == 1
    out, idx = project(B.expand(1, Y, X, 4).clone(), [0.5], g, "m-3m", radius=1)
    assert (idx == 1).all() and equal_up_to_sign(out[0], B.expand(Y, X, 4), 1e-5).all()
    out, idx = project(A.expand(1, Y, X, 4).clone(), [0.5], g, "m-3m", radius=1)
    assert (idx == 0).all() and equal_up_to_sign(out[0], A.expand(Y, X, 4), 1e-5).all()


def test_projection_at_a_volume_edge_with_one_grain():
    """Only the slice below exists (a gap at the top of the volume) and it is one grain: every voxel gets
    that grain's mean, never the guess."""
    lo = A.expand(Y, X, 4).clone()
    g = neighbour_grains([(lo, None, 0.0)], "m-3m")
    assert g.means.shape == (1, 4)
    guess = _rot([0, 1, 0], 3).expand(1, Y, X, 4).clone()
    out, idx = project(guess, [1.0], g, "m-3m", radius=2)
    assert (idx == 0).all() and equal_up_to_sign(out[0], A.expand(Y, X, 4), 1e-5).all()


@pytest.mark.parametrize("weight", [10.0, 5.0])
def test_projection_in_plane_penalty_is_the_euclidean_distance(weight):
    """One adjacent slice: grain A everywhere but one voxel of grain B (12 deg away) in the middle; every guess is
    B. By the documented cost, B costs ``weight * d`` (``d``: Euclidean distance to B's voxel) and A costs 12 deg
    (its own voxel, d = 0; at B's voxel A's nearest voxel is 1 away), so a voxel takes B exactly when
    ``weight * d < 12``. The expected map is worked out here from that formula: ``weight`` 10 keeps B on the
    4 edge neighbours but not the diagonals (d = 1.41 -> 14.1 deg), 5 keeps it up to d = 2.24 but not d = 2.83."""
    n, c = 7, 3
    lo = A.expand(n, n, 4).clone()
    B0 = _rot([0, 0, 1], 22)  # 12 deg from A (10 deg about z): B0 = A rotated by 12 deg about the same axis
    lo[c, c] = B0
    g = neighbour_grains([(lo, None, 0.0)], "m-3m")
    assert g.means.shape == (2, 4)
    b = int(g.labels[0, c, c])
    out, idx = project(B0.expand(1, n, n, 4).clone(), [0.5], g, "m-3m", radius=3, spatial_weight=weight)
    expect_b = torch.tensor([[weight * math.hypot(y - c, x - c) < 12.0 for x in range(n)] for y in range(n)])
    assert expect_b.sum() == (5 if weight == 10.0 else 21)
    assert torch.equal(idx[0] == b, expect_b)
    assert equal_up_to_sign(out[0][expect_b], B0.expand(n, n, 4)[expect_b], 1e-5).all()
    assert equal_up_to_sign(out[0][~expect_b], A.expand(n, n, 4)[~expect_b], 1e-5).all()


def test_projection_reaches_exactly_radius_and_no_farther():
    """Candidates lie within ``radius`` voxels (Euclidean, the circle included): one indexed voxel at (0, 0) in the
    only adjacent slice, radius 2: (0, 2) and (2, 0) (distance exactly 2) take its grain, (1, 2) (sqrt 5) and
    (2, 2) (sqrt 8) find no candidate and keep their guess (index -1)."""
    n = 5
    lo = A.expand(n, n, 4).clone()
    valid = torch.zeros(n, n, dtype=torch.bool)
    valid[0, 0] = True
    g = neighbour_grains([(lo, valid, 0.0)], "m-3m")
    assert g.means.shape == (1, 4)
    guess = B.expand(1, n, n, 4).clone()
    out, idx = project(guess, [0.5], g, "m-3m", radius=2)
    expect = torch.tensor([[math.hypot(y, x) <= 2 for x in range(n)] for y in range(n)])
    assert torch.equal(idx[0] == 0, expect) and bool((idx[0][~expect] == -1).all())
    assert equal_up_to_sign(out[0][~expect], B.expand(n, n, 4)[~expect], 0).all()
    assert equal_up_to_sign(out[0][expect], A.expand(n, n, 4)[expect], 1e-5).all()


def test_an_unindexed_adjacent_slice_contributes_no_grains():
    """The slice below is entirely unindexed (no grain), the slice above is one grain B: the grain table holds
    B's mean only and every voxel of the gap takes it."""
    lo, hi = A.expand(Y, X, 4).clone(), B.expand(Y, X, 4).clone()
    g = neighbour_grains([(lo, torch.zeros(Y, X, dtype=torch.bool), 0.0), (hi, None, 1.0)], "m-3m")
    assert g.means.shape == (1, 4) and bool((g.labels[0] == -1).all()) and bool((g.labels[1] == 0).all())
    assert equal_up_to_sign(g.means[0], B, 1e-5)
    out, idx = project(A.expand(1, Y, X, 4).clone(), [0.5], g, "m-3m", radius=1)
    assert (idx == 0).all() and equal_up_to_sign(out[0], B.expand(Y, X, 4), 1e-5).all()


def test_neighbour_grains_default_threshold_is_5_degrees():
    """Grains of an adjacent slice are split at the default 5 deg: halves 7 deg apart are two grains, halves 3 deg
    apart are one (the segmentation threshold of ``neighbour_grains``)."""
    for deg, n in ((7.0, 2), (3.0, 1)):
        q = A.expand(Y, X, 4).clone()
        q[:, X // 2:] = _rot([0, 0, 1], 10 + deg)  # A is 10 deg about z
        g = neighbour_grains([(q, None, 0.0)], "m-3m")
        assert g.means.shape == (n, 4), deg


def test_projection_default_weights_are_1_deg_per_voxel_and_2_deg_per_gap():
    """The documented cost with its defaults (spatial_weight 1 deg per voxel, z_weight 2 deg per gap fraction), on
    grains A and B = A turned 1.2 deg further (segmented at 0.5 deg so they stay apart); every guess is B.
    In-plane: one B voxel amid A: B costs d, A costs 1.2, so B is taken up to d = 1 (not the diagonals, 1.41).
    Across the gap: A below, B above; at gap position p, A costs 1.2 + 2p and B costs 2(1 - p): B from p > 0.2."""
    n, c = 7, 3
    B1 = _rot([0, 0, 1], 11.2)
    lo = A.expand(n, n, 4).clone()
    lo[c, c] = B1
    g = neighbour_grains([(lo, None, 0.0)], "m-3m", threshold_deg=0.5)
    assert g.means.shape == (2, 4)
    b = int(g.labels[0, c, c])
    _, idx = project(B1.expand(1, n, n, 4).clone(), [0.5], g, "m-3m", radius=3)
    expect_b = torch.tensor([[math.hypot(y - c, x - c) < 1.2 for x in range(n)] for y in range(n)])
    assert torch.equal(idx[0] == b, expect_b)
    g2 = neighbour_grains([(A.expand(Y, X, 4).clone(), None, 0.0), (B1.expand(Y, X, 4).clone(), None, 1.0)], "m-3m",
                          threshold_deg=0.5)
    _, idx = project(B1.expand(2, Y, X, 4).clone(), [0.15, 0.25], g2, "m-3m", radius=1)
    assert (idx[0] == 0).all() and (idx[1] == 1).all()


def test_projection_without_any_grain_keeps_the_guess_with_index_minus_1():
    """Both adjacent slices unindexed: no grain at all, so every voxel keeps its guess and its index is -1 (as
    documented for voxels without a candidate)."""
    none = torch.zeros(Y, X, dtype=torch.bool)
    g = neighbour_grains([(A.expand(Y, X, 4).clone(), none, 0.0), (B.expand(Y, X, 4).clone(), none, 1.0)], "m-3m")
    assert g.means.shape == (0, 4)
    guess = _rot([0, 1, 0], 3).expand(2, Y, X, 4).clone()
    out, idx = project(guess, [0.3, 0.6], g, "m-3m")
    assert torch.equal(out, guess) and idx.shape == (2, Y, X) and bool((idx == -1).all())
