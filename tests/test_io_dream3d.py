"""DREAM.3D .dream3d reader/writer: exact round trip, the layout DREAM.3D 6.x expects, quaternion convention."""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch

from _io_files import random_volume
from ebsd import EBSDFileExistsError, EBSDFormatError, Phase
from ebsd.io import load_volume, save_volume
from ebsd.io.dream3d import read_dream3d


def _synthetic():
    try:
        from ebsd.synthetic import synthetic_volume
    except Exception:
        return random_volume((4, 8, 9), seed=3)
    return synthetic_volume((5, 12, 14), mean_grain_size=4, symmetry="6/mmm", seed=7, unindexed_fraction=0.1,
                            noise_deg=0.5, missing_slices=[1], spacing=(0.5, 0.25, 0.25))


@pytest.mark.parametrize("make", [_synthetic, lambda: random_volume((3, 5, 6), seed=2)])
def test_round_trip_exact(tmp_path, make):
    vol = make()
    vol.metadata["recovered_slices"] = [1, 2]
    vol.origin = (1.25, -0.5, 3.0)
    p = save_volume(vol, tmp_path / "v.dream3d")
    back = load_volume(p)
    assert back.equals(vol)  # atol 0: bit-exact quaternions, phases, CI, IQ, valid
    assert torch.equal(back.quaternions, vol.quaternions)
    assert back.spacing == vol.spacing and back.origin == vol.origin
    assert back.phase_info == vol.phase_info
    assert back.metadata["recovered_slices"] == [1, 2]
    assert back.metadata["format"] == "dream3d"


def test_layout_matches_dream3d(tmp_path):
    vol = random_volume((3, 4, 5))
    p = save_volume(vol, tmp_path / "v.dream3d")
    with h5py.File(p, "r") as f:
        assert f.attrs["FileVersion"] == b"7.0"
        assert "DataContainerBundles" in f and "Pipeline" in f
        dc = f["DataContainers/ImageDataContainer"]
        assert list(dc["_SIMPL_GEOMETRY/DIMENSIONS"][()]) == [5, 4, 3]  # x, y, z
        assert np.allclose(dc["_SIMPL_GEOMETRY/SPACING"][()], [0.25, 0.25, 0.5])
        assert dc["_SIMPL_GEOMETRY"].attrs["GeometryType"][0] == 0
        cell = dc["CellData"]
        assert cell.attrs["AttributeMatrixType"][0] == 3
        assert list(cell.attrs["TupleDimensions"]) == [5, 4, 3]
        e = cell["EulerAngles"]
        assert e.shape == (3, 4, 5, 3) and e.dtype == np.float32
        assert list(e.attrs["ComponentDimensions"]) == [3]
        assert e.attrs["ObjectType"] == b"DataArray<float>"
        assert e.attrs["DataArrayVersion"][0] == 2
        assert cell["Phases"].shape == (3, 4, 5, 1) and cell["Phases"].dtype == np.int32
        assert cell["Phases"].attrs["ObjectType"] == b"DataArray<int32_t>"
        assert cell["Quats"].shape == (3, 4, 5, 4)
        assert cell["Mask"].attrs["ObjectType"] == b"DataArray<bool>"
        for name in ("Confidence Index", "Image Quality"):
            assert cell[name].shape == (3, 4, 5, 1)
        ens = dc["CellEnsembleData"]
        assert ens.attrs["AttributeMatrixType"][0] == 11
        assert ens["CrystalStructures"][()].ravel().tolist() == [999, 1, 0]  # unknown, Cubic_High, Hexagonal_High
        assert ens["LatticeConstants"].shape == (3, 6)
        assert [s.decode() for s in ens["MaterialName"][()]][1:] == ["Nickel", "Titanium (Alpha)"]
        # string attribute type: fixed length, NUL-terminated (what DREAM.3D's H5Lite writes and reads)
        tid = e.attrs.get_id("ObjectType").get_type()
        assert tid.get_strpad() == h5py.h5t.STR_NULLTERM and not tid.is_variable_str()


def _ebsdlib_eu2qu_vector_first(e):
    """EbsdLib's eu2qu (epsijk = +1, passive), output (x, y, z, w) as stored in DREAM.3D's Quats."""
    p1, P, p2 = e
    c, s = math.cos(P / 2), math.sin(P / 2)
    w, x, y, z = (c * math.cos((p1 + p2) / 2), -s * math.cos((p1 - p2) / 2), -s * math.sin((p1 - p2) / 2),
                  -c * math.sin((p1 + p2) / 2))
    if w < 0:
        w, x, y, z = -w, -x, -y, -z
    return [x, y, z, w]


