"""tensorkernels.misorientation: closed forms and the Triton kernel against a float64 brute force over all operators."""
from __future__ import annotations

import math

import pytest
import torch

from tensorkernels import KernelBackendError
from tensorkernels.misorientation import (
    CUBIC_OPERATORS,
    HEXAGONAL_OPERATORS,
    misorientation_angle,
    torch_misorientation_angle,
)

from conftest import triton_ok

OPS = {"432": CUBIC_OPERATORS, "622": HEXAGONAL_OPERATORS}
OPS.update({"m-3m": CUBIC_OPERATORS, "6/mmm": HEXAGONAL_OPERATORS})


def rand_q(shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape, 4, generator=g, dtype=torch.float64)
    return (q / q.norm(dim=-1, keepdim=True)).to(dtype)


def brute_force(q1, q2, group):
    """max over every operator and both signs of |<S, q2 q1^-1>|, in float64 via acos."""
    q1, q2 = q1.double(), q2.double()
    a1, b1, c1, d1 = q1.unbind(-1)
    a2, b2, c2, d2 = q2.unbind(-1)
    M = torch.stack((a2 * a1 + b2 * b1 + c2 * c1 + d2 * d1, b2 * a1 - a2 * b1 - c2 * d1 + d2 * c1,
                     c2 * a1 - a2 * c1 + b2 * d1 - d2 * b1, d2 * a1 - a2 * d1 - b2 * c1 + c2 * b1), -1)
    ops = torch.tensor(OPS[group], dtype=torch.float64)
    return 2 * torch.acos((M @ ops.T).abs().amax(-1).clamp(max=1.0))


def test_operator_tables_are_groups():
    for group, n in (("432", 24), ("622", 12)):
        ops = torch.tensor(OPS[group], dtype=torch.float64)
        assert ops.shape == (n, 4)
        assert torch.allclose(ops.norm(dim=-1), torch.ones(n, dtype=torch.float64))
        # closed under products (up to sign)
        a, b = ops[:, None], ops[None]
        prod = torch.stack((a[..., 0] * b[..., 0] - (a[..., 1:] * b[..., 1:]).sum(-1),
                            *(a[..., 0:1] * b[..., 1:] + b[..., 0:1] * a[..., 1:]
                              + torch.cross(a[..., 1:].expand(n, n, 3), b[..., 1:].expand(n, n, 3), dim=-1)
                              ).unbind(-1)), -1)
        assert torch.allclose((prod.reshape(-1, 4) @ ops.T).abs().amax(-1), torch.ones(n * n, dtype=torch.float64))


def test_operator_tables_match_ebsd_symmetry():
    from ebsd.orientation import get_symmetry

    for group, laue in (("432", "m-3m"), ("622", "6/mmm")):
        ops = torch.tensor(OPS[group], dtype=torch.float64)
        ref = get_symmetry(laue).operators
        assert torch.allclose((ops @ ref.T).abs().amax(-1), torch.ones(len(ops), dtype=torch.float64))


@pytest.mark.parametrize("group", ["432", "622"])
def test_torch_closed_form_equals_brute_force(group):
    q1, q2 = rand_q((4001,), 1), rand_q((4001,), 2)
    got = torch_misorientation_angle(q1, q2, group)
    assert (got - brute_force(q1, q2, group)).abs().max().item() < 1e-10
    # identical inputs and antipodes give exactly 0
    assert torch_misorientation_angle(q1, -q1, group).abs().max().item() < 1e-7


@pytest.mark.parametrize("group", ["432", "622", "m-3m", "6/mmm"])
def test_float32_accuracy_small_and_large_angles(group):
    q1 = rand_q((2000,), 3)
    q2 = rand_q((2000,), 4)
    near = q1 + 1e-4 * rand_q((2000,), 5)
    near = near / near.norm(dim=-1, keepdim=True)
    for b in (q2, near):
        ref = brute_force(q1, b, group)
        got = torch_misorientation_angle(q1.float(), b.float(), group)
        assert got.dtype == torch.float32
        assert (got.double() - ref).abs().max().item() < 2e-6


