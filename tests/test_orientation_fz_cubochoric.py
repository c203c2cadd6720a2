"""Homochoric/cubochoric maps vs orix and round trips; fundamental-zone reduction vs orix; symmetry-aware mean."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ebsd.errors import EBSDValueError
from ebsd.orientation import (
    CUBOCHORIC_HALF_EDGE,
    HOMOCHORIC_RADIUS,
    axis_angle_to_quat,
    cubochoric_to_homochoric,
    cubochoric_to_quat,
    get_symmetry,
    homochoric_to_cubochoric,
    homochoric_to_quat,
    mean_orientation,
    misorientation_angle,
    positive_hemisphere,
    quat_multiply,
    quat_to_cubochoric,
    quat_to_homochoric,
    reduce_to_fundamental_zone,
)

pytest.importorskip("orix")
from orix.quaternion import Orientation  # noqa: E402
from orix.quaternion import _conversions as oconv  # noqa: E402
from orix.quaternion import symmetry as osym  # noqa: E402


def rand_q(n, seed):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 0] < 0] *= -1
    return q


def ho2cu_reference(ho: np.ndarray) -> np.ndarray:
    """Independent float64 numpy transcription of Rosca et al. (2014) / EMsoft ``Lambert3DBallToCube``
    (pyramid selection, inverse M3, inverse M2 with acos, inverse M1), one point at a time."""
    R1 = (3 * np.pi / 4) ** (1 / 3)
    beta = np.pi ** (5 / 6) / 6 ** (1 / 6) / 2  # EMsoft LPs%beta
    r2 = np.sqrt(2.0)
    sc = (np.pi / 6) ** (1 / 6)
    pref = np.sqrt(6 / np.pi)
    out = np.zeros_like(ho)
    for i, xyz in enumerate(ho):
        rs = np.linalg.norm(xyz)
        if rs == 0:
            continue
        ax, ay, az = np.abs(xyz)
        if az >= ax and az >= ay:
            order = [0, 1, 2]
        elif ax >= ay:
            order = [1, 2, 0]
        else:
            order = [2, 0, 1]
        s = xyz[order]
        x3 = s * np.sqrt(2 * rs / (rs + abs(s[2])))
        qxy = x3[0] ** 2 + x3[1] ** 2
        sx = 1.0 if x3[0] >= 0 else -1.0
        sy = 1.0 if x3[1] >= 0 else -1.0
        if qxy == 0:
            t1 = t2 = 0.0
        elif abs(x3[1]) <= abs(x3[0]):
            q2 = qxy + x3[0] ** 2
            q = (beta / r2 / R1) * np.sqrt(q2 * qxy / (q2 - abs(x3[0]) * np.sqrt(q2)))
            tt = np.clip((x3[1] ** 2 + abs(x3[0]) * np.sqrt(q2)) / r2 / qxy, -1, 1)
            t1, t2 = q * sx, q * sy * np.arccos(tt) / (np.pi / 12)
        else:
            q2 = qxy + x3[1] ** 2
            q = (beta / r2 / R1) * np.sqrt(q2 * qxy / (q2 - abs(x3[1]) * np.sqrt(q2)))
            tt = np.clip((x3[0] ** 2 + abs(x3[1]) * np.sqrt(q2)) / r2 / qxy, -1, 1)
            t1, t2 = q * sx * np.arccos(tt) / (np.pi / 12), q * sy
        cube = np.array([t1, t2, np.sign(s[2]) * rs / pref]) / sc
        back = np.empty(3)
        back[order] = cube
        out[i] = back
    return out


def test_homochoric_equals_orix():
    q = rand_q(5000, 0)
    h = quat_to_homochoric(q)
    assert np.abs(h - oconv.qu2ho(q)).max() < 1e-12
    assert np.linalg.norm(h, axis=1).max() <= HOMOCHORIC_RADIUS + 1e-12
    ax = oconv.ho2ax(h)
    ref = positive_hemisphere(torch.from_numpy(oconv.ax2qu(ax[:, :3], ax[:, 3]))).numpy()
    back = homochoric_to_quat(h)
    assert np.abs(back - ref).max() < 1e-9
    assert np.abs(back - q).max() < 1e-12  # tighter than orix's polynomial fit alone


def test_cubochoric_equals_orix_and_published_inverse():
    rng = np.random.default_rng(1)
    cu = rng.uniform(-1, 1, size=(3000, 3)) * CUBOCHORIC_HALF_EDGE
    h = cubochoric_to_homochoric(cu)
    assert np.abs(h - oconv.cu2ho(cu)).max() < 1e-12
    assert np.abs(homochoric_to_cubochoric(h) - cu).max() < 1e-12
    assert np.abs(homochoric_to_cubochoric(h) - ho2cu_reference(h)).max() < 1e-7  # acos in the reference
    # quaternion <-> cubochoric (orix: cu2ho -> ho2ax -> ax2qu)
    ax = oconv.ho2ax(oconv.cu2ho(cu))
    qref = positive_hemisphere(torch.from_numpy(oconv.ax2qu(ax[:, :3], ax[:, 3]))).numpy()
    assert np.abs(cubochoric_to_quat(cu) - qref).max() < 1e-9


def test_cubochoric_round_trips_any_shape_and_float32():
    q = torch.from_numpy(rand_q(4000, 2)).reshape(2, 5, 400, 4)
    c = quat_to_cubochoric(q)
    assert c.shape == (2, 5, 400, 3)
    assert c.abs().max().item() <= CUBOCHORIC_HALF_EDGE + 1e-12
    assert torch.allclose(cubochoric_to_quat(c), q, atol=1e-12)
    c32 = quat_to_cubochoric(q.float())
    assert c32.dtype == torch.float32
    assert (cubochoric_to_quat(c32).double() - q).abs().max().item() < 5e-6
    # q and -q map to the same point; special points
    assert torch.allclose(quat_to_cubochoric(-q), c, atol=1e-12)
    special = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0], [0.5, 0.5, 0.5, 0.5],
                            [math.sqrt(0.5), 0, math.sqrt(0.5), 0]], dtype=torch.float64)
    cs = quat_to_cubochoric(special)
    assert torch.allclose(cs[0], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(cs[2], torch.tensor([0, 0, CUBOCHORIC_HALF_EDGE], dtype=torch.float64))
    back = cubochoric_to_quat(cs)
    assert torch.allclose((back * special).sum(-1).abs(), torch.ones(5, dtype=torch.float64), atol=1e-12)


def test_cubochoric_is_equal_volume():
    """Uniform random rotations fill the cube uniformly: each octant-of-octant cell holds 1/64 of them."""
    rng = np.random.default_rng(3)
    q = rng.normal(size=(200_000, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    c = quat_to_cubochoric(q) / CUBOCHORIC_HALF_EDGE  # in [-1, 1]^3
    cells = np.clip(((c + 1) * 2).astype(int), 0, 3)
    counts = np.bincount(cells[:, 0] * 16 + cells[:, 1] * 4 + cells[:, 2], minlength=64)
    expected = len(q) / 64
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)


@pytest.mark.parametrize("laue, osy", [("m-3m", osym.Oh), ("6/mmm", osym.D6h), ("-3m", osym.D3d),
                                       ("mmm", osym.D2h), ("m-3", osym.Th), ("4/m", osym.C4h)])
def test_fundamental_zone_equals_orix(laue, osy):
    o = Orientation.random(4000, osy)
    ref = o.reduce().data
    ours = reduce_to_fundamental_zone(torch.from_numpy(o.data), laue)
    dots = (ours.numpy() * ref).sum(-1)
    assert np.abs(np.abs(dots) - 1).max() < 1e-9  # the same rotation
    assert (ours[:, 0] >= 0).all()
    assert misorientation_angle(ours, torch.from_numpy(o.data), laue).abs().max().item() < 1e-7  # equivalent
    # idempotent
    assert torch.allclose(reduce_to_fundamental_zone(ours, laue), ours, atol=1e-12)


def test_mean_orientation_undoes_symmetry_scrambling():
    g = torch.Generator().manual_seed(0)
    sym = get_symmetry("m-3m")
    q0 = torch.tensor([0.9, 0.1, 0.3, 0.2], dtype=torch.float64)
    q0 = q0 / q0.norm()
    axis = torch.randn(300, 3, generator=g, dtype=torch.float64)
    ang = torch.rand(300, generator=g, dtype=torch.float64) * math.radians(3)
    clean = quat_multiply(axis_angle_to_quat(axis, ang), q0)
    plain = clean.mean(0)
    plain = plain / plain.norm()
    k = torch.randint(0, sym.order, (300,), generator=g)
    sign = torch.where(torch.rand(300, 1, generator=g) < 0.5, -1.0, 1.0).double()
    scrambled = quat_multiply(sym.operators[k], clean) * sign
    m = mean_orientation(scrambled, sym)
    assert misorientation_angle(m, plain, sym).item() < 1e-9
    assert torch.allclose(m, reduce_to_fundamental_zone(m, sym))
    # weights: a weight of zero removes an orientation
    w = torch.ones(300, dtype=torch.float64)
    w[:150] = 0
    mw = mean_orientation(scrambled, sym, weights=w)
    sub = clean[150:].mean(0)
    assert misorientation_angle(mw, sub / sub.norm(), sym).item() < 1e-9
    # batched over groups with dim, numpy in / out
    stacked = torch.stack((scrambled, scrambled.flip(0)), dim=1)  # (300, 2, 4)
    mb = mean_orientation(stacked.numpy(), "Oh", dim=0)
    assert isinstance(mb, np.ndarray) and mb.shape == (2, 4)
    assert misorientation_angle(torch.from_numpy(mb), m, sym).max().item() < 1e-9
    with pytest.raises(EBSDValueError):
        mean_orientation(scrambled, sym, dim=-1)
