"""Kernels: torch references vs float64 numpy/tensorly, and Triton kernels vs the references.

Triton kernels run on CUDA when present, otherwise in Triton's CPU interpreter (conftest sets
``TRITON_INTERPRET=1``), always on small odd-sized inputs.
"""
from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
import torch
from tensorly.tenalg import multi_mode_dot

import tensorkernels
from tensorkernels import KernelBackendError, multi_mode_product, mode_product, threshold, threshold_residual, tucker_to_tensor
from tensorkernels.tucker import _best_order, fold, unfold

from conftest import triton_ok

DEV = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not triton_ok(), reason="triton not installed")


def _np_threshold(Y, X, zeta, mode, out):
    D = Y.astype(np.float64) - (0 if X is None else X.astype(np.float64))
    if mode == "hard":
        S = np.where(np.abs(D) > zeta, D, 0.0)
    else:
        S = np.sign(D) * np.maximum(np.abs(D) - zeta, 0.0)
    return {"sparse": S, "residual": S - D, "kept": D - S}[out]


@pytest.mark.parametrize("mode", ["hard", "soft"])
@pytest.mark.parametrize("out", ["sparse", "residual", "kept"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_threshold_reference_matches_numpy(mode, out, dtype):
    g = torch.Generator().manual_seed(0)
    Y = torch.randn(7, 9, 11, generator=g, dtype=dtype)
    X = torch.randn(7, 9, 11, generator=g, dtype=dtype)
    got = threshold_residual(Y, X, 0.7, mode=mode, out=out, backend="torch")
    ref = _np_threshold(Y.numpy(), X.numpy(), 0.7, mode, out)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6, atol=1e-6)
    # the defining identities: S = T(D), R = S - D
    D = Y - X
    S = threshold_residual(Y, X, 0.7, mode=mode, out="sparse", backend="torch")
    R = threshold_residual(Y, X, 0.7, mode=mode, out="residual", backend="torch")
    torch.testing.assert_close(R, S - D)
    K = threshold_residual(Y, X, 0.7, mode=mode, out="kept", backend="torch")
    torch.testing.assert_close(K, D - S)


def test_threshold_single_argument_and_bad_input():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0])
    torch.testing.assert_close(threshold(x, 1.0, backend="torch"), torch.tensor([-2.0, 0, 0, 0, 2.0]))
    torch.testing.assert_close(threshold(x, 1.0, mode="soft", backend="torch"), torch.tensor([-1.0, 0, 0, 0, 1.0]))
    with pytest.raises(ValueError):
        threshold(x, -1.0)
    with pytest.raises(ValueError):
        threshold(x, 1.0, mode="medium")
    with pytest.raises(ValueError):
        threshold_residual(x, x[:3], 1.0)
    with pytest.raises(KernelBackendError):
        threshold(x, 1.0, backend="cuda-please")


@needs_triton
@pytest.mark.parametrize("mode", ["hard", "soft"])
@pytest.mark.parametrize("out", ["sparse", "residual", "kept"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(5, 7, 3), (1001,), (3, 17, 13)])
def test_threshold_triton_matches_reference(mode, out, dtype, shape):
    g = torch.Generator().manual_seed(sum(shape))
    Y = torch.randn(*shape, generator=g).to(dtype).to(DEV)
    X = torch.randn(*shape, generator=g).to(dtype).to(DEV)
    ref = threshold_residual(Y.double(), X.double(), 0.6, mode=mode, out=out, backend="torch")
    poison = threshold_residual(Y, X, 0.6, mode=mode, out=out, backend="triton")
    assert poison.dtype == dtype and poison.shape == Y.shape
    assert torch.isfinite(poison).all()
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
    # bf16 inputs: the kernel subtracts in fp32 from the rounded inputs, as does the float64 reference
    torch.testing.assert_close(poison.double(), ref, rtol=tol, atol=tol)
    # no X: plain thresholding
    ref1 = threshold_residual(Y.double(), None, 0.6, mode=mode, out=out, backend="torch")
    got1 = threshold_residual(Y, None, 0.6, mode=mode, out=out, backend="triton")
    torch.testing.assert_close(got1.double(), ref1, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- Tucker products


def test_unfold_fold_match_tensorly():
    T = np.random.default_rng(1).standard_normal((3, 4, 5, 2))
    for m in range(4):
        U = unfold(torch.from_numpy(T), m).numpy()
        np.testing.assert_array_equal(U, tl.unfold(T, m))
        np.testing.assert_array_equal(fold(torch.from_numpy(U), m, T.shape).numpy(), T)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_tucker_to_tensor_matches_tensorly(order):
    rng = np.random.default_rng(order)
    dims = [7, 5, 9, 4][:order]
    ranks = [3, 2, 4, 3][:order]
    core = rng.standard_normal(ranks)
    factors = [rng.standard_normal((d, r)) for d, r in zip(dims, ranks)]
    ref = multi_mode_dot(core, factors)  # float64 tensorly
    got = tucker_to_tensor(torch.from_numpy(core), [torch.from_numpy(f) for f in factors], backend="torch")
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-12)
    # transposed contraction back to the core
    back = multi_mode_product(torch.from_numpy(ref), [torch.from_numpy(f) for f in factors], transpose=True)
    ref_back = multi_mode_dot(ref, [f.T for f in factors])
    np.testing.assert_allclose(back.numpy(), ref_back, rtol=1e-10, atol=1e-10)


