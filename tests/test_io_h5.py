"""EDAX OIM .h5 and DREAM.3D H5EBSD readers, on small files built with h5py after the documented layouts."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from _io_files import random_volume, write_h5ebsd, write_oim_h5
from ebsd import EBSDFormatError, EBSDValueError
from ebsd.io import detect_format, load_volume


def test_oim_single_scan(tmp_path):
    vol = random_volume((1, 5, 6), seed=1)
    p = write_oim_h5(tmp_path / "scan.h5", vol)
    assert detect_format(p) == "h5oim"
    back = load_volume(p, z_spacing=0.5)
    assert back.equals(vol, atol=1e-6)
    assert back.phase_info[2].symmetry == "6/mmm"
    assert back.phase_info[2].lattice[-1] == pytest.approx(120.0)
    assert back.metadata["manufacturer"] == "EDAX"


def test_oim_several_scans_stack_or_pick(tmp_path):
    vol = random_volume((3, 4, 5), seed=2)
    p = write_oim_h5(tmp_path / "multi.h5", vol, scans=["Scan 1", "Scan 2", "Scan 10"])
    with pytest.warns(UserWarning, match="z spacing"):
        stacked = load_volume(p)
    assert stacked.shape == (3, 4, 5)
    assert load_volume(p, z_spacing=0.5).equals(vol, atol=1e-6)
    one = load_volume(p, scan="Scan 10")
    assert one.shape == (1, 4, 5) and torch.allclose(one.quaternions[0].abs(), vol.quaternions[2].abs(), atol=1e-6)
    assert load_volume(p, scan=1).metadata["scans"] == ["Scan 2"]
    with pytest.raises(EBSDValueError, match="no scan"):
        load_volume(p, scan="Scan 7")


def test_oim_scans_with_different_grids_need_scan(tmp_path):
    p = tmp_path / "two.h5"
    write_oim_h5(p, random_volume((1, 4, 5)), scans=["A"])
    with h5py.File(p, "a") as f, h5py.File(write_oim_h5(tmp_path / "b.h5", random_volume((1, 3, 5)), scans=["B"]), "r") as g:
        g.copy("B", f)
    with pytest.raises(EBSDFormatError, match="scan="):
        load_volume(p)
    assert load_volume(p, scan="B").shape == (1, 3, 5)


def test_oim_hexgrid_and_missing_parts(tmp_path):
    p = write_oim_h5(tmp_path / "hex.h5", random_volume((1, 3, 4)), grid="HexGrid")
    with pytest.raises(EBSDFormatError, match="HexGrid"):
        load_volume(p)
    p = write_oim_h5(tmp_path / "nophase.h5", random_volume((1, 3, 4)))
    with h5py.File(p, "a") as f:
        del f["Scan 1/EBSD/Header/Phase"]
    with pytest.raises(EBSDFormatError, match="Phase group"):
        load_volume(p)
    p = write_oim_h5(tmp_path / "short.h5", random_volume((1, 3, 4)))
    with h5py.File(p, "a") as f:
        del f["Scan 1/EBSD/Data/Phi"]
        f["Scan 1/EBSD/Data/Phi"] = np.zeros(5, np.float32)
    with pytest.raises(EBSDFormatError, match="Phi has 5 values, expected nRows x nColumns = 12"):
        load_volume(p)


@pytest.mark.parametrize("stacking", [0, 1])
def test_h5ebsd(tmp_path, stacking):
    vol = random_volume((4, 5, 3), seed=3)
    p = write_h5ebsd(tmp_path / "v.h5ebsd", vol, z_start=1, stacking=stacking)
    assert detect_format(p) == "h5ebsd"
    back = load_volume(p)
    assert back.equals(vol, atol=1e-6)
    assert back.spacing == pytest.approx(vol.spacing)
    assert back.metadata["SampleTransformationAngle"] == [180.0]


def test_h5ebsd_missing_slice_and_manufacturer(tmp_path):
    vol = random_volume((3, 2, 2))
    p = write_h5ebsd(tmp_path / "v.h5ebsd", vol)
    with h5py.File(p, "a") as f:
        del f["2"]
    with pytest.raises(EBSDFormatError, match=r"slice group\(s\) \[2\]"):
        load_volume(p)
    p = write_h5ebsd(tmp_path / "hkl.h5ebsd", vol)
    with h5py.File(p, "a") as f:
        del f["Manufacturer"]
        f["Manufacturer"] = np.bytes_("HKL")
    with pytest.raises(EBSDFormatError, match="HKL"):
        load_volume(p)


def test_unknown_hdf5(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f["x"] = 1
    with pytest.raises(EBSDFormatError, match="neither DREAM.3D"):
        load_volume(p)


def test_synthetic_with_missing_slice_through_oim_and_h5ebsd(tmp_path):
    """Phase 0 = not indexed in a single-phase stack, even in a slice that holds only phase 0."""
    from ebsd.synthetic import synthetic_volume

    vol = synthetic_volume((4, 6, 7), mean_grain_size=3, symmetry="m-3m", seed=3, unindexed_fraction=0.1,
                           missing_slices=[2], spacing=(0.5, 0.25, 0.25))
    assert load_volume(write_oim_h5(tmp_path / "s.h5", vol), z_spacing=0.5).equals(vol, atol=1e-6)
    assert load_volume(write_h5ebsd(tmp_path / "s.h5ebsd", vol)).equals(vol, atol=1e-6)
