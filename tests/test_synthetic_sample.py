"""The bundled sample ``data/sample_volume.dream3d`` is what ``scripts/make_sample_data.py`` makes."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ebsd.io import load_volume
from ebsd.synthetic import synthetic_volume

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("make_sample_data", REPO / "scripts" / "make_sample_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bundled_sample_matches_generator():
    mod = _script()
    path = REPO / "data" / "sample_volume.dream3d"
    assert path.stat().st_size < 2e6
    vol = load_volume(path)
    # if this fails after a change of ebsd.synthetic, regenerate: python scripts/make_sample_data.py --overwrite
    assert vol.equals(synthetic_volume(**mod.SAMPLE_KWARGS))
    assert vol.symmetry == "m-3m"
    for z in mod.SAMPLE_MISSING:
        assert not vol.valid[z].any() and (vol.confidence[z] == 0).all()
    assert vol.valid[[z for z in range(vol.shape[0]) if z not in mod.SAMPLE_MISSING]].float().mean() > 0.98


def test_make_sample_data_script(tmp_path):
    out = tmp_path / "s.dream3d"
    assert _script().main(["--out", str(out)]) == 0
    assert load_volume(out).equals(load_volume(REPO / "data" / "sample_volume.dream3d"))
    assert torch.equal(load_volume(out).valid, load_volume(REPO / "data" / "sample_volume.dream3d").valid)