def test_multi_mode_product_skip_and_order():
    rng = np.random.default_rng(3)
    T = rng.standard_normal((6, 8, 10))
    Us = [rng.standard_normal((d, 2)) for d in T.shape]
    got = multi_mode_product(torch.from_numpy(T), [torch.from_numpy(u) for u in Us], transpose=True, skip=1)
    ref = multi_mode_dot(T, [Us[0].T, Us[2].T], modes=[0, 2])
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10)
    # shrinking a big tensor: the largest reduction goes first
    assert _best_order((100, 100, 100), {0: 5, 1: 50, 2: 99})[0] == 0
    # expanding a core: the smallest growth goes first
    assert _best_order((5, 5, 5), {0: 500, 1: 6, 2: 50})[0] == 1


def test_mode_product_errors():
    T = torch.randn(3, 4, 5)
    with pytest.raises(ValueError):
        mode_product(T, torch.randn(2, 3), 1)
    with pytest.raises(ValueError):
        mode_product(T, torch.randn(2, 4), 3)
    with pytest.raises(ValueError):
        mode_product(T, torch.randn(2, 4, dtype=torch.float64), 1)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape,mode,J", [((5, 7, 3), 1, 3), ((9, 13, 11), 0, 17), ((4, 6, 33), 2, 5), ((37, 3), 1, 2)])
def test_mode_product_triton_matches_reference(dtype, shape, mode, J):
    g = torch.Generator().manual_seed(7)
    T = torch.randn(*shape, generator=g).to(dtype).to(DEV)
    M = torch.randn(J, shape[mode], generator=g).to(dtype).to(DEV)
    ref = mode_product(T.double(), M.double(), mode, backend="torch")
    got = mode_product(T, M, mode, backend="triton")
    assert got.dtype == dtype and got.shape == ref.shape
    err = (got.double() - ref).norm() / ref.norm()
    assert err < (1e-2 if dtype == torch.bfloat16 else 1e-6), float(err)


@needs_triton
def test_tucker_to_tensor_triton_matches_reference():
    g = torch.Generator().manual_seed(11)
    core = torch.randn(3, 4, 2, generator=g, dtype=torch.float64).to(DEV)
    Us = [torch.randn(d, r, generator=g, dtype=torch.float64).to(DEV) for d, r in zip((11, 7, 13), core.shape)]
    ref = tucker_to_tensor(core, Us, backend="torch")
    got = tucker_to_tensor(core, Us, backend="triton")
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_backend_resolution(monkeypatch):
    x = torch.randn(4)
    assert tensorkernels.resolve_backend(None, x) == "torch"  # CPU tensors never pick Triton automatically
    monkeypatch.setenv("EBSDTK_KERNEL_BACKEND", "torch")
    assert tensorkernels.resolve_backend(None, x) == "torch"
    monkeypatch.setenv("EBSDTK_KERNEL_BACKEND", "nonsense")
    with pytest.raises(KernelBackendError):
        tensorkernels.resolve_backend(None, x)
