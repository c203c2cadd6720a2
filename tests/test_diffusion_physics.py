"""PL forward model, EBSD channel representation and measurement operators (no diffusers needed)."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffusion.data import PLConfig, channels_to_quat, make_pair, pl_channels, quat_to_channels
from diffusion.operators import AvgPool, Identity, Mask, Measurement, PLForward, Subsample, Warp, warp
from diffusion.pl import caxis, pl_images
from ebsd.orientation import (axis_angle_to_quat, get_symmetry, misorientation_angle, quat_conjugate, quat_multiply,
                             quat_rotate)


def _random_quats(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape, 4, generator=g)
    return q / q.norm(dim=-1, keepdim=True)


def _zrot(q, delta):
    """Rotate the crystal about the sample z (viewing) axis by ``delta``: passive q' = q * conj(r)."""
    r = axis_angle_to_quat(torch.tensor([0.0, 0.0, 1.0]), torch.tensor(delta))
    return quat_multiply(q, quat_conjugate(r))


def test_pl_shapes_range_and_kinds():
    q = _random_quats((12, 10))
    out = pl_images(q, angles=[0.0, 0.5, 1.0])
    assert out.shape == (3, 12, 10) and out.dtype == torch.float32
    assert float(out.min()) >= -1e-6 and float(out.max()) <= 1 + 1e-6
    out_np = pl_images(q.numpy(), blur_sigma=1.0, photons=200.0, read_noise=0.01, seed=3)
    assert isinstance(out_np, np.ndarray) and out_np.shape == (6, 12, 10)
    again = pl_images(q.numpy(), blur_sigma=1.0, photons=200.0, read_noise=0.01, seed=3)
    np.testing.assert_array_equal(out_np, again)


@pytest.mark.parametrize("analyser", [math.pi / 2, math.radians(80)])
def test_rotating_caxis_about_view_shifts_curve(analyser):
    """I(theta) for the c-axis rotated by delta about the viewing axis equals I(theta - delta)."""
    q = _random_quats((4, 5), seed=1)
    delta = math.radians(30.0)
    thetas = [k * math.radians(15.0) for k in range(12)]
    base = pl_images(q, angles=thetas, analyser=analyser)
    rot = pl_images(_zrot(q, delta), angles=thetas, analyser=analyser)
    # rotating by 30 deg = two 15-deg steps of the polariser series
    torch.testing.assert_close(rot[2:], base[:-2], atol=1e-5, rtol=0)
    # c-axis itself rotated about z: same inclination, azimuth + delta
    c0, c1 = caxis(q), caxis(_zrot(q, delta))
    torch.testing.assert_close(c0[..., 2], c1[..., 2], atol=1e-5, rtol=0)


def test_pl_physics_extinction():
    # c-axis along the viewing direction: no retardation, crossed polars are dark
    q = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    assert float(pl_images(q).abs().max()) < 1e-6
    # c-axis in the plane at 45 deg to the polariser: maximum (half-wave defaults) for crossed polars
    qc = axis_angle_to_quat(torch.tensor([1.0, 0.0, 0.0]), torch.tensor(math.pi / 2))  # c -> in-plane
    c = caxis(qc)
    assert abs(float(c[2])) < 1e-6
    psi = math.atan2(float(c[1]), float(c[0]))
    I = pl_images(qc.view(1, 1, 4), angles=[psi + math.pi / 4, psi])
    assert float(I[0]) == pytest.approx(1.0, abs=1e-5) and float(I[1]) == pytest.approx(0.0, abs=1e-6)


def test_channels_symmetry_invariant_and_round_trip():
    q = _random_quats((9, 7), seed=2)
    ch = quat_to_channels(q)
    assert ch.shape == (9, 9, 7) and float(ch.abs().max()) <= 1 + 1e-5
    ops = get_symmetry("6/mmm").operators
    for s in ops:
        torch.testing.assert_close(quat_to_channels(quat_multiply(s.to(q), q)), ch, atol=2e-5, rtol=0)
    back = channels_to_quat(ch)
    assert float(misorientation_angle(q, back, "6/mmm").max()) < math.radians(0.2)
    # PL from channels (differentiable path) == PL from quaternions
    cfg = PLConfig()
    p1 = pl_channels(ch, cfg, blur=False)
    p2 = 2 * pl_images(q, angles=cfg.angles, analyser=cfg.analyser) - 1
    torch.testing.assert_close(p1, p2, atol=1e-5, rtol=0)


def test_augmentation_is_physical():
    """The dihedral augmentation of the training script maps every crystal axis of the flipped/transposed
    map through the same mirror T of the sample frame (up to the inversion of the Laue class)."""
    from diffusion.train import _R_FLIPX, _R_FLIPY, _R_TRANS

    q = _random_quats((6, 5), seed=4)
    cases = ((_R_FLIPX, lambda t: t.flip(-2), torch.diag(torch.tensor([-1.0, 1, 1]))),
             (_R_FLIPY, lambda t: t.flip(-3), torch.diag(torch.tensor([1.0, -1, 1]))),
             (_R_TRANS, lambda t: t.transpose(-3, -2), torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])))
    for r, fq, T in cases:
        qa = quat_multiply(fq(q), quat_conjugate(torch.tensor(r)))
        for axis in ([0.0, 0, 1], [1.0, 0, 0]):
            v = torch.tensor(axis)
            want = fq(quat_rotate(quat_conjugate(q), v)) @ T.T
            got = quat_rotate(quat_conjugate(qa), v)
            torch.testing.assert_close(got, -want, atol=1e-5, rtol=0)   # -: the absorbed inversion


def _adjoint_check(op, x_shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(x_shape, generator=g, dtype=torch.float64)
    Ax = op(x)
    y = torch.randn(Ax.shape, generator=g, dtype=torch.float64)
    lhs = float((Ax * y).sum())
    rhs = float((x * op.adjoint(y, x_shape)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("op", [
    Identity(slice(9, 15)),
    Subsample(4, channels=slice(0, 9)),
    Subsample(3, channels=[0, 2, 4], offset=0),
    AvgPool(4, channels=slice(0, 9)),
    Mask((torch.rand(16, 16, generator=torch.Generator().manual_seed(1)) < 0.3).float(), channels=slice(0, 9)),
    Warp((0.7, -1.2), math.radians(2.0), channels=slice(9, 15)),
])
def test_linear_operators_adjoint(op):
    _adjoint_check(op, (2, 15, 16, 16))


def test_operator_norms_and_warp_identity():
    x = torch.randn(1, 15, 16, 16)
    assert torch.equal(warp(x), x) or torch.allclose(warp(x), x, atol=1e-5)
    s = Subsample(4)
    y = torch.randn(1, 15, 4, 4)
    torch.testing.assert_close(s(s.adjoint(y, x.shape)), y)  # A A^T = I
    shifted = warp(x, (1.0, 0.0))
    torch.testing.assert_close(shifted[..., 2:, :], x[..., 1:-1, :], atol=1e-5, rtol=0)


def test_measurement_and_pl_operator():
    q = _random_quats((8, 8), seed=5)
    cfg = PLConfig()
    x = make_pair(q, cfg)[None]
    op = PLForward(cfg)
    torch.testing.assert_close(op(x), x[:, 9:], atol=1e-5, rtol=0)
    m = Measurement(op, x[:, 9:], sigma=0.1)
    assert float(m.rmse(x)) < 1e-5


def test_import_diffusion_is_light():
    code = "import sys, diffusion, diffusion.pl, diffusion.operators, diffusion.data; print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
