"""Tensor RPCA with missing entries (``rpca(..., mask=observed)``), in the torch path, the fused Triton pass
(under TRITON_INTERPRET=1 on CPU) and the unfolded network; and the fused pass's contraction precisions."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from tensorkernels import residual_contract
from tensorkernels.rpca_fused import residual_contract_torch
from tensorrpca import RPCAInputError, UnfoldedRPCA, rpca
from tensorrpca.scaledgd import scaledgd_step, spectral_init
from tensorrpca.synthetic import synthetic_rpca

triton_runs = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")),
    reason="Triton needs CUDA or TRITON_INTERPRET=1",
)


def rel_err(A, B):
    A, B = torch.as_tensor(A, dtype=torch.float64), torch.as_tensor(B, dtype=torch.float64)
    return float((A - B).norm() / B.norm())


def _missing(shape, frac, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) >= frac  # True = observed


def test_all_true_mask_gives_exactly_the_unmasked_result():
    p = synthetic_rpca((20, 21, 22), (2, 3, 2), kappa=3, alpha=0.1, seed=3)
    a = rpca(p.Y, (2, 3, 2))
    b = rpca(p.Y, (2, 3, 2), mask=torch.ones(p.Y.shape, dtype=torch.bool))
    assert a.n_iter == b.n_iter and a.params == b.params
    assert torch.equal(a.low_rank, b.low_rank) and torch.equal(a.sparse, b.sparse)
    assert "observed_fraction" not in b.checks


def test_recovers_rank_345_with_30pct_missing_and_10pct_corrupted():
    """The issue's case: 60x70x80, Tucker ranks (3, 4, 5); 30 % of the entries missing uniformly at random, 10 % of
    the rest grossly corrupted. Missing entries hold NaN (ignored); the low-rank part is recovered everywhere,
    missing entries included."""
    p = synthetic_rpca((60, 70, 80), (3, 4, 5), kappa=5, alpha=0.1, seed=0)
    obs = _missing(p.Y.shape, 0.3)
    Y = p.Y.clone()
    Y[~obs] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no convergence warning either
        res = rpca(Y, (3, 4, 5), mask=obs)
    assert res.converged
    assert rel_err(res.low_rank, p.low_rank) <= 1e-5
    assert rel_err(res.low_rank[~obs], p.low_rank[~obs]) <= 1e-5          # the filled-in entries too
    assert torch.all(res.sparse[~obs] == 0)                                # nothing is called sparse where unseen
    # the sparse part finds the corruption among the observed entries
    found, true = res.sparse[obs] != 0, p.sparse[obs] != 0
    assert float((found != true).double().mean()) < 1e-3
    assert res.checks["observed_fraction"] == pytest.approx(float(obs.double().mean()))
    assert res.checks["sparse_fraction"] == pytest.approx(0.1, abs=0.01)  # share of the observed entries


def test_mask_numpy_in_numpy_out_and_values_at_missing_entries_are_ignored():
    p = synthetic_rpca((18, 19, 20), (2, 2, 2), kappa=2, alpha=0.1, seed=5)
    obs = _missing(p.Y.shape, 0.2).numpy()
    Y1 = p.Y.numpy().astype(np.float32).copy()
    Y2 = Y1.copy()
    Y1[~obs] = np.nan
    Y2[~obs] = 1e6  # anything: unobserved
    r1 = rpca(Y1, (2, 2, 2), mask=obs)
    r2 = rpca(Y2, (2, 2, 2), mask=obs)
    assert isinstance(r1.low_rank, np.ndarray) and r1.low_rank.dtype == np.float32
    assert np.array_equal(r1.low_rank, r2.low_rank) and np.array_equal(r1.sparse, r2.sparse)
    assert np.isfinite(r1.low_rank).all() and np.isfinite(r1.sparse).all()
    assert rel_err(r1.low_rank, p.low_rank) < 1e-4


@pytest.mark.parametrize("mask,match", [
    (np.ones((5, 6, 7), dtype=np.int64), "boolean"),
    (torch.ones(5, 6, 7), "boolean"),
    (np.ones((5, 6), dtype=bool), "shape"),
    (np.zeros((5, 6, 7), dtype=bool), "no entry"),
    ([[True]], "numpy array or torch tensor"),
])
def test_bad_masks_raise(mask, match):
    with pytest.raises(RPCAInputError, match=match):
        rpca(np.ones((5, 6, 7)), (2, 2, 2), mask=mask)


def test_nan_at_an_observed_entry_raises_and_nan_without_mask_points_to_it():
    Y = np.ones((5, 6, 7))
    Y[1, 2, 3] = np.nan
    obs = np.ones(Y.shape, dtype=bool)
    with pytest.raises(RPCAInputError, match="observed entries"):
        obs2 = obs.copy()
        obs2[0, 0, 0] = False
        rpca(Y, (2, 2, 2), mask=obs2)
    with pytest.raises(RPCAInputError, match="mask="):
        rpca(Y, (2, 2, 2))
    obs[1, 2, 3] = False
    res = rpca(Y, (1, 1, 1), mask=obs, max_iter=3)  # NaN where missing: fine
    assert np.isfinite(res.low_rank).all()


def test_missing_residual_torch_reference_by_hand():
    """NaN entries of Y get no residual; the others are thresholded as usual."""
    g = torch.Generator().manual_seed(0)
    Y, H = torch.randn(2, 5, 6, generator=g, dtype=torch.float64), torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    UN, Up = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(5, 2, generator=g, dtype=torch.float64)
    Y[0, 1, 2] = Y[1, 4, 5] = float("nan")
    X = torch.einsum("pic,jc->pij", H, UN)
    D = Y - X
    for mode, R in (("hard", torch.where(D.abs() <= 0.7, -D, torch.zeros_like(D))),
                    ("soft", -D.clamp(-0.7, 0.7))):
        R = torch.where(Y.isnan(), torch.zeros_like(R), R)
        pn, q = residual_contract(Y, H, UN, Up, 0.7, mode=mode, backend="torch", missing=True)
        torch.testing.assert_close(pn, torch.einsum("pij,jc->pic", R, UN))
        torch.testing.assert_close(q, torch.einsum("ib,pij->pbj", Up, R))


@triton_runs
@pytest.mark.parametrize("P,I,J,rn,rp", [(3, 37, 53, 5, 4), (2, 17, 300, 10, 7)])
@pytest.mark.parametrize("mode", ["hard", "soft"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_pass_with_missing_entries_matches_float64_reference(P, I, J, rn, rp, mode, dtype):
    pytest.importorskip("triton")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(1)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    Y, H, UN, Up = mk(P, I, J), mk(P, I, rn) * 0.4, mk(J, rn) * 0.4, mk(I, rp)
    Y[torch.rand(Y.shape, generator=g) < 0.3] = float("nan")
    Y, H, UN, Up = (t.to(dtype).to(dev) for t in (Y, H, UN, Up))
    pn, q = residual_contract(Y, H, UN, Up, 0.8, mode=mode, backend="triton", missing=True)
    rpn, rq = residual_contract_torch(*(t.double() for t in (Y, H, UN, Up)), 0.8, mode, missing=True)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for got, want in ((pn, rpn), (q, rq)):
        assert torch.isfinite(got).all()
        assert float((got.double() - want).abs().max() / want.abs().max()) < tol


@triton_runs
@pytest.mark.parametrize("cprec,tol", [("tf32x3", 2e-6), ("tf32", 2e-3), ("bf16", 2e-2)])
def test_contraction_precisions_of_the_fused_pass(cprec, tol):
    """The GPU path's precisions (X always tf32x3; the contractions tf32x3 / tf32 / bf16). In the interpreter the
    tf32 variants compute in fp32 and bf16 is emulated (the same rounding of R and U to bf16)."""
    pytest.importorskip("triton")
    from tensorkernels._triton_rpca import triton_residual_contract

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(2)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    Y, H, UN, Up = mk(3, 37, 53), mk(3, 37, 5) * 0.4, mk(53, 5) * 0.4, mk(37, 4)
    Y32 = [t.float().to(dev) for t in (Y, H, UN, Up)]
    pn, q = triton_residual_contract(*Y32, 0.8, "hard", precision="tf32x3", contract_precision=cprec)
    rpn, rq = residual_contract_torch(Y, H, UN, Up, 0.8, "hard")
    errs = [float((a.double().cpu() - b).abs().max() / b.abs().max()) for a, b in ((pn, rpn), (q, rq))]
    assert max(errs) < tol
    with pytest.raises(ValueError, match="contract_precision"):
        triton_residual_contract(*Y32, 0.8, "hard", precision="tf32x3", contract_precision="fp8")


@triton_runs
def test_masked_step_matches_between_backends():
    pytest.importorskip("triton")
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # the Triton backend runs on CUDA tensors there
    p = synthetic_rpca((7, 9, 11), (2, 3, 2), alpha=0.2, seed=10, device=dev)
    obs = _missing(p.Y.shape, 0.3).to(dev)
    Y = p.Y.masked_fill(~obs, float("nan"))
    factors, core = spectral_init(Y.nan_to_num(0.0), (2, 3, 2), 30.0, scale=1 / 0.7)
    frac = float(obs.double().mean())
    ft, ct = scaledgd_step(Y, factors, core, 0.7, 0.5, backend="torch", observed_fraction=frac)
    fk, ck = scaledgd_step(Y, factors, core, 0.7, 0.5, backend="triton", observed_fraction=frac)
    assert torch.isfinite(ct).all()
    assert torch.allclose(ct, ck, rtol=1e-10, atol=1e-12)
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(ft, fk))


def test_masked_step_rescales_the_observed_residual():
    """The step with missing entries equals the full step on the tensor whose residual is P_obs(R) / p: feed the
    full step the gated observation Y_g = X + (Y - X) 1{obs} / p at zeta = inf."""
    from tensorkernels import tucker_to_tensor

    p = synthetic_rpca((8, 9, 10), (2, 2, 2), alpha=0.0, seed=11)
    obs = _missing(p.Y.shape, 0.25, seed=4)
    frac = float(obs.double().mean())
    factors, core = spectral_init(p.Y, (2, 2, 2), 1e9)
    factors = [U + 0.05 * torch.randn_like(U) for U in factors]
    X = tucker_to_tensor(core, factors)
    Yg = X + (p.Y - X) * obs / frac
    f1, c1 = scaledgd_step(p.Y.masked_fill(~obs, float("nan")), factors, core, 1e9, 0.5, observed_fraction=frac)
    f2, c2 = scaledgd_step(Yg, factors, core, 1e9, 0.5)
    torch.testing.assert_close(c1, c2)
    for a, b in zip(f1, f2):
        torch.testing.assert_close(a, b)


def test_unfolded_forward_with_mask_is_rpca_with_mask():
    p = synthetic_rpca((20, 21, 22), (2, 3, 2), kappa=3, alpha=0.1, seed=6)
    obs = _missing(p.Y.shape, 0.3)
    hp = {"rho": 0.85, "eta": 0.6}
    net = UnfoldedRPCA((2, 3, 2), n_layers=8, params=hp)
    a = net(p.Y, mask=obs)
    b = rpca(p.Y, (2, 3, 2), mask=obs, max_iter=8, tol=0.0,
             params={**hp, "zeta0": a.params.zeta0, "zeta1": a.params.zeta1})
    assert torch.allclose(a.low_rank, b.low_rank, rtol=1e-12, atol=1e-12)
    assert torch.equal(a.sparse[~obs], torch.zeros_like(a.sparse[~obs]))


def test_unfolded_fit_with_masks_learns_finite_parameters_and_unroll_matches_forward():
    p1 = synthetic_rpca((12, 13, 14), (2, 2, 2), kappa=2, alpha=0.1, seed=7)
    p2 = synthetic_rpca((12, 13, 14), (2, 2, 2), kappa=2, alpha=0.1, seed=8)
    m1, m2 = _missing(p1.Y.shape, 0.3, seed=2), _missing(p2.Y.shape, 0.3, seed=3)
    net = UnfoldedRPCA((2, 2, 2), n_layers=4)
    before = dict(net.hyperparameters())
    net.fit([p1.Y, p2.Y.masked_fill(~m2, float("nan"))], epochs=2, masks=[m1, m2], progress=False)
    hp = net.hyperparameters()
    assert all(np.isfinite(v) for v in hp.values()) and hp != before
    assert all(np.isfinite(r["loss"]) and r["skipped"] == 0 for r in net.fit_history)
    # the unrolled network with exact thresholds computes the same iterates as the exact forward pass
    Y = p1.Y.clone()
    with torch.no_grad():
        X_unroll = net.unroll(Y, temperature=None, mask=m1)[-1]
    X_fwd = net(Y, mask=m1).low_rank
    assert torch.allclose(X_unroll, X_fwd, rtol=1e-9, atol=1e-9)
    with pytest.raises(RPCAInputError, match="masks"):
        net.fit([p1.Y], epochs=1, masks=[m1, m2], progress=False)


@pytest.mark.parametrize("max_iter", [200, 7])
@pytest.mark.parametrize("masked", [False, True])
def test_pipelined_stopping_rule_gives_the_step_by_step_answer(monkeypatch, max_iter, masked):
    """rpca on CUDA runs the stopping rule two replays behind the GPU and rolls the speculative steps back when
    step k stops: same iterations, history and answer as stepping one at a time (checked here with the graph
    step's body and bookkeeping run eagerly, capture=False)."""
    import tensorrpca.scaledgd as sg

    p = synthetic_rpca((16, 17, 18), (2, 2, 2), kappa=2, alpha=0.1, seed=12)
    obs = _missing(p.Y.shape, 0.2) if masked else None
    made = []

    def fake(*a, observed_fraction=None, **k):
        made.append(sg._GraphStep(*a[:7], observed_fraction=observed_fraction, capture=False))
        return made[-1]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = rpca(p.Y, (2, 2, 2), mask=obs, max_iter=max_iter)
        monkeypatch.setattr(sg, "_make_graph_step", fake)
        got = rpca(p.Y, (2, 2, 2), mask=obs, max_iter=max_iter)
    assert made and got.n_iter == ref.n_iter and got.history == ref.history and got.converged == ref.converged
    assert made[0].launched == min(ref.n_iter + 2, max_iter + 1)  # two speculative steps at most
    assert torch.equal(got.low_rank, ref.low_rank) and torch.equal(got.sparse, ref.sparse)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(40, 41, 42), (40, 40, 40)])  # per-mode r-space path; batched (stacked) path
