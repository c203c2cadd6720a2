"""The projection step on hand-built cases (grains of the slices next to a gap; their means are known)."""
from __future__ import annotations

import math

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
