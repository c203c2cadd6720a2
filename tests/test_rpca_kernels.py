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


def _grad_reference(Y, core, factors, zeta, mode, missing):
    """``T_i = R x_{j != i} U_j^T`` from a float64 ``R`` formed in full (independent of both backends)."""
    from tensorkernels import multi_mode_product

    Y, core, factors = Y.double().cpu(), core.double().cpu(), [U.double().cpu() for U in factors]
    D = Y - multi_mode_product(core, factors, backend="torch")
    R = torch.where(D.abs() <= zeta, -D, torch.zeros_like(D)) if mode == "hard" else -D.clamp(-zeta, zeta)
    if missing:
        R = torch.where(Y.isnan(), torch.zeros_like(R), R)
    N = Y.ndim
    out = []
    for i in range(N):
        T = R
        for j in range(N):
            if j != i:
                T = torch.tensordot(T, factors[j], dims=([j], [0])).movedim(-1, j)
        out.append(T)
    return out


@triton_runs
@pytest.mark.parametrize("shape,ranks", [
    ((37, 53), (4, 5)),            # order 2, two I-chunks
    ((7, 37, 53), (3, 4, 5)),
    ((5, 6, 33, 19), (2, 3, 4, 5)),
    ((1, 70, 300), (1, 10, 7)),     # three J-blocks and three I-chunks: both partial sums
    ((3, 17, 300), (2, 10, 7)),
])
@pytest.mark.parametrize("mode", ["hard", "soft"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("fuse_h,want_v", [(True, True), (False, False), (True, False), (False, True)])
def test_residual_gradients_match_float64_reference(shape, ranks, mode, dtype, missing, fuse_h, want_v,
                                                    monkeypatch):
    """The gradient tensors of the fused pass (Triton, with X formed from the core in the kernel or read from H,
    with or without the V contraction; and the torch path) equal R x_{j != i} U_j^T of a float64 R formed in
    full."""
    pytest.importorskip("triton")
    import tensorkernels.rpca_fused as rf
    from tensorkernels.rpca_fused import residual_gradients

    monkeypatch.setattr(rf, "FUSE_H", fuse_h)
    monkeypatch.setattr(rf, "WANT_V", want_v)

    g = torch.Generator().manual_seed(sum(shape))
    factors = [(torch.randn(n, r, generator=g, dtype=torch.float64) * 0.5).to(dtype).to(DEV)
               for n, r in zip(shape, ranks)]
    core = torch.randn(*ranks, generator=g, dtype=torch.float64).to(dtype).to(DEV)
    from tensorkernels import multi_mode_product

    Y = multi_mode_product(core, factors, backend="torch") + torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(DEV)
    if missing:
        Y[(torch.rand(shape, generator=g) < 0.2).to(DEV)] = float("nan")
    want = _grad_reference(Y, core, factors, 0.8, mode, missing)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for backend in ("triton", "torch"):
        got = residual_gradients(Y, core, factors, 0.8, mode=mode, backend=backend, missing=missing,
                                 contract_precision="tf32x3" if DEV == "cuda" else None)
        assert len(got) == len(shape)
        for i, (a, b) in enumerate(zip(got, want)):
            assert a.shape == b.shape == tuple(shape[i] if j == i else ranks[j] for j in range(len(shape)))
            assert a.dtype == dtype
            assert float((a.double().cpu() - b).abs().max() / b.abs().max()) < tol, (backend, i)


def test_residual_gradients_bad_input_raises():
    from tensorkernels.rpca_fused import residual_gradients

    Y = torch.randn(5, 6, 7, dtype=torch.float64)
    f = [torch.randn(n, 2, dtype=torch.float64) for n in (5, 6, 7)]
    c = torch.randn(2, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="factor shapes"):
        residual_gradients(Y, c, [f[0], f[1], f[1]], 0.5)
    with pytest.raises(ValueError, match="order"):
        residual_gradients(Y, c, f[:2], 0.5)
    with pytest.raises(ValueError, match="zeta"):
        residual_gradients(Y, c, f, -1.0)
    with pytest.raises(ValueError, match="mode"):
        residual_gradients(Y, c, f, 0.5, mode="medium")


@triton_runs
@pytest.mark.parametrize("I,r,dtype", [(37, 3, torch.float32), (64, 10, torch.float32), (50, 16, torch.float64),
                                       (5, 1, torch.float64), (33, 7, torch.float64)])
def test_tucker_change_kernel_matches_the_per_mode_change(I, r, dtype):
    """The one-kernel relative change of order-3 iterates equals the float64 change computed from three separate
    Tucker inner products (tucker_inner), for moves of 1e-3 and of order 1."""
    pytest.importorskip("triton")
    from tensorrpca.scaledgd import relative_change, tucker_inner

    g = torch.Generator().manual_seed(I * r)
    for move in (1e-3, 1.0):
        Uo = torch.randn(3, I, r, generator=g, dtype=torch.float64)
        Un = Uo + move * torch.randn(3, I, r, generator=g, dtype=torch.float64)
        co = torch.randn(r, r, r, generator=g, dtype=torch.float64)
        cn = co + move * torch.randn(r, r, r, generator=g, dtype=torch.float64)
        Uo, Un, co, cn = (t.to(dtype).to(DEV) for t in (Uo, Un, co, cn))
        fo, fn = list(Uo.unbind(0)), list(Un.unbind(0))
        aa, bb, ab = (float(tucker_inner(*x)) for x in ((co, fo, co, fo), (cn, fn, cn, fn), (co, fo, cn, fn)))
        want = max(aa + bb - 2 * ab, 0.0) ** 0.5 / aa ** 0.5
        got = relative_change((fo, co), (fn, cn), backend="triton")
        assert got.dtype == torch.float64 and got.ndim == 0
        assert abs(float(got) - want) < 1e-9 * want, (float(got), want)
        # the torch path (batched einsum) agrees too
        assert abs(float(relative_change((fo, co), (fn, cn), backend="torch")) - want) < 1e-9 * want


@triton_runs
@pytest.mark.parametrize("shape,ranks", [((12, 12, 12), (3, 3, 3)), ((20, 20, 20), (10, 10, 10)),
                                         ((9, 9, 9), (1, 1, 1)), ((40, 40, 40), (16, 16, 16))])
def test_one_kernel_rspace_end_equals_the_torch_step(shape, ranks):
    """On Triton an order-3 cube's step ends in one kernel (float64 Grams, Gauss-Jordan inverses, both updates and
    the relative change); in float64 it gives the torch batched step (LU inverses) to 1e-10, with and without
    missing entries and with the step size as a tensor, and its change is relative_change's."""
    pytest.importorskip("triton")
    import tensorrpca.scaledgd as sg
    from tensorrpca.synthetic import synthetic_rpca

    p = synthetic_rpca(shape, ranks, kappa=3, alpha=0.1, seed=3, dtype=torch.float64, device=DEV)
    f, c = sg.spectral_init(p.Y, ranks, 5.0)
    f = [U + 0.01 * torch.randn(U.shape, generator=torch.Generator().manual_seed(i), dtype=U.dtype).to(DEV)
         for i, U in enumerate(f)]
    obs = (torch.rand(shape, generator=torch.Generator().manual_seed(5)) > 0.3).to(DEV)
    Ym = p.Y.masked_fill(~obs, float("nan"))
    for Y, frac in ((p.Y, None), (Ym, float(obs.double().mean()))):
        for eta in (0.5, torch.tensor(0.5, dtype=torch.float64, device=DEV)):
            fa, ca, cha = sg._step(Y, f, c, 1.0, eta, backend="triton", observed_fraction=frac)
            fb, cb, chb = sg._step(Y, f, c, 1.0, eta, backend="torch", observed_fraction=frac)
            assert cha is not None and chb is None  # the kernel path ran (and the torch one did not)
            torch.testing.assert_close(ca, cb, rtol=1e-10, atol=1e-12)
            for a, b in zip(fa, fb):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
            ref = float(sg.relative_change((f, c), (fb, cb), backend="torch"))
            assert ref > 1e-4 and abs(float(cha) - ref) < 1e-9 * ref
