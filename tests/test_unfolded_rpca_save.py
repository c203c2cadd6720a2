"""UnfoldedRPCA.save: the package's named error for an existing file; atomic write."""
from __future__ import annotations

import json
import os

import pytest

from tensorrpca import RPCAError, UnfoldedRPCA
from tensorrpca.errors import RPCAFileExistsError

PARAMS = {"zeta0": 7.25, "zeta1": 0.61, "rho": 0.83, "eta": 0.71}


def test_existing_file_raises_named_error_that_is_also_file_exists_error(tmp_path):
    net = UnfoldedRPCA((3, 3, 3), n_layers=6, params=PARAMS)
    path = net.save(tmp_path / "learned.json")
    before = path.read_text()
    other = UnfoldedRPCA((2, 2, 2), n_layers=4, params={**PARAMS, "rho": 0.5})
    with pytest.raises(RPCAFileExistsError, match=r"learned\.json.*overwrite=True") as info:
        other.save(path)
    assert isinstance(info.value, RPCAError) and isinstance(info.value, FileExistsError)
    assert path.read_text() == before
    # existing `except FileExistsError` handlers still catch it
    with pytest.raises(FileExistsError):
        other.save(path)
    # overwrite=True replaces it; no temporary files are left behind
    other.save(path, overwrite=True)
    back = UnfoldedRPCA.load(path)
    assert back.ranks == [2, 2, 2] and back.n_layers == 4
    assert back.hyperparameters()["rho"] == pytest.approx(0.5, rel=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["learned.json"]


def test_folder_path_is_refused_even_with_overwrite(tmp_path):
    net = UnfoldedRPCA(3, n_layers=2, params=PARAMS)
    (tmp_path / "d").mkdir()
    with pytest.raises(RPCAFileExistsError, match="is a folder"):
        net.save(tmp_path / "d", overwrite=True)
    assert (tmp_path / "d").is_dir() and not any((tmp_path / "d").iterdir())


def test_saved_file_has_plain_permissions(tmp_path):
    path = UnfoldedRPCA(3, n_layers=2, params=PARAMS).save(tmp_path / "p.json")
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~mask)
    assert json.loads(path.read_text())["n_layers"] == 2
