"""``ebsdtk rpca`` on an HDF5 dataset."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from ebsd.cli import main
from tensorrpca.synthetic import synthetic_rpca


@pytest.fixture
def h5_input(tmp_path):
    p = synthetic_rpca((20, 22, 24), (2, 2, 2), alpha=0.1, seed=11)
    path = tmp_path / "in.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("grp/vol", data=p.Y.numpy())
    return path, p


def test_cli_rpca_writes_result(h5_input, tmp_path, capsys):
    path, p = h5_input
    out = tmp_path / "out.h5"
    rc = main(["rpca", str(path), "--dataset", "grp/vol", "--ranks", "2,2,2", "--out", str(out), "--no-progress"])
    assert rc == 0
    with h5py.File(out, "r") as g:
        X = g["low_rank"][()]
        assert X.shape == (20, 22, 24) and g["sparse"].shape == X.shape
        assert g["core"].shape == (2, 2, 2) and g["factors/U1"].shape == (22, 2)
        assert g.attrs["n_iter"] == len(g["history/rel_change"])
    err = np.linalg.norm(X - p.low_rank.numpy()) / np.linalg.norm(p.low_rank.numpy())
    assert err < 1e-6
    assert "wrote" in capsys.readouterr().out
    # no silent overwrite
    rc = main(["rpca", str(path), "--dataset", "grp/vol", "--ranks", "2,2,2", "--out", str(out), "--no-progress"])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("args,msg", [
    (["--dataset", "nope", "--ranks", "2,2,2"], "no dataset 'nope'"),
    (["--dataset", "grp/vol", "--ranks", "2,x"], "--ranks must be integers"),
    (["--dataset", "grp/vol", "--ranks", "30,2,2"], "rank 30 of mode 0"),
])
def test_cli_rpca_errors(h5_input, tmp_path, capsys, args, msg):
    path, _ = h5_input
    rc = main(["rpca", str(path), *args, "--out", str(tmp_path / "o.h5"), "--no-progress"])
    assert rc == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "o.h5").exists()
