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
def test_residual_gradients_match_float64_reference(shape, ranks, mode, dtype, missing):
    """The gradient tensors from the fused pass with its partials laid out for one GEMM (Triton), and from the
    torch path, equal R x_{j != i} U_j^T of a float64 R formed in full."""
    pytest.importorskip("triton")
    from tensorkernels.rpca_fused import residual_gradients

    g = torch.Generator().manual_seed(sum(shape))
    factors = [(torch.randn(n, r, generator=g, dtype=torch.float64) * 0.5).to(dtype).to(DEV)
               for n, r in zip(shape, ranks)]
    core = torch.randn(*ranks, generator=g, dtype=torch.float64).to(dtype).to(DEV)
    from tensorkernels import multi_mode_product

    noise = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(DEV)
    Y = multi_mode_product(core, factors, backend="torch") + noise
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


@triton_runs
@pytest.mark.parametrize("shape,ranks", [((7, 37, 53), (3, 4, 5)), ((3, 17, 300), (2, 10, 7)), ((4, 33, 19), (1, 1, 1))])
@pytest.mark.parametrize("mode", ["hard", "soft"])
@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("switch,value", [("GRID_J_FASTEST", False), ("GRID_J_FASTEST", True)])
def test_fused_pass_variants_match_float64_reference(monkeypatch, shape, ranks, mode, missing, switch, value):
    """Both grid orders of the fused pass (GRID_J_FASTEST: a 1-D grid with a slab's J-blocks adjacent, else the
    (P, J-blocks, I-chunks) grid): the gradient tensors equal the float64 reference in float32 and float64."""
    pytest.importorskip("triton")
    import tensorkernels._triton_rpca as tr
    from tensorkernels import multi_mode_product
    from tensorkernels.rpca_fused import residual_gradients

    monkeypatch.setattr(tr, switch, value)
    g = torch.Generator().manual_seed(7 + sum(shape))
    factors = [torch.randn(n, r, generator=g, dtype=torch.float64) * 0.5 for n, r in zip(shape, ranks)]
    core = torch.randn(*ranks, generator=g, dtype=torch.float64)
    Y = multi_mode_product(core, factors, backend="torch") + torch.randn(shape, generator=g, dtype=torch.float64)
    if missing:
        Y[torch.rand(shape, generator=g) < 0.2] = float("nan")
    want = _grad_reference(Y, core, factors, 0.8, mode, missing)
    for dtype, tol in ((torch.float32, 2e-5), (torch.float64, 1e-12)):
        got = residual_gradients(Y.to(dtype).to(DEV), core.to(dtype).to(DEV), [U.to(dtype).to(DEV) for U in factors],
                                 0.8, mode=mode, backend="triton", missing=missing,
                                 contract_precision="tf32x3" if DEV == "cuda" else None)
        for i, (a, b) in enumerate(zip(got, want)):
            assert a.dtype == dtype and a.shape == b.shape
            assert float((a.double().cpu() - b).abs().max() / b.abs().max()) < tol, (dtype, i)


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
    # zeta = 0 is a threshold (nothing kept in the residual under hard thresholding), not an error
    assert all(float(t.abs().max()) == 0.0 for t in residual_gradients(Y, c, f, 0.0))



@triton_runs
@pytest.mark.parametrize("shape,ranks", [((3, 40, 150), (2, 3, 4)), ((2, 3, 45, 70), (2, 2, 3, 4)),
                                         ((37, 53), (4, 5))])
def test_residual_gradients_with_many_partials_and_wide_offsets(shape, ranks, monkeypatch):
    """Small tiles force two to ten J-blocks and several I-chunks (every partial sum, orders 2-4), and the int64
    row offsets of huge slabs are forced on: the answer is still R x_{j != i} U_j^T (float64)."""
    pytest.importorskip("triton")
    import tensorkernels._triton_rpca as tr
    from tensorkernels.rpca_fused import residual_gradients

    g = torch.Generator().manual_seed(7)
    factors = [torch.randn(n, r, generator=g, dtype=torch.float64).to(DEV) * 0.5 for n, r in zip(shape, ranks)]
    core = torch.randn(*ranks, generator=g, dtype=torch.float64).to(DEV)
    Y = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(DEV)
    want = _grad_reference(Y, core, factors, 0.8, "soft", False)
    for cfg, wide in (((16, 16, 4), False), ((16, 64, 4), True), ((16, 128, 4), False)):
        monkeypatch.setattr(tr, "DEFAULT_CONFIG", cfg)
        monkeypatch.setattr(tr, "WIDE_ENTRIES", 0 if wide else 1 << 31)
        got = residual_gradients(Y, core, factors, 0.8, mode="soft", backend="triton")
        for a, b in zip(got, want):
            assert float((a.double().cpu() - b).abs().max() / b.abs().max()) < 1e-12, (cfg, wide)


def test_residual_gradients_empty_and_mixed_inputs():
    """Empty tensors and zero ranks give zero gradient tensors of the stated shapes (both paths); mixed dtypes are
    named."""
    from tensorkernels.rpca_fused import residual_gradients

    backends = ["torch"] + (["triton"] if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
                            or torch.cuda.is_available() else [])
    for shape, ranks in (((4, 0, 6), (2, 2, 2)), ((0, 6), (2, 3)), ((3, 4, 5), (2, 0, 2))):
        f = [torch.randn(n, r, dtype=torch.float64).to(DEV) for n, r in zip(shape, ranks)]
        c = torch.randn(*ranks, dtype=torch.float64).to(DEV)
        Y = torch.randn(shape, dtype=torch.float64).to(DEV)
        for backend in backends:
            got = residual_gradients(Y, c, f, 0.5, backend=backend)
            assert [tuple(t.shape) for t in got] == [
                tuple(shape[j] if j == i else ranks[j] for j in range(len(shape))) for i in range(len(shape))]
            assert all(t.numel() == 0 or float(t.abs().max()) == 0.0 for t in got)
    Y = torch.randn(5, 6, 7)
    f = [torch.randn(n, 2, dtype=torch.float64) for n in (5, 6, 7)]
    with pytest.raises(ValueError, match="dtype"):
        residual_gradients(Y, torch.randn(2, 2, 2, dtype=torch.float64), f, 0.5)
