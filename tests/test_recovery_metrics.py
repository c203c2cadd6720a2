"""Benchmark metrics of slice recovery, against hand-counted references."""
from __future__ import annotations

import math

import torch

from ebsd.recovery.metrics import boundary_counts, f1, misorientation_stats, pair_boundaries


def _quat_z(deg):
    h = math.radians(deg) / 2
    return torch.tensor([math.cos(h), 0.0, 0.0, math.sin(h)])


def test_pair_boundaries_and_counts_by_hand():
    ids = torch.zeros(4, 5, dtype=torch.long)
    ids[:, 3:] = 1  # one vertical boundary between columns 2 and 3 -> pixels (y, 2) for every y
    tb = pair_boundaries(ids)
    assert tb.sum() == 4 and tb[:, 2].all()
    # prediction: the boundary one column too far left, plus a 30 deg grain in the corner
    q = torch.stack([_quat_z(0.0)] * 20).reshape(4, 5, 4).clone()
    q[:, 2:] = _quat_z(40.0)
    q[0, 0] = _quat_z(30.0)  # boundaries at (0, 0) (right neighbour differs)
    pb = pair_boundaries(q, "m-3m")
    expected = torch.zeros(4, 5, dtype=torch.bool)
    expected[:, 1] = True
    expected[0, 0] = True
    assert torch.equal(pb, expected)
    assert boundary_counts(q, ids, "m-3m", tol=0) == (0, 5, 0, 4)
    # within one pixel: the 4 shifted pixels match (and (0, 0) does not: column 2 is 2 away), all true ones do
    assert boundary_counts(q, ids, "m-3m", tol=1) == (4, 5, 4, 4)
    assert math.isclose(f1((4, 5, 4, 4)), 2 * 0.8 * 1.0 / 1.8)
    assert f1((0, 5, 0, 4)) == 0.0


def test_misorientation_stats():
    a = torch.stack([_quat_z(0.0)] * 3)
    b = torch.stack([_quat_z(2.0), _quat_z(10.0), _quat_z(90.0)])  # 90 deg about z is a cubic symmetry
    s = misorientation_stats(a, b, "m-3m")
    assert s["n"] == 3 and s["within5"] == 2
    assert math.isclose(s["err_sum"], 12.0, abs_tol=1e-2)
