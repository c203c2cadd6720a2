"""Missing voxels in the EBSD uses of tensor RPCA: ``ebsdtk rpca`` (NaN entries and ``--mask``) and the batch
task / :func:`ebsd.batch.tiled_rpca` (not-indexed and not-measured voxels are missing, not corrupted)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from ebsd import batch
from ebsd.cli import main
from ebsd.errors import EBSDValueError
from tensorrpca.synthetic import synthetic_rpca


def _problem(shape=(12, 24, 26), ranks=(2, 2, 2), miss=0.25, seed=3):
    p = synthetic_rpca(shape, ranks, kappa=2, alpha=0.1, seed=seed, dtype=torch.float32)
    g = np.random.default_rng(seed)
    observed = g.random(shape) >= miss
    return p, observed


def _err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_cli_rpca_nan_and_mask_are_missing(tmp_path, capsys):
    p, observed = _problem()
    Y = p.Y.numpy().copy()
    half = observed.copy()
    half[:, :, :13] = True  # left half: missing coded by the mask; right half: by NaN
    Y[:, :, 13:][~observed[:, :, 13:]] = np.nan
    Y[:, :, :13][~observed[:, :, :13]] = 123.0  # not measured: a made-up value that must not matter
    path = tmp_path / "in.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("vol", data=Y)
        f.create_dataset("indexed", data=np.where(np.arange(26)[None, None, :] < 13, observed, True).astype(np.uint8))
    out = tmp_path / "out.h5"
    rc = main(["rpca", str(path), "--dataset", "vol", "--mask", "indexed", "--ranks", "2,2,2", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "missing" in text and f"{int((~observed).sum())} of {observed.size}" in text
    with h5py.File(out) as g:
        X, S, obs = g["low_rank"][()], g["sparse"][()], g["observed"][()]
    assert np.array_equal(obs, observed)
    assert np.isfinite(X).all() and np.all(S[~observed] == 0)
    assert _err(X, p.low_rank.numpy()) < 1e-4


def test_cli_rpca_bad_mask(tmp_path, capsys):
    path = tmp_path / "in.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("vol", data=np.ones((5, 6, 7), dtype=np.float32))
        f.create_dataset("m", data=np.ones((5, 6), dtype=bool))
    for m, msg in (("m", "shape"), ("nope", "no mask dataset")):
        rc = main(["rpca", str(path), "--dataset", "vol", "--mask", m, "--ranks", "1,1,1", "--out",
                   str(tmp_path / "o.h5"), "--no-progress"])
        assert rc == 2 and msg in capsys.readouterr().err
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("tile", [None, 16])
def test_tiled_rpca_with_missing_voxels(tile):
    p, observed = _problem(shape=(10, 32, 32), miss=0.2, seed=4)
    Y = p.Y.numpy().copy()
    Y[~observed] = np.nan
    low, sparse, info = batch.tiled_rpca(Y, (2, 2, 2), tile=tile, halo=4, mask=observed)
    assert info["tiles"] == (1 if tile is None else 4) and info["empty_tiles"] == 0
    assert np.isfinite(low).all() and np.all(sparse[~observed] == 0)
    assert _err(low, p.low_rank.numpy()) < 1e-4
    with pytest.raises(EBSDValueError, match="mask"):
        batch.tiled_rpca(Y, (2, 2, 2), mask=observed[:5])


def test_tiled_rpca_window_without_observed_voxels_is_nan():
    p, observed = _problem(shape=(8, 32, 32), miss=0.1, seed=5)
    observed[:, 16:, 16:] = False  # one whole tile never measured
    low, sparse, info = batch.tiled_rpca(p.Y.numpy(), (2, 2, 2), tile=16, halo=0, mask=observed)
    assert info["empty_tiles"] == 1
    assert np.isnan(low[:, 16:, 16:]).all() and np.all(sparse[:, 16:, 16:] == 0)
    assert np.isfinite(low[:, :16]).all()


def test_batch_rpca_leaves_not_indexed_voxels_out(tmp_path):
    from ebsd.io import save_volume
    from ebsd.synthetic import synthetic_volume

    p, observed = _problem(shape=(8, 24, 24), miss=0.15, seed=6)
    inp = tmp_path / "in"
    inp.mkdir()
    v = synthetic_volume((8, 24, 24), mean_grain_size=10, seed=1)
    Y = p.Y.clone()
    Y[torch.from_numpy(~observed)] = 0.0  # what a reader leaves in not-indexed voxels
    v.image_quality = Y
    v.valid = torch.from_numpy(observed)
    save_volume(v, inp / "holes.dream3d")
    recs = {}
    for obs in ("valid", "all"):
        (r,) = batch.run("rpca", inp, tmp_path / obs, workers=1, processes=False, progress=False, ranks=(2, 2, 2),
                         observed=obs)
        assert r["status"] == "ok"
        with h5py.File(tmp_path / obs / "holes.rpca.h5") as f:
            recs[obs] = (f["low_rank"][()], r["metrics"])
    assert recs["valid"][1]["n_missing"] == int((~observed).sum()) and recs["all"][1]["n_missing"] == 0
    assert _err(recs["valid"][0], p.low_rank.numpy()) < 1e-4     # the holes are filled in from the rest
    with pytest.raises(EBSDValueError, match="observed"):
        batch.run("rpca", inp, tmp_path / "x", progress=False, observed="indexed")


def test_tiled_rpca_reports_empty_windows_as_not_converged_and_refuses_an_empty_mask():
    p, observed = _problem(shape=(8, 32, 32), miss=0.1, seed=5)
    observed[:, 16:, 16:] = False
    _, _, info = batch.tiled_rpca(p.Y.numpy(), (2, 2, 2), tile=16, halo=0, mask=observed)
    assert info["converged"] is False  # a NaN window was never fitted
    _, _, info_full = batch.tiled_rpca(p.Y.numpy(), (2, 2, 2), tile=16, halo=0, mask=np.ones_like(observed))
    assert info_full["empty_tiles"] == 0
    with pytest.raises(EBSDValueError, match="no voxel"):
        batch.tiled_rpca(p.Y.numpy(), (2, 2, 2), tile=16, halo=0, mask=np.zeros_like(observed))


def test_batch_rpca_valid_leaves_recovered_not_measured_voxels_out(tmp_path):
    """Voxels filled by slice recovery are valid but not measured: their values are estimates, so the default
    observed='valid' treats them as missing (a planted wrong value there must not reach the fit)."""
    from ebsd.io import save_volume
    from ebsd.synthetic import synthetic_volume

    p, observed = _problem(shape=(8, 24, 24), miss=0.15, seed=6)
    inp = tmp_path / "in"
    inp.mkdir()
    v = synthetic_volume((8, 24, 24), mean_grain_size=10, seed=1)
    Y = p.Y.clone()
    est = torch.from_numpy(~observed)
    Y[est] = 50.0                                  # "recovered" voxels carrying made-up values
    v.image_quality = Y
    v.valid = torch.ones(8, 24, 24, dtype=torch.bool)
    v.measured = ~est
    save_volume(v, inp / "rec.dream3d")
    (r,) = batch.run("rpca", inp, tmp_path / "out", workers=1, processes=False, progress=False, ranks=(2, 2, 2))
    assert r["status"] == "ok" and r["metrics"]["n_missing"] == int(est.sum())
    with h5py.File(tmp_path / "out" / "rec.rpca.h5") as f:
        low = f["low_rank"][()]
    assert _err(low, p.low_rank.numpy()) < 1e-4  # the estimated voxels are filled in from the measured ones


def test_cli_rpca_nan_in_a_float_mask_is_missing(tmp_path):
    p, observed = _problem(shape=(10, 20, 22), miss=0.2, seed=8)
    Y = p.Y.numpy().copy()
    M = np.ones_like(Y)
    M[~observed] = np.nan
    Y[~observed] = 1e3                               # garbage where the mask says "unknown"
    path, out = tmp_path / "v.h5", tmp_path / "o.h5"
    with h5py.File(path, "w") as f:
        f["vol"] = Y
        f["m"] = M
    rc = main(["rpca", str(path), "--dataset", "vol", "--mask", "m", "--ranks", "2,2,2", "--out", str(out)])
    assert rc == 0
    with h5py.File(out) as f:
        assert np.array_equal(f["observed"][()].astype(bool), observed)
        assert _err(f["low_rank"][()], p.low_rank.numpy()) < 1e-4