@pytest.mark.skipif(not triton_ok(), reason="triton is not installed")
@pytest.mark.parametrize("group", ["432", "622"])
@pytest.mark.parametrize("n", [1, 7, 513, 1029])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_equals_float64_reference(group, n, dtype):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    q1, q2 = rand_q((n,), 10 + n), rand_q((n,), 20 + n)
    ref = torch_misorientation_angle(q1, q2, group)
    got = misorientation_angle(q1.to(dev, dtype), q2.to(dev, dtype), group, backend="triton")
    assert got.dtype == dtype and got.shape == (n,)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert (got.cpu().double() - ref).abs().max().item() < tol


@pytest.mark.skipif(not triton_ok(), reason="triton is not installed")
def test_triton_broadcast_and_leading_shapes():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    q1, q2 = rand_q((3, 5), 30), rand_q((5,), 31)
    got = misorientation_angle(q1.to(dev), q2.to(dev), "622", backend="triton")
    assert got.shape == (3, 5)
    assert torch.allclose(got.cpu(), torch_misorientation_angle(q1, q2, "622"), atol=1e-12)
    empty = misorientation_angle(q1[:0].to(dev), q1[:0].to(dev), "432", backend="triton")
    assert empty.shape == (0, 5)


def test_angle_range_and_known_values():
    r2 = math.sqrt(0.5)
    ident = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
    # 60 deg about <111> (Sigma-3 twin) stays 60 deg for m-3m
    s3 = torch.tensor([math.cos(math.pi / 6), *(math.sin(math.pi / 6) / math.sqrt(3),) * 3], dtype=torch.float64)
    assert abs(torch_misorientation_angle(ident, s3, "432").item() - math.pi / 3) < 1e-12
    # 90 deg about z is the identity for 432; 45 deg about z stays 45 deg
    assert torch_misorientation_angle(ident, torch.tensor([r2, 0, 0, r2], dtype=torch.float64), "432").item() < 1e-7
    q45 = torch.tensor([math.cos(math.pi / 8), 0, 0, math.sin(math.pi / 8)], dtype=torch.float64)
    assert abs(torch_misorientation_angle(ident, q45, "432").item() - math.pi / 4) < 1e-12
    # 60 deg about c is the identity for 622; 30 deg is the largest c-axis rotation
    q60 = torch.tensor([math.cos(math.pi / 6), 0, 0, math.sin(math.pi / 6)], dtype=torch.float64)
    assert torch_misorientation_angle(ident, q60, "622").item() < 1e-7
    q = rand_q((5000,), 40)
    ang = torch_misorientation_angle(ident, q, "432")
    assert ang.max().item() <= math.radians(62.8 + 1e-6)  # Mackenzie's maximum for cubic
    ang6 = torch_misorientation_angle(ident, q, "622")
    assert ang6.max().item() <= math.radians(104.48 + 1e-3)  # maximum for hexagonal


def test_errors():
    q = rand_q((3,), 50)
    with pytest.raises(ValueError):
        misorientation_angle(q, q, "m-3")
    with pytest.raises(ValueError):
        misorientation_angle(q[:, :3], q, "432")
    if not torch.cuda.is_available():
        import os

        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            with pytest.raises(KernelBackendError):
                misorientation_angle(q, q, "432", backend="triton")


@pytest.mark.parametrize("group", ["432", "622"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_auto_fused_loop_equals_reference(group, dtype, monkeypatch):
    """backend=None on CPU runs the fused numba loop (when numba is there): same numbers as the reference."""
    monkeypatch.delenv("EBSDTK_KERNEL_BACKEND", raising=False)
    q1, q2 = rand_q((3, 1001), 60), rand_q((1001,), 61)
    got = misorientation_angle(q1.to(dtype), q2.to(dtype), group)
    ref = torch_misorientation_angle(q1.to(dtype), q2.to(dtype), group)
    assert got.shape == (3, 1001) and got.dtype == dtype
    assert (got - ref).abs().max().item() < (1e-12 if dtype == torch.float64 else 1e-6)
    assert (got.double() - brute_force(q1, q2.expand(3, -1, -1), group)).abs().max().item() < 2e-6
