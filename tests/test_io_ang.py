"""EDAX/TSL .ang reader and writer, and .ang folders: real files vs orix, round trips, grid checks."""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch

from _io_files import random_volume
from ebsd import EBSDFileExistsError, EBSDFormatError, EBSDVolume
from ebsd.io import load_volume, save_volume
from ebsd.io.ang import read_ang, write_ang
from ebsd.io.ang_stack import list_ang_files

orix_io = pytest.importorskip("orix.io")


def _max_qdiff(q: torch.Tensor, qo: np.ndarray) -> float:
    q = q.reshape(-1, 4).double()
    qo = torch.from_numpy(np.asarray(qo, dtype=np.float64)).reshape(-1, 4)
    return float(torch.minimum((q - qo).abs().amax(-1), (q + qo).abs().amax(-1)).max())


def _orix_load(path):
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return orix_io.load(str(path))


# ------------------------------------------------------------------------------------------ real files
def test_dc06_matches_orix(shared_data):
    path = shared_data / "ang" / "DC06_2uniax.ang"
    vol = load_volume(path)
    assert vol.shape == (1, 101, 51)
    assert vol.spacing[1:] == (1.0, 1.0)
    assert vol.phase_info[1].name == "Iron (Alpha)"
    assert vol.phase_info[1].symmetry == "m-3m"
    assert vol.phase_info[1].lattice == (2.87, 2.87, 2.87, 90.0, 90.0, 90.0)
    # TSL single-phase convention: phase column 0 everywhere means phase 1
    assert torch.equal(vol.phases.unique(), torch.tensor([1], dtype=torch.int32))
    assert vol.fraction_indexed == 1.0
    xmap = _orix_load(path)
    assert _max_qdiff(vol.quaternions, xmap.rotations.data) < 1e-6
    assert np.allclose(vol.confidence.numpy().ravel(), xmap.prop["ci"], atol=1e-6)
    assert np.allclose(vol.image_quality.numpy().ravel(), xmap.prop["iq"], rtol=1e-6)
    assert vol.metadata["ang_columns"] == 14
    assert any("x-star" in line for line in vol.metadata["ang_header"])


def test_acom_malformed_grid_line_and_ci_minus_one(shared_data):
    path = shared_data / "ang" / "ACOM.ang"
    vol = load_volume(path)
    assert vol.shape == (1, 15, 15)
    # ACOM (ASTAR) coordinates are nm, as orix assumes: 2 nm = 0.002 um
    assert vol.spacing[1:] == pytest.approx((0.002, 0.002))
    assert vol.phase_info[1].symmetry == "m-3m"
    ci = vol.confidence.numpy()
    assert (ci == -1).any()
    assert torch.equal(vol.valid, torch.from_numpy(ci >= 0))
    xmap = _orix_load(path)
    assert _max_qdiff(vol.quaternions, xmap.rotations.data) < 1e-6


@pytest.mark.parametrize("name", ["DC06_2uniax.ang", "ACOM.ang"])
def test_real_file_rewrite_read_by_orix(shared_data, tmp_path, name):
    vol = load_volume(shared_data / "ang" / name)
    out = save_volume(vol, tmp_path / name)
    back = load_volume(out)
    assert back.equals(vol, atol=1e-6)
    assert back.phase_info[1].name == vol.phase_info[1].name
    xmap = _orix_load(out)
    assert _max_qdiff(vol.quaternions, xmap.rotations.data) < 1e-6
    # header lines kept (x-star from the original survives the round trip)
    text = out.read_text()
    if name.startswith("DC06"):
        assert "x-star                0.521621" in text and "hklFamilies" in text


def test_real_files_stacked_with_z_spacing(shared_data, tmp_path):
    src = shared_data / "ang" / "DC06_2uniax.ang"
    for i in (1, 2, 10):
        shutil.copy(src, tmp_path / f"S{i}.ang")
    vol = load_volume(tmp_path, z_spacing=0.2)
    assert vol.shape == (3, 101, 51)
    assert vol.spacing == (0.2, 1.0, 1.0)
    assert [p.rsplit("/", 1)[-1] for p in vol.metadata["slice_files"]] == ["S1.ang", "S2.ang", "S10.ang"]
    assert torch.equal(vol.quaternions[0], vol.quaternions[2])


# ------------------------------------------------------------------------------------------ round trips
def _synthetic():
    try:
        from ebsd.synthetic import synthetic_volume
    except Exception:
        return random_volume((4, 8, 9), seed=3)
    return synthetic_volume((5, 12, 14), mean_grain_size=4, symmetry="m-3m", seed=2, unindexed_fraction=0.1,
                            noise_deg=1.0, missing_slices=[3], spacing=(0.5, 0.25, 0.25))