def test_quaternion_convention_is_dream3d(tmp_path):
    vol = random_volume((1, 2, 3), seed=11)
    p = save_volume(vol, tmp_path / "v.dream3d")
    with h5py.File(p, "r") as f:
        cell = f["DataContainers/ImageDataContainer/CellData"]
        eul = cell["EulerAngles"][()].reshape(-1, 3).astype(np.float64)
        quats = cell["Quats"][()].reshape(-1, 4).astype(np.float64)
    for e, q in zip(eul, quats):
        ref = np.array(_ebsdlib_eu2qu_vector_first(e))
        assert min(np.abs(ref - q).max(), np.abs(ref + q).max()) < 1e-5


def test_euler_only_file(tmp_path):
    """A file as DREAM.3D writes it after reading .ang (no Quats, no Mask): orientations from EulerAngles,
    valid from phase > 0 and CI >= 0."""
    vol = random_volume((2, 3, 4), seed=4)
    p = save_volume(vol, tmp_path / "v.dream3d")
    with h5py.File(p, "r+") as f:
        cell = f["DataContainers/ImageDataContainer/CellData"]
        del cell["Quats"], cell["Mask"]
        del f["EBSDTK"]
    back = load_volume(p)
    assert back.equals(vol, atol=2e-6)
    assert back.metadata.get("recovered_slices") is None


def test_phase_zero_and_gaps(tmp_path):
    vol = random_volume((2, 3, 4), seed=5, two_phase=False)
    vol.phase_info = {0: Phase("A", "m-3m"), 3: Phase("B", "4/mmm", (3.0, 3.0, 5.0, 90.0, 90.0, 90.0))}
    vol.phases = torch.where(vol.phases == 1, 0, 3).to(torch.int32)
    p = save_volume(vol, tmp_path / "v.dream3d")
    back = load_volume(p)
    assert back.equals(vol) and back.phase_info == vol.phase_info


def test_overwrite_and_no_temp_left(tmp_path):
    vol = random_volume((2, 3, 4))
    p = save_volume(vol, tmp_path / "v.dream3d")
    with pytest.raises(EBSDFileExistsError):
        save_volume(vol, p)
    save_volume(random_volume((2, 3, 4), seed=8), p, overwrite=True)
    assert [q.name for q in tmp_path.iterdir()] == ["v.dream3d"]


def test_container_choice_and_errors(tmp_path):
    vol = random_volume((2, 3, 4))
    p = save_volume(vol, tmp_path / "v.dream3d")
    assert read_dream3d(p, container="ImageDataContainer").equals(vol)
    with pytest.raises(EBSDFormatError, match="no data container 'Nope'"):
        read_dream3d(p, container="Nope")
    with h5py.File(p, "r+") as f:
        del f["DataContainers/ImageDataContainer/CellEnsembleData"]
    with pytest.raises(EBSDFormatError, match="CrystalStructures"):
        load_volume(p)


def test_wrong_shape_is_named(tmp_path):
    vol = random_volume((2, 3, 4))
    p = save_volume(vol, tmp_path / "v.dream3d")
    with h5py.File(p, "r+") as f:
        cell = f["DataContainers/ImageDataContainer/CellData"]
        del cell["Phases"]
        cell["Phases"] = np.ones((2, 3, 5, 1), np.int32)
    with pytest.raises(EBSDFormatError, match=r"Phases has shape \(2, 3, 5, 1\)") as exc:
        load_volume(p)
    assert str(p) in str(exc.value)


def test_slab_reading_matches(tmp_path, monkeypatch):
    """Force tiny slabs so the chunked path runs over many slabs."""
    import ebsd.io.dream3d as d3

    vol = random_volume((7, 5, 6), seed=6)
    p = save_volume(vol, tmp_path / "v.dream3d")
    monkeypatch.setattr(d3, "_SLAB_BYTES", 100)
    assert load_volume(p).equals(vol)


def test_saved_files_are_not_private_and_foreign_folders_are_never_replaced(tmp_path):
    import os
    import stat

    from ebsd.errors import EBSDFileExistsError, EBSDValueError
    from ebsd.io import load_volume, save_volume
    from ebsd.synthetic import synthetic_volume

    v = synthetic_volume(shape=(2, 8, 8), mean_grain_size=4, seed=1)
    old = os.umask(0o022)
    try:
        save_volume(v, tmp_path / "a.dream3d")
        save_volume(v, tmp_path / "slices", format="ang")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.dream3d").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "slices").st_mode) == 0o755
    save_volume(v, tmp_path / "slices", format="ang", overwrite=True)  # our own folder: replaced
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "thesis.txt").write_text("keep")
    with pytest.raises(EBSDFileExistsError):
        save_volume(v, tmp_path / "results", format="ang", overwrite=True)
    assert (tmp_path / "results" / "thesis.txt").read_text() == "keep"
    with pytest.raises(EBSDValueError):
        load_volume(tmp_path / "a.dream3d", z_spacing=-1)
