"""Quaternion algebra, symmetry groups and misorientation angles, against orix on random orientations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ebsd.errors import EBSDValueError
from ebsd.orientation import (
    axis_angle_to_quat,
    euler_to_quat,
    get_symmetry,
    matrix_to_quat,
    misorientation,
    misorientation_angle,
    positive_hemisphere,
    quat_conjugate,
    quat_multiply,
    quat_normalize,
    quat_rotate,
    quat_to_axis_angle,
    quat_to_euler,
    quat_to_matrix,
    symmetry_equivalents,
)

orix = pytest.importorskip("orix")
from orix.quaternion import Orientation, Quaternion, Rotation  # noqa: E402
from orix.quaternion import symmetry as osym  # noqa: E402
from orix.vector import Vector3d  # noqa: E402

LAUE = {
    "m-3m": osym.Oh, "6/mmm": osym.D6h, "4/mmm": osym.D4h, "-3m": osym.D3d, "mmm": osym.D2h, "2/m": osym.C2h,
    "-1": osym.Ci, "m-3": osym.Th, "4/m": osym.C4h, "-3": osym.S6, "6/m": osym.C6h,
}
ONE_DEG = math.pi / 180


def rand_q(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return positive_hemisphere(q / q.norm(dim=-1, keepdim=True)).to(dtype)


# ------------------------------------------------------------------------------------------ quaternions
def test_product_conjugate_rotate_matrix_match_orix():
    p, q = rand_q(200, 1), rand_q(200, 2)
    ref = (Quaternion(p.numpy()) * Quaternion(q.numpy())).data
    assert np.allclose(quat_multiply(p, q).numpy(), ref, atol=1e-14)
    assert np.allclose(quat_conjugate(q).numpy(), (~Quaternion(q.numpy())).data, atol=0)
    v = torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ref_v = (Rotation(q.numpy()) * Vector3d(v.numpy())).data
    assert np.allclose(quat_rotate(q, v).numpy(), ref_v, atol=1e-13)
    ref_m = Rotation(q.numpy()).to_matrix()
    m = quat_to_matrix(q)
    assert np.allclose(m.numpy(), ref_m, atol=1e-13)
    assert torch.allclose(m @ v[..., None], quat_rotate(q, v)[..., None], atol=1e-13)
    assert torch.allclose(matrix_to_quat(m), q, atol=1e-12)


def test_matrix_to_quat_near_pi_and_identity():
    q = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0.6, 0.8], [1e-9, 0.6, 0.8, 0]], dtype=torch.float64)
    q = quat_normalize(q)
    back = matrix_to_quat(quat_to_matrix(q))
    assert torch.allclose((back * q).sum(-1).abs(), torch.ones(4, dtype=torch.float64), atol=1e-12)


def test_axis_angle_round_trip_and_orix():
    axis = torch.randn(100, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    angle = torch.rand(100, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * math.pi
    q = axis_angle_to_quat(axis, angle)
    ref = Rotation.from_axes_angles(axis.numpy(), angle.numpy()).data
    assert np.allclose(q.numpy(), ref, atol=1e-14)
    ax2, an2 = quat_to_axis_angle(q)
    assert torch.allclose(an2, angle, atol=1e-12)
    assert torch.allclose(ax2, axis / axis.norm(dim=-1, keepdim=True), atol=1e-10)
    # broadcasting a single axis over many angles, identity gets a unit axis
    q2 = axis_angle_to_quat(torch.tensor([0.0, 0.0, 2.0]), torch.tensor([0.0, math.pi / 2]))
    assert q2.shape == (2, 4)
    ax, an = quat_to_axis_angle(q2)
    assert torch.allclose(ax.norm(dim=-1), torch.ones(2)) and abs(an[1].item() - math.pi / 2) < 1e-6


def test_euler_round_trip_any_leading_shape():
    q = rand_q(60, 6).reshape(3, 4, 5, 4)
    back = euler_to_quat(quat_to_euler(q))
    assert back.shape == q.shape
    assert torch.allclose(back, positive_hemisphere(q), atol=1e-12)


def test_numpy_in_numpy_out():
    q = rand_q(10, 7).numpy()
    out = misorientation_angle(q, q[::-1].copy(), "m-3m")
    assert isinstance(out, np.ndarray) and out.shape == (10,)
    assert isinstance(quat_multiply(torch.from_numpy(q), torch.from_numpy(q)), torch.Tensor)


# ------------------------------------------------------------------------------------------ symmetry
@pytest.mark.parametrize("laue", list(LAUE))
def test_operators_equal_orix_laue_rotations(laue):
    sym = get_symmetry(laue)
    ops = sym.operators.numpy()
    ref = LAUE[laue].laue_proper_subgroup.data
    assert ops.shape == ref.shape
    assert np.allclose(np.abs(ops @ ref.T).max(1), 1.0, atol=1e-12)  # same rotations (q ~ -q)
    assert np.allclose(ops[0], [1, 0, 0, 0]) and np.allclose(np.linalg.norm(ops, axis=1), 1)
    assert sym.name == laue and sym.operators.dtype == torch.float64


@pytest.mark.parametrize(
    "key, laue, proper",
    [
        ("m-3m", "m-3m", "432"), ("432", "m-3m", "432"), ("Oh", "m-3m", "432"), ("O", "m-3m", "432"),
        ("Td", "m-3m", "432"), (43, "m-3m", "432"), ("43", "m-3m", "432"), ("m3m", "m-3m", "432"),
        (62, "6/mmm", "622"), ("622", "6/mmm", "622"), ("D6h", "6/mmm", "622"), ("D6", "6/mmm", "622"),
        (42, "4/mmm", "422"), ("422", "4/mmm", "422"), (32, "-3m", "32"), ("32", "-3m", "32"),
        (22, "mmm", "222"), ("222", "mmm", "222"), (2, "2/m", "2"), ("2", "2/m", "2"), (1, "-1", "1"),
        ("1", "-1", "1"), (23, "m-3", "23"), ("23", "m-3", "23"), (4, "4/m", "4"), (3, "-3", "3"),
        (6, "6/m", "6"), ("6", "6/m", "6"), ("4", "4/m", "4"), ("3", "-3", "3"), (20, "2/m", "121"),
        ("D3d", "-3m", "32"), ("C2h", "2/m", "2"), ("Ci", "-1", "1"), ("Th", "m-3", "23"),
    ],
)
def test_get_symmetry_names_and_tsl_codes(key, laue, proper):
    s = get_symmetry(key)
    assert (s.name, s.proper) == (laue, proper)
    assert get_symmetry(s) is s


def test_get_symmetry_accepts_orix_objects_and_matches_orix_ang_aliases():
    assert get_symmetry(osym.Oh).name == "m-3m"
    assert get_symmetry(osym.D6h).proper == "622"
    from orix.quaternion.symmetry import _EDAX_POINT_GROUP_ALIASES as aliases

    for pg, codes in aliases.items():  # orix's .ang reader: code -> point group
        for code in codes:
            ours = get_symmetry(int(code) if code.isdigit() else code)
            ref = [g for g in osym._groups if g.name == pg][0].laue_proper_subgroup
            assert np.allclose(np.abs(ours.operators.numpy() @ ref.data.T).max(1), 1.0), (code, pg)


@pytest.mark.parametrize("bad", ["m-4m", "", 44, 0, None, 4.0, "hexagonal-ish"])
def test_unknown_symmetry_raises(bad):
    with pytest.raises(EBSDValueError):
        get_symmetry(bad)


# ------------------------------------------------------------------------------------------ misorientation
@pytest.mark.parametrize("laue", list(LAUE))
def test_misorientation_angle_equals_orix(laue):
    n = 3000
    o1 = Orientation.random(n, LAUE[laue])
    o2 = Orientation.random(n, LAUE[laue])
    ref = o1.angle_with(o2)
    ours = misorientation_angle(torch.from_numpy(o1.data), torch.from_numpy(o2.data), laue, backend="torch")
    assert np.abs(np.rad2deg(ours.numpy() - ref)).max() < 1e-4
    # float32 input: still within ~1e-4 deg of orix (float32 inputs cost ~1e-5 deg)
    ours32 = misorientation_angle(torch.from_numpy(o1.data).float(), torch.from_numpy(o2.data).float(), laue)
    assert ours32.dtype == torch.float32
    assert np.abs(np.rad2deg(ours32.double().numpy() - ref)).max() < 2e-4


@pytest.mark.parametrize("laue", ["m-3m", "6/mmm", "4/mmm"])
def test_misorientation_angle_small_angles_and_symmetry_invariance(laue):
    sym = get_symmetry(laue)
    q1 = rand_q(500, 8)
    axis = torch.randn(500, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    true = torch.rand(500, dtype=torch.float64, generator=torch.Generator().manual_seed(10)) * ONE_DEG * 2
    q2 = quat_multiply(axis_angle_to_quat(axis, true), q1)
    # swap q2 to random equivalents with random signs: angle unchanged
    k = torch.randint(0, sym.order, (500,), generator=torch.Generator().manual_seed(11))
    q2e = quat_multiply(sym.operators[k], q2) * torch.where(torch.rand(500, 1) < 0.5, -1.0, 1.0).double()
    for a, b in ((q1, q2), (q1, q2e), (q2e, q1)):
        got = misorientation_angle(a, b, sym)
        assert torch.allclose(got, true, atol=1e-12)
    got32 = misorientation_angle(q1.float(), q2e.float(), sym)
    assert (got32.double() - true).abs().max().item() < 2e-6  # no acos precision loss near 0 in float32


def test_misorientation_angle_broadcasts():
    q1 = rand_q(6, 12)
    q2 = rand_q(5, 13)
    outer = misorientation_angle(q1[:, None], q2[None], "m-3m")
    assert outer.shape == (6, 5)
    assert torch.allclose(outer[2, 3], misorientation_angle(q1[2], q2[3], "m-3m"))
    ref = Orientation(q1.numpy(), osym.Oh).angle_with_outer(Orientation(q2.numpy(), osym.Oh))
    assert np.allclose(outer.numpy(), ref, atol=1e-9)
    assert misorientation_angle(q1[:, None], q2[None], "-3m").shape == (6, 5)


@pytest.mark.parametrize("laue", ["m-3m", "6/mmm", "mmm", "-3m"])
def test_disorientation_quaternion(laue):
    o1 = Orientation.random(800, LAUE[laue])
    o2 = Orientation.random(800, LAUE[laue])
    q1, q2 = torch.from_numpy(o1.data), torch.from_numpy(o2.data)
    d = misorientation(q1, q2, laue)
    assert (d[:, 0] >= 0).all()
    angle = 2 * torch.atan2(d[:, 1:].norm(dim=-1), d[:, 0])
    assert np.abs(np.rad2deg(angle.numpy() - o1.angle_with(o2))).max() < 1e-4
    # d is an equivalent of M = q2 q1^-1 or of its inverse: S_i M S_j^-1 (or inverse) for some i, j
    M = quat_multiply(q2, quat_conjugate(q1))
    eq = symmetry_equivalents(quat_multiply(M, quat_conjugate(get_symmetry(laue).operators)[:, None]), laue)
    eq = eq.reshape(len(get_symmetry(laue).operators), 800, -1, 4)
    dots = (eq * d[None, :, None]).sum(-1).abs().amax(dim=(0, 2))
    eqi = quat_conjugate(eq)
    dots_i = (eqi * d[None, :, None]).sum(-1).abs().amax(dim=(0, 2))
    assert torch.allclose(torch.maximum(dots, dots_i), torch.ones(800, dtype=torch.float64), atol=1e-10)
    if laue == "m-3m":  # Mackenzie's standard triangle
        b, c, dd = d[:, 1], d[:, 2], d[:, 3]
        assert ((b >= c - 1e-9) & (c >= dd - 1e-9) & (dd >= -1e-9)).all()
        assert (angle <= math.radians(62.8) + 1e-9).all()


def test_misorientation_angle_triton_backend_only_for_kernel_symmetries():
    """backend='triton' with a symmetry the kernel does not cover is a named error (not a silent torch run);
    backend='torch' computes it, and None picks torch on CPU."""
    from ebsd import EBSDValueError
    from ebsd.orientation import misorientation_angle

    q = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    r = torch.tensor([[np.cos(0.2), np.sin(0.2), 0.0, 0.0]])
    with pytest.raises(EBSDValueError, match="m-3m and 6/mmm only"):
        misorientation_angle(q, r, "mmm", backend="triton")
    for be in ("torch", None):
        assert float(misorientation_angle(q, r, "mmm", backend=be)[0]) == pytest.approx(0.4, abs=1e-6)


def test_disorientation_near_tie_axis_stays_in_the_standard_triangle_float64():
    """An axis with two components 1e-7 apart: in float64 the tie tolerance (1e-9) must not merge them, so the
    returned axis keeps b >= c >= d exactly (Mackenzie's triangle); the angle is orix's."""
    from ebsd.orientation import misorientation, misorientation_angle

    axis = np.array([1.0, 1.0 - 1e-7, 0.0])
    axis /= np.linalg.norm(axis)
    h = math.radians(30.0) / 2
    r = torch.tensor([[math.cos(h), *(math.sin(h) * axis)]], dtype=torch.float64)
    one = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    d = misorientation(one, r, "m-3m")[0]
    assert float(d[1]) >= float(d[2]) >= abs(float(d[3])), d
    assert float(d[1]) - float(d[2]) > 1e-9
    ang = float(misorientation_angle(one, r, "m-3m")[0])
    o = Orientation(r.numpy(), symmetry=osym.Oh)
    assert ang == pytest.approx(float(o.angle_with(Orientation(one.numpy(), symmetry=osym.Oh))[0]), abs=1e-9)


@pytest.mark.parametrize("dtype, delta", [(torch.float32, 1.5e-5), (torch.float64, 1.5e-9)])
def test_disorientation_near_tie_beyond_the_tie_tolerance_is_not_a_tie(dtype, delta):
    """Axis components c and d 1.5x the documented tie tolerance apart (1e-5 in float32, 1e-9 in float64; far
    above rounding: ~1e-7 and ~1e-16). The input M = (a, 0.2, 0.1 + delta, 0.1) is inside the cubic fundamental
    zone (Rodrigues vector (0.21, 0.10, 0.10): each |r_i| < sqrt(2) - 1, sum < 1) with b > c > d > 0, so it is
    its own disorientation: it must come back unchanged, not as (a, 0.2, 0.1, 0.1 + delta), which is the same
    rotation class with the axis outside Mackenzie's triangle (c < d by delta)."""
    from ebsd.orientation import misorientation

    b, c, d = 0.2, 0.1 + delta, 0.1
    m64 = torch.tensor([[math.sqrt(1 - b * b - c * c - d * d), b, c, d]], dtype=torch.float64)
    one = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype)
    m = m64.to(dtype)
    out = misorientation(one, m, "m-3m")[0].double()
    ulp = 1e-6 if dtype == torch.float32 else 1e-14
    assert float(out[2]) - float(out[3]) > delta / 2, out  # c > d kept: delta is not taken for a tie
    assert torch.allclose(out, m.double()[0], atol=ulp, rtol=0), (out, m)
    # the angle is orix's
    o = Orientation(m64.numpy(), symmetry=osym.Oh)
    ang = 2 * math.degrees(math.acos(min(1.0, float(out[0]))))
    assert ang == pytest.approx(math.degrees(float(o.angle_with(Orientation(np.array([[1.0, 0, 0, 0]]),
                                                                             symmetry=osym.Oh))[0])), abs=1e-3)