@pytest.mark.parametrize("make", [_synthetic, lambda: random_volume((4, 6, 7), seed=1)])
def test_ang_folder_round_trip(tmp_path, make):
    vol = make()
    out = save_volume(vol, tmp_path / "slices")
    names = sorted(p.name for p in out.iterdir())
    assert names[:2] == ["ebsdtk.json", "slice_0000.ang"] and len(names) == vol.shape[0] + 1
    back = load_volume(out)
    assert back.shape == vol.shape
    assert back.equals(vol, atol=1e-5)
    assert back.spacing == pytest.approx(vol.spacing) and back.origin == pytest.approx(vol.origin)
    assert {k: p.name for k, p in back.phase_info.items()} == {k: p.name for k, p in vol.phase_info.items()}
    # orix reads every slice to the same orientations
    for z in range(vol.shape[0]):
        xmap = _orix_load(out / f"slice_{z:04d}.ang")
        assert _max_qdiff(vol.quaternions[z], xmap.rotations.data) < 1e-5


def test_single_ang_file_round_trip_and_overwrite(tmp_path):
    vol = random_volume((1, 5, 6), seed=4)
    p = save_volume(vol, tmp_path / "one.ang")
    assert load_volume(p, z_spacing=0.5).equals(vol, atol=1e-5)  # one slice: dz is not in the file
    with pytest.raises(EBSDFileExistsError):
        save_volume(vol, p)
    save_volume(vol, p, overwrite=True)
    assert [q.name for q in tmp_path.iterdir()] == ["one.ang"]  # no temporary files left behind


def test_folder_needs_overwrite(tmp_path):
    vol = random_volume((2, 3, 4))
    save_volume(vol, tmp_path / "f")
    with pytest.raises(EBSDFileExistsError):
        save_volume(vol, tmp_path / "f")
    vol2 = random_volume((3, 3, 4), seed=9)
    save_volume(vol2, tmp_path / "f", overwrite=True)
    assert load_volume(tmp_path / "f").equals(vol2, atol=1e-5)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["f"]


# ------------------------------------------------------------------------------------------ stacks
def test_natural_sort_glob_and_list(tmp_path):
    vol = random_volume((3, 4, 5), seed=5)
    for z, name in enumerate(["scan_S2.ang", "scan_S10.ang", "scan_S1.ang"]):
        write_ang(vol, tmp_path / name, z=z)
    files = list_ang_files(tmp_path)
    assert [f.name for f in files] == ["scan_S1.ang", "scan_S2.ang", "scan_S10.ang"]
    with pytest.warns(UserWarning, match="z spacing"):
        a = load_volume(tmp_path)
    assert a.spacing[0] == a.spacing[2]
    b = load_volume(str(tmp_path / "scan_S*.ang"), z_spacing=0.7)
    assert b.spacing[0] == 0.7
    assert torch.equal(a.quaternions, b.quaternions)
    assert torch.equal(a.quaternions[0], read_ang(tmp_path / "scan_S1.ang").quaternions[0])
    c = load_volume([tmp_path / "scan_S10.ang", tmp_path / "scan_S1.ang"], z_spacing=1.0)
    assert torch.equal(c.quaternions[0], read_ang(tmp_path / "scan_S1.ang").quaternions[0])  # sorted


def test_inconsistent_grids_rejected(tmp_path):
    write_ang(random_volume((1, 4, 5)), tmp_path / "a1.ang")
    write_ang(random_volume((1, 4, 6)), tmp_path / "a2.ang")
    with pytest.raises(EBSDFormatError, match="grid"):
        load_volume(tmp_path, z_spacing=1.0)


def test_no_files(tmp_path):
    with pytest.raises(EBSDFormatError, match="no .ang files"):
        load_volume(tmp_path)
    with pytest.raises(EBSDFormatError, match="no such file"):
        load_volume(tmp_path / "missing.ang")


# ------------------------------------------------------------------------------------------ parsing details
HEADER = """# TEM_PIXperUM          1.000000
# x-star                0.5
# y-star                0.5
# z-star                0.5
# WorkingDistance       15.0
#
# Phase 1
# MaterialName  	Nickel
# Formula     	Ni
# Info 		
# Symmetry              43
# LatticeConstants      3.524 3.524 3.524  90.000  90.000  90.000
# NumberFamilies        0
#
# Phase 2
# MaterialName  	Titanium
# Formula     	Ti
# Info 		
# Symmetry              62
# LatticeConstants      2.950 2.950 4.680  90.000  90.000 120.000
# NumberFamilies        0
#
# GRID: {grid}
# XSTEP: 0.500000
# YSTEP: 0.500000
# NCOLS_ODD: {odd}
# NCOLS_EVEN: {even}
# NROWS: {rows}
#
"""