@pytest.mark.parametrize("overlap", [True, False])
def test_cuda_graph_pipelined_equals_eager_with_and_without_mask(monkeypatch, shape, overlap):
    """The captured step (with the change and, for a cube, the r-space preconditioners on a side stream, or all on
    one stream) driven two replays ahead gives the eager loop's iterations and answer."""
    import tensorrpca.scaledgd as sg

    monkeypatch.setattr(sg, "OVERLAP_CHANGE", overlap)
    sg.clear_graph_cache()
    p = synthetic_rpca(shape, (3, 3, 3), alpha=0.1, seed=5, dtype=torch.float32, device="cuda")
    obs = _missing(p.Y.shape, 0.3).cuda()
    for m in (None, obs):
        a = rpca(p.Y, (3, 3, 3), mask=m)
        b = rpca(p.Y, (3, 3, 3), mask=m, cuda_graph=False)
        assert a.n_iter == b.n_iter and a.low_rank.is_cuda
        assert rel_err(a.low_rank.cpu(), b.low_rank.cpu()) < 1e-5
        assert rel_err(a.low_rank.cpu(), p.low_rank.cpu()) < 1e-4


@pytest.mark.gpu
def test_cuda_graph_cache_reuse_gives_the_fresh_answer_and_leaves_earlier_results_alone():
    """A second call on the same CUDA tensor replays the cached graph: the same answer as a fresh capture, the
    first call's factors are not overwritten, and new content in the same storage is what gets fitted."""
    import tensorrpca.scaledgd as sg

    sg.clear_graph_cache()
    p = synthetic_rpca((40, 40, 40), (3, 3, 3), alpha=0.1, seed=6, dtype=torch.float32, device="cuda")
    q = synthetic_rpca((40, 40, 40), (3, 3, 3), alpha=0.1, seed=7, dtype=torch.float32, device="cuda")
    a = rpca(p.Y, (3, 3, 3))
    assert len(sg._GRAPH_CACHE) == 1
    kept = [U.clone() for U in a.factors], a.core.clone(), a.low_rank.clone()
    b = rpca(p.Y, (3, 3, 3))  # replays the cached graph
    assert len(sg._GRAPH_CACHE) == 1
    assert b.n_iter == a.n_iter and torch.equal(b.low_rank, a.low_rank)
    assert all(torch.equal(U, V) for U, V in zip(a.factors, kept[0]))
    assert torch.equal(a.core, kept[1]) and torch.equal(a.low_rank, kept[2])
    p.Y.copy_(q.Y)  # other data in the same storage
    c = rpca(p.Y, (3, 3, 3))
    sg.clear_graph_cache()
    d = rpca(p.Y, (3, 3, 3))
    assert c.n_iter == d.n_iter and torch.equal(c.low_rank, d.low_rank)
    assert rel_err(c.low_rank.cpu(), q.low_rank.cpu()) < 1e-4
    sg.clear_graph_cache()
    assert not sg._GRAPH_CACHE


