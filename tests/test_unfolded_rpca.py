"""Deep-unfolded self-supervised ScaledGD RPCA: same output as rpca, training, reparameterisation, JSON."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from tensorrpca import RPCAInputError, RPCAParams, RPCAResult, UnfoldedRPCA, rpca
from tensorrpca.errors import RPCAFileExistsError
from tensorrpca.synthetic import synthetic_rpca
from tensorrpca.unfolded import label_free_loss, load_params, random_search


def rel_err(A, B):
    A, B = torch.as_tensor(A, dtype=torch.float64), torch.as_tensor(B, dtype=torch.float64)
    return float((A - B).norm() / B.norm())


def max_diff(a, b):
    return float((torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)).abs().max())


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rpca warns when it stops at max_iter, as asked here
        yield


def _same(res_a, res_b, tol=1e-6):
    assert max_diff(res_a.low_rank, res_b.low_rank) <= tol
    assert max_diff(res_a.sparse, res_b.sparse) <= tol
    assert max_diff(res_a.core, res_b.core) <= tol
    for Ua, Ub in zip(res_a.factors, res_b.factors):
        assert max_diff(Ua, Ub) <= tol
    assert res_a.n_iter == res_b.n_iter
    np.testing.assert_allclose([h["zeta"] for h in res_a.history], [h["zeta"] for h in res_b.history], rtol=1e-12)
    np.testing.assert_allclose(res_a.rel_changes, res_b.rel_changes, rtol=1e-6, atol=1e-12)


def test_default_network_equals_rpca_with_same_iterations():
    p = synthetic_rpca((20, 22, 24), (3, 4, 5), kappa=5, alpha=0.3, seed=0)
    K = 15
    net = UnfoldedRPCA((3, 4, 5), n_layers=K)  # data-derived thresholds, rho 0.9, eta 0.5: rpca's defaults
    ours, ref = net(p.Y), rpca(p.Y, (3, 4, 5), max_iter=K, tol=0.0)
    assert isinstance(ours, RPCAResult) and ours.n_iter == K
    _same(ours, ref)
    assert ours.params.zeta0 == pytest.approx(ref.params.zeta0, rel=1e-12)
    assert ours.params.zeta1 == pytest.approx(ref.params.zeta1, rel=1e-12)
    # explicit hyperparameters (as learned), numpy in -> numpy out, and more iterations than layers
    hp = {"zeta0": 0.8 * ref.params.zeta0, "zeta1": 1.3 * ref.params.zeta1, "rho": 0.8, "eta": 0.7}
    Yn = p.Y.numpy()
    ours = UnfoldedRPCA((3, 4, 5), n_layers=K, params=hp)(Yn, n_iter=25)
    ref = rpca(Yn, (3, 4, 5), max_iter=25, tol=0.0, params=hp)
    assert isinstance(ours.low_rank, np.ndarray) and ours.low_rank.dtype == Yn.dtype
    _same(ours, ref)
    # a per-layer model with equal layers runs the same schedule
    pl = UnfoldedRPCA((3, 4, 5), n_layers=K, per_layer=True, params={**hp, "rho": [0.8] * K, "eta": [0.7] * K})
    _same(pl(Yn, n_iter=25), ref, tol=1e-6)


def test_soft_threshold_and_matrix_equal_rpca():
    p = synthetic_rpca((30, 40), (3, 3), kappa=2, alpha=0.1, seed=1)
    ref = rpca(p.Y, (3, 3), max_iter=12, tol=0.0, threshold="soft")
    _same(UnfoldedRPCA((3, 3), n_layers=12, threshold="soft")(p.Y), ref)


def test_unrolled_network_is_the_exact_iteration_at_zero_temperature():
    p = synthetic_rpca((16, 18, 20), (3, 3, 3), kappa=3, alpha=0.2, seed=2)
    net = UnfoldedRPCA((3, 3, 3), n_layers=8).init_from_data([p.Y])
    exact = net(p.Y).low_rank
    Xs = net.unroll(p.Y, temperature=None)
    assert len(Xs) == 8 and max_diff(Xs[-1].detach(), exact) <= 1e-9
    # the smooth gate converges to the hard mask
    assert max_diff(net.unroll(p.Y, temperature=1e-7)[-1].detach(), exact) <= 1e-5
    # and is differentiable in all four hyperparameters (nonzero, finite gradients)
    loss = label_free_loss(p.Y, net.unroll(p.Y, temperature=0.2)[-1])
    loss.backward()
    for name in ("log_zeta0", "log_zeta1", "logit_rho", "logit_eta"):
        g = getattr(net, name).grad
        assert g is not None and bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0, name


def test_reparameterisation_keeps_values_valid():
    net = UnfoldedRPCA(3, n_layers=4, per_layer=True)
    with torch.no_grad():
        net.log_zeta0.fill_(-50.0)
        net.log_zeta1.fill_(40.0)
        net.logit_rho.copy_(torch.tensor([-30.0, 0.0, 5.0, 30.0]))
        net.logit_eta.copy_(torch.tensor([-30.0, 0.0, 5.0, 30.0]))
    z0, z1, rho, eta = net._values()
    assert float(z0) > 0 and float(z1) > 0
    for v in (rho, eta):
        assert bool(((v > 0) & (v <= 1)).all())
    assert float(torch.sigmoid(torch.tensor(5.0, dtype=torch.float64))) == pytest.approx(float(rho[2]))
    with pytest.raises(RPCAInputError, match="rho"):
        UnfoldedRPCA(3, params={"rho": 1.0})
    with pytest.raises(RPCAInputError, match="eta"):
        UnfoldedRPCA(3, params={"eta": 1.5})
    with pytest.raises(RPCAInputError, match="zeta1"):
        UnfoldedRPCA(3, params={"zeta1": -1.0})
    with pytest.raises(RPCAInputError, match="n_layers"):
        UnfoldedRPCA(3, n_layers=0)
    with pytest.raises(RPCAInputError, match="rank"):
        UnfoldedRPCA(30)(torch.zeros(10, 10, 10))


def test_training_on_three_observations_lowers_label_free_loss_and_true_error():
    R = (4, 4, 4)
    obs = [synthetic_rpca((16, 16, 16), R, kappa=3, alpha=0.5, magnitude=10, seed=s) for s in (1, 2, 3)]
    Ys = [o.Y for o in obs]
    net = UnfoldedRPCA(R, n_layers=8).init_from_data(Ys)

    def true_err():
        return float(np.mean([rel_err(net(o.Y).low_rank, o.low_rank) for o in obs]))

    loss0, err0 = net.objective(Ys), true_err()
    net.fit([Y.numpy() for Y in Ys], epochs=6, lr=0.1, seed=0)  # numpy observations are accepted
    loss1, err1 = net.objective(Ys), true_err()
    assert len(net.fit_history) == 6 and all(math.isfinite(r["loss"]) for r in net.fit_history)
    assert loss1 < loss0 - 0.01, (loss0, loss1)  # exact (hard-threshold) label-free loss
    assert err1 < 0.5 * err0, (err0, err1)
    # the label-free loss is bounded below by ||S*||_1 / ||Y||_1 only approximately; it stays positive
    assert loss1 > 0


def test_fit_input_checks():
    net = UnfoldedRPCA(3, n_layers=3)
    with pytest.raises(RPCAInputError, match="list"):
        net.fit(torch.zeros(8, 8, 8))
    with pytest.raises(RPCAInputError, match="at least one"):
        net.fit([])
    with pytest.raises(RPCAInputError, match="targets"):
        net.fit([torch.randn(8, 8, 8)], targets=[])
    with pytest.raises(RPCAInputError, match="NaN"):
        net.fit([torch.full((8, 8, 8), float("nan"))])
    with pytest.raises(RPCAInputError, match="unset"):
        net.unroll(torch.randn(8, 8, 8, dtype=torch.float64))


def test_json_round_trip_and_rpca_uses_learned_params(tmp_path):
    p = synthetic_rpca((16, 18, 20), (3, 3, 3), kappa=3, alpha=0.2, seed=4)
    net = UnfoldedRPCA((3, 3, 3), n_layers=6, params={"zeta0": 7.25, "zeta1": 0.61, "rho": 0.83, "eta": 0.71})
    path = net.save(tmp_path / "learned.json")
    with pytest.raises(RPCAFileExistsError, match="overwrite=True"):
        net.save(path)
    back = UnfoldedRPCA.load(path)
    assert back.hyperparameters() == pytest.approx(net.hyperparameters(), rel=1e-14)
    assert back.ranks == [3, 3, 3] and back.n_layers == 6 and not back.per_layer
    learned = load_params(path)
    assert isinstance(learned, RPCAParams)
    assert (learned.zeta0, learned.zeta1, learned.rho, learned.eta) == pytest.approx((7.25, 0.61, 0.83, 0.71), rel=1e-14)
    _same(back(p.Y, n_iter=10), rpca(p.Y, (3, 3, 3), max_iter=10, tol=0.0, params=learned))
    # the JSON "params" go straight to rpca, too
    raw = json.loads(path.read_text())["params"]
    _same(back(p.Y, n_iter=10), rpca(p.Y, (3, 3, 3), max_iter=10, tol=0.0, params=raw))
    # per-layer schedules round-trip but are not rpca parameters
    pl = UnfoldedRPCA(3, n_layers=3, per_layer=True,
                      params={"zeta0": 2.0, "zeta1": 1.0, "rho": [0.9, 0.8, 0.7], "eta": [0.5, 0.6, 0.7]})
    pl.save(tmp_path / "pl.json")
    hp_back, hp = UnfoldedRPCA.load(tmp_path / "pl.json").hyperparameters(), pl.hyperparameters()
    assert hp_back.keys() == hp.keys()
    for k in hp:
        assert np.asarray(hp_back[k]) == pytest.approx(np.asarray(hp[k]), rel=1e-14), k
    assert hp["rho"] == pytest.approx([0.9, 0.8, 0.7], rel=1e-14)
    with pytest.raises(RPCAInputError, match="per-layer"):
        load_params(tmp_path / "pl.json")
    with pytest.raises(RPCAInputError, match="per_layer"):
        pl.params()
    (tmp_path / "bad.json").write_text('{"hello": 1}')
    with pytest.raises(RPCAInputError, match="not an UnfoldedRPCA"):
        load_params(tmp_path / "bad.json")


def test_random_search_starts_from_defaults_and_is_seeded():
    obs = [synthetic_rpca((14, 15, 16), (3, 3, 3), kappa=2, alpha=0.4, seed=s).Y for s in (5, 6)]
    a = random_search(obs, (3, 3, 3), n_layers=5, n_trials=6, seed=3)
    b = random_search(obs, (3, 3, 3), n_layers=5, n_trials=6, seed=3)
    assert [t["objective"] for t in a.trials] == [t["objective"] for t in b.trials]
    assert a.objective == min(t["objective"] for t in a.trials) <= a.trials[0]["objective"]
    net = UnfoldedRPCA((3, 3, 3), n_layers=5).init_from_data(obs)
    assert a.trials[0]["objective"] == pytest.approx(net.objective(obs), rel=1e-12)
    best = UnfoldedRPCA((3, 3, 3), n_layers=5, params=a.params)
    assert best.objective(obs) == pytest.approx(a.objective, rel=1e-12)


def test_soft_threshold_network_trains_through_the_step_itself():
    p = synthetic_rpca((14, 15, 16), (3, 3, 3), kappa=2, alpha=0.2, seed=7)
    net = UnfoldedRPCA((3, 3, 3), n_layers=5, threshold="soft").init_from_data([p.Y])
    Xs = net.unroll(p.Y, temperature=0.1)  # the temperature is ignored for soft thresholding
    assert max_diff(Xs[-1].detach(), net(p.Y).low_rank) <= 1e-9
    label_free_loss(p.Y, Xs[-1]).backward()
    assert float(net.log_zeta1.grad.abs()) > 0 and float(net.logit_eta.grad.abs().sum()) > 0