def _rows(nrows, ncols, step=0.5, phase=lambda i: 1 + i % 2, shuffle=False, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for r in range(nrows):
        for c in range(ncols):
            i = r * ncols + c
            e = rng.uniform(0, [2 * np.pi, np.pi, 2 * np.pi])
            ci = -1 if i % 7 == 3 else 0.5
            out.append(f"{e[0]:.5f} {e[1]:.5f} {e[2]:.5f} {c * step:.5f} {r * step:.5f} 100.0 {ci} {phase(i)} 1 0.5")
    if shuffle:
        rng.shuffle(out)
    return "\n".join(out) + "\n"


def test_multiphase_header_and_unindexed(tmp_path):
    p = tmp_path / "m.ang"
    p.write_text(HEADER.format(grid="SqrGrid", odd=4, even=4, rows=3) + _rows(3, 4, phase=lambda i: i % 3))
    vol = load_volume(p)
    assert vol.phase_info[1].symmetry == "m-3m" and vol.phase_info[2].symmetry == "6/mmm"
    assert vol.phase_info[2].lattice[-1] == 120.0
    ph = vol.phases.numpy().ravel()
    ci = vol.confidence.numpy().ravel()
    # phase 0 in a multi-phase file = not indexed; CI -1 = not indexed
    assert np.array_equal(vol.valid.numpy().ravel(), (ph > 0) & (ci >= 0))


def test_points_out_of_order_are_placed_by_xy(tmp_path):
    a, b = tmp_path / "a.ang", tmp_path / "b.ang"
    hdr = HEADER.format(grid="SqrGrid", odd=5, even=5, rows=4)
    a.write_text(hdr + _rows(4, 5))
    b.write_text(hdr + _rows(4, 5, shuffle=True))
    assert load_volume(a).equals(load_volume(b))


def test_hexgrid_raises_with_advice_or_resamples(tmp_path):
    p = tmp_path / "hex.ang"
    lines = []
    rng = np.random.default_rng(0)
    dx, dy = 1.0, np.sqrt(3) / 2
    for r in range(5):
        n = 4 if r % 2 == 0 else 3
        for c in range(n):
            x = c * dx + (0.5 * dx if r % 2 else 0.0)
            e = rng.uniform(0, 1, 3)
            lines.append(f"{e[0]:.5f} {e[1]:.5f} {e[2]:.5f} {x:.5f} {r * dy:.5f} 10 0.5 1 0 0")
    hdr = HEADER.format(grid="HexGrid", odd=4, even=3, rows=5).replace("XSTEP: 0.500000", "XSTEP: 1.0")
    p.write_text(hdr + "\n".join(lines) + "\n")
    with pytest.raises(EBSDFormatError, match="square grid") as exc:
        load_volume(p)
    assert "hex_to_square=True" in str(exc.value) and str(p) in str(exc.value)
    vol = load_volume(p, hex_to_square=True)
    assert vol.spacing[1:] == (1.0, 1.0)
    assert vol.shape == (1, 4, 4)


def test_degrees_are_rejected(tmp_path):
    p = tmp_path / "deg.ang"
    rows = _rows(2, 2).replace("\n", "\n", 1)
    bad = "\n".join("120.0 " + r.split(" ", 1)[1] for r in rows.strip().splitlines())
    p.write_text(HEADER.format(grid="SqrGrid", odd=2, even=2, rows=2) + bad + "\n")
    with pytest.raises(EBSDFormatError, match="radians"):
        load_volume(p)


def test_row_count_mismatch(tmp_path):
    # two complete rows of coordinates under a header that says three rows: the coordinates win, with a warning
    p = tmp_path / "short.ang"
    p.write_text(HEADER.format(grid="SqrGrid", odd=4, even=4, rows=3) + _rows(2, 4))
    with pytest.warns(UserWarning, match="trusting the coordinates"):
        vol = load_volume(p)
    assert vol.shape == (1, 2, 4) and bool(vol.measured.all())
    # a hole in the middle fits neither the header nor a grid of the coordinates' own: refused, naming both
    lines = _rows(3, 4).splitlines()
    del lines[5]
    p.write_text(HEADER.format(grid="SqrGrid", odd=4, even=4, rows=3) + "\n".join(lines) + "\n")
    with pytest.raises(EBSDFormatError, match=r"NROWS x NCOLS = 3 x 4.*x, y columns span 3 rows x 4 columns"):
        load_volume(p)


def test_written_volume_is_an_ebsdvolume(tmp_path):
    vol = random_volume((2, 3, 3))
    save_volume(vol, tmp_path / "x")
    assert isinstance(load_volume(tmp_path / "x"), EBSDVolume)


def test_multi_slice_to_single_ang_file_is_refused(tmp_path):
    from ebsd import EBSDValueError

    with pytest.raises(EBSDValueError, match="folder"):
        save_volume(random_volume((2, 3, 3)), tmp_path / "x.ang")
