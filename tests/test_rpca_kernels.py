"""Fused residual pass (tensorkernels.residual_contract): Triton kernel vs float64 torch reference.

On CPU the Triton kernel runs in Triton's interpreter (conftest sets TRITON_INTERPRET=1 without CUDA)."""
from __future__ import annotations

import os

import pytest
import torch

from tensorkernels import residual_contract
from tensorkernels.rpca_fused import residual_contract_torch

triton_runs = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")),
    reason="Triton needs CUDA or TRITON_INTERPRET=1",
)
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(P, I, J, rn, rp, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    Y, H, UN, Up = mk(P, I, J), mk(P, I, rn) * 0.4, mk(J, rn) * 0.4, mk(I, rp)
    return [t.to(dtype).to(DEV) for t in (Y, H, UN, Up)]


@triton_runs
@pytest.mark.parametrize("P,I,J,rn,rp", [(3, 37, 53, 5, 4), (1, 45, 70, 3, 3), (2, 17, 300, 10, 7), (5, 1, 19, 1, 1)])
@pytest.mark.parametrize("mode", ["hard", "soft"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_matches_float64_reference(P, I, J, rn, rp, mode, dtype):
    pytest.importorskip("triton")
    Y, H, UN, Up = _inputs(P, I, J, rn, rp, dtype)
    pn, q = residual_contract(Y, H, UN, Up, 0.8, mode=mode, backend="triton")
    rpn, rq = residual_contract_torch(*(t.double() for t in (Y, H, UN, Up)), 0.8, mode)
    assert pn.shape == (P, I, rn) and q.shape == (P, rp, J) and pn.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for got, want in ((pn, rpn), (q, rq)):
        scale = want.abs().max().clamp_min(1e-30)
        assert float((got.double() - want).abs().max() / scale) < tol


def test_torch_reference_matches_definition():
    Y, H, UN, Up = _inputs(2, 6, 7, 3, 2, torch.float64)
    Y, H, UN, Up = (t.cpu() for t in (Y, H, UN, Up))
    X = torch.einsum("pic,jc->pij", H, UN)
    D = Y - X
    R = torch.where(D.abs() <= 0.5, -D, torch.zeros_like(D))
    pn, q = residual_contract(Y, H, UN, Up, 0.5, backend="torch")
    assert torch.allclose(pn, torch.einsum("pij,jc->pic", R, UN))
    assert torch.allclose(q, torch.einsum("ib,pij->pbj", Up, R))
    # the reference is differentiable
    H = H.clone().requires_grad_(True)
    residual_contract(Y, H, UN, Up, 0.5, mode="soft", backend="torch")[0].sum().backward()
    assert H.grad is not None and torch.isfinite(H.grad).all()


def test_bad_shapes_raise():
    Y, H, UN, Up = _inputs(2, 6, 7, 3, 2, torch.float64)
    with pytest.raises(ValueError):
        residual_contract(Y, H[:, :5], UN, Up, 0.5)
    with pytest.raises(ValueError):
        residual_contract(Y, H, UN, Up, -1.0)
    with pytest.raises(ValueError):
        residual_contract(Y, H, UN, Up, 0.5, mode="medium")
