"""Oxford .h5oina, Bruker ESPRIT h5ebsd and EMsoft dictionary-indexing files, written by the tests following the
public specification (h5oina) or the layout orix's readers read (Bruker, EMsoft), checked against orix where orix
reads the format."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from _io_files import random_volume, write_bruker_h5, write_emsoft_h5, write_h5oina
from ebsd import EBSDFormatError, Phase
from ebsd.io import detect_format, load_volume


def _qdiff(q: torch.Tensor, qo: np.ndarray) -> np.ndarray:
    q = q.reshape(-1, 4).double().numpy()
    return np.minimum(np.abs(q - qo).max(1), np.abs(q + qo).max(1))


def _orix(path, **kw):
    from orix import io

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return io.load(str(path), **kw)


# ------------------------------------------------------------------------------------------------ .h5oina
def test_h5oina_single_slice(tmp_path):
    vol = random_volume((1, 4, 5), seed=2)
    p = write_h5oina(tmp_path / "map.h5oina", vol)
    assert detect_format(p) == "h5oina"
    back = load_volume(p)
    v = vol.valid
    assert back.shape == vol.shape and torch.equal(back.valid, v) and bool(back.measured.all())
    assert torch.equal(back.phases[v], vol.phases[v])
    assert _qdiff(back.quaternions[v], vol.quaternions[v].double().numpy()).max() < 1e-6  # float32 radians
    assert {k: (p.name, p.symmetry) for k, p in back.phase_info.items()} == \
        {1: ("Nickel", "m-3m"), 2: ("Titanium (Alpha)", "6/mmm")}
    assert np.allclose(back.phase_info[2].lattice, (2.95, 2.95, 4.68, 90, 90, 120), atol=1e-4)
    assert back.spacing[1:] == pytest.approx((0.25, 0.25))
    from ebsd.napari._reader import get_reader

    assert get_reader(str(p)) is not None


def test_h5oina_slices_stack_and_outside_area_is_not_measured(tmp_path):
    vol = random_volume((3, 4, 5), seed=4)
    outside = np.zeros(vol.shape, bool)
    outside[1, 0, :2] = True  # an irregular acquisition area: NaN there
    p = write_h5oina(tmp_path / "stack.h5oina", vol, outside=outside)
    with pytest.warns(UserWarning, match="2 pixel"):
        back = load_volume(p, z_spacing=0.5)
    assert back.shape == (3, 4, 5) and back.spacing[0] == 0.5
    assert torch.equal(back.measured, torch.from_numpy(~outside))
    assert torch.equal(back.valid, vol.valid & back.measured)
    one = load_volume(p, scan="3")
    assert one.shape == (1, 4, 5) and torch.equal(one.phases[0], back.phases[2])


def test_h5oina_odd_slice_named(tmp_path):
    import h5py

    p = write_h5oina(tmp_path / "odd.h5oina", random_volume((3, 4, 5), seed=1))
    with h5py.File(p, "a") as f:
        del f["2/EBSD/Header/X Step"]
        f["2/EBSD/Header/X Step"] = np.array([0.5], np.float32)
    with pytest.raises(EBSDFormatError, match=r"slice '2' is the first whose step differs"):
        load_volume(p, z_spacing=1.0)


# ------------------------------------------------------------------------------------------------ Bruker
@pytest.mark.parametrize("shuffle", [False, True])
def test_bruker_matches_orix(tmp_path, shuffle):
    vol = random_volume((1, 5, 6), seed=7)
    p = write_bruker_h5(tmp_path / "bruker.h5", vol, shuffle=shuffle)
    assert detect_format(p) == "bruker_h5ebsd"
    back = load_volume(p)
    xm = _orix(p)
    assert back.shape == (1, *xm.shape)
    assert {k: v.name for k, v in back.phase_info.items()} == {i: xm.phases[i].name for i in xm.phases.ids if i > 0}
    for i in (1, 2):
        from ebsd.orientation import get_symmetry

        assert back.phase_info[i].symmetry == get_symmetry(xm.phases[i].point_group.laue.name).name
    assert _qdiff(back.quaternions, xm.rotations.data).max() < 1e-6
    assert np.array_equal(back.valid.numpy().ravel(), xm.is_indexed)
    assert torch.equal(back.valid, vol.valid)


def test_bruker_scans_stack_and_irregular_roi(tmp_path):
    vol = random_volume((2, 4, 5), seed=8)
    drop = np.zeros((4, 5), bool)
    drop[3, 3:] = True
    p = write_bruker_h5(tmp_path / "roi.h5", vol, drop=drop, shuffle=True)
    with pytest.warns(UserWarning, match="not a rectangle"):
        back = load_volume(p, z_spacing=1.0)
    assert back.shape == (2, 4, 5)
    assert torch.equal(back.measured, torch.from_numpy(np.broadcast_to(~drop, (2, 4, 5)).copy()))
    keep = back.measured
    assert _qdiff(back.quaternions[keep & vol.valid], vol.quaternions[keep & vol.valid].double().numpy()).max() < 1e-5
    with pytest.raises(ValueError, match="rectangular"):  # orix refuses such a region of interest
        _orix(p)


def test_space_group_to_laue_matches_orix():
    from orix.crystal_map import Phase as OPhase

    from ebsd.io._common import laue_from_space_group
    from ebsd.orientation import get_symmetry

    for sg in range(1, 231):
        pg = OPhase(space_group=sg).point_group
        ref = pg.laue.name or {"m": "2/m"}[pg.name]  # orix 0.15 leaves the Laue name of point group m unset
        assert laue_from_space_group(sg) == get_symmetry(ref).name, sg
    assert laue_from_space_group(0) is None and laue_from_space_group(231) is None


# ------------------------------------------------------------------------------------------------ EMsoft
@pytest.mark.parametrize("refined", [False, True])
def test_emsoft_matches_orix(tmp_path, refined):
    vol = random_volume((1, 4, 6), seed=9, two_phase=False)
    p = write_emsoft_h5(tmp_path / "di.h5", vol)
    assert detect_format(p) == "emsoft"
    back = load_volume(p, refined=refined)
    xm = _orix(p, refined=refined)
    assert back.shape == (1, *xm.shape)
    assert back.phase_info[1].name == xm.phases[xm.phases.ids[0]].name == "Nickel"
    assert back.phase_info[1].symmetry == "m-3m"
    ref = xm.rotations.data  # (N, nnk, 4) top matches, or (N, 4) refined
    ref = ref[:, 0] if ref.ndim == 3 else ref
    assert _qdiff(back.quaternions, ref).max() < 1e-6
    if not refined:  # the best match is the orientation we put in the dictionary
        assert _qdiff(back.quaternions, vol.quaternions.double().numpy().reshape(-1, 4)).max() < 1e-5
    assert bool(back.valid.all())


def test_emsoft_refined_needs_the_dataset(tmp_path):
    p = write_emsoft_h5(tmp_path / "di.h5", random_volume((1, 2, 3), two_phase=False), refined=False)
    with pytest.raises(EBSDFormatError, match="RefinedEulerAngles"):
        load_volume(p, refined=True)