def test_unfolded_unroll_validates_its_mask_like_forward():
    p = synthetic_rpca((10, 11, 12), (2, 2, 2), kappa=2, alpha=0.1, seed=9)
    net = UnfoldedRPCA((2, 2, 2), n_layers=3, params={"rho": 0.85, "eta": 0.6, "zeta0": 3.0, "zeta1": 1.0})
    obs = _missing(p.Y.shape, 0.3, seed=4)
    with torch.no_grad():
        a = net.unroll(p.Y, temperature=None, mask=obs.numpy())[-1]   # numpy boolean accepted
        b = net.unroll(p.Y, temperature=None, mask=obs)[-1]
    assert torch.equal(a, b)
    with pytest.raises(RPCAInputError):
        net.unroll(p.Y, temperature=None, mask=obs.double() * 0.3)    # a float mask is not a mask


def test_differentiable_step_with_missing_entries_equals_the_plain_step():
    """With missing entries the differentiable step (a threshold that requires grad: the unfolded network's path)
    rescales the residual by 1/p as the plain step does: the same iterate (float64)."""
    from tensorrpca.scaledgd import scaledgd_step, spectral_init

    p = synthetic_rpca((9, 10, 11), (2, 3, 2), kappa=2, alpha=0.1, seed=6, dtype=torch.float64)
    obs = torch.rand(p.Y.shape, generator=torch.Generator().manual_seed(2)) > 0.3
    Ym = p.Y.masked_fill(~obs, float("nan"))
    frac = float(obs.double().mean())
    f, c = spectral_init(p.Y, (2, 3, 2), 5.0)
    fa, ca = scaledgd_step(Ym, f, c, 1.0, 0.5, mode="soft", observed_fraction=frac)
    z = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    fb, cb = scaledgd_step(Ym, f, c, z, 0.5, mode="soft", observed_fraction=frac)
    assert cb.requires_grad  # the differentiable path ran
    torch.testing.assert_close(cb.detach(), ca, rtol=1e-10, atol=1e-12)
    for a, b in zip(fa, fb):
        torch.testing.assert_close(b.detach(), a, rtol=1e-10, atol=1e-12)
