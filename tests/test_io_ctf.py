"""Oxford .ctf: real files against orix, folders stacked into 3-D, round trips, and real files' flaws (each
with a file written by the test)."""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch

from _io_files import random_volume
from ebsd import EBSDFormatError, EBSDVolume, Phase
from ebsd.io import detect_format, load_volume, save_volume
from ebsd.io.ctf import CTF_LAUE, write_ctf


def _qdiff(q: torch.Tensor, qo: np.ndarray) -> np.ndarray:
    q = q.reshape(-1, 4).double().numpy()
    return np.minimum(np.abs(q - qo).max(1), np.abs(q + qo).max(1))


def _orix(path):
    from orix import io

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return io.load(str(path))


def test_twins_matches_orix(shared_data):
    p = shared_data / "ctf" / "twins.ctf"
    vol = load_volume(p)
    xm = _orix(p)
    assert detect_format(p) == "ctf"
    assert vol.shape == (1, 137, 167) == (1, *xm.shape)
    names = {k: v.name for k, v in vol.phase_info.items()}
    assert names == {i: xm.phases[i].name for i in xm.phases.ids if i >= 0} == {1: "Magnesium"}
    assert vol.phase_info[1].symmetry == "6/mmm" == xm.phases[1].point_group.name
    assert np.allclose(vol.phase_info[1].lattice, (3.2089, 3.2089, 5.2101, 90, 90, 120))
    # orix: Rotation.from_euler(degrees) on the raw columns, no reference-frame change; so do we
    assert _qdiff(vol.quaternions, xm.rotations.data).max() < 1e-6
    assert np.array_equal(vol.valid.numpy().ravel(), xm.is_indexed)
    assert np.array_equal(vol.phases.numpy().ravel()[xm.is_indexed], xm.phase_id[xm.is_indexed])
    assert vol.spacing[1:] == (0.3, 0.3) and np.isclose(xm.dx, 0.3)
    bc = np.loadtxt(p, skiprows=15, usecols=9)
    assert np.array_equal(vol.image_quality.numpy().ravel(), bc.astype(np.float32))
    assert "CS0" in vol.metadata["ctf_euler_reference"]


def test_testdata_sqr_missing_column_is_read(shared_data):
    # the column line names BS but the rows hold 10 values: orix raises IndexError, we read it and say so
    from orix.quaternion import Rotation

    p = shared_data / "ctf" / "testdata_sqr.ctf"
    with pytest.warns(UserWarning, match=r"\['BS'\] have no data"):
        vol = load_volume(p)
    raw = np.loadtxt(p, skiprows=15)
    assert vol.shape == (1, 30, 30) and vol.origin[2] == 1.0
    assert vol.phase_info[1].name == "Glaucophane" and vol.phase_info[1].symmetry == "2/m"
    ref = Rotation.from_euler(raw[:, 5:8], degrees=True).data
    assert _qdiff(vol.quaternions, ref).max() < 1e-6


def test_folder_of_three_ctf_copies_is_a_volume(shared_data, tmp_path):
    src = shared_data / "ctf" / "twins.ctf"
    d = tmp_path / "stack"
    d.mkdir()
    for i, suf in enumerate((".ctf", ".CTF", ".ctf")):
        shutil.copy(src, d / f"slice_{i + 1}{suf}")
    vol = load_volume(d, z_spacing=0.3)
    one = load_volume(src)
    assert vol.shape == (3, 137, 167) and vol.metadata["format"] == "ctf_stack"
    for z in range(3):
        assert vol.slices(z, z + 1).equals(one.slices(0, 1)) or torch.equal(vol.quaternions[z], one.quaternions[0])
    assert torch.equal(vol.valid[2], one.valid[0])
    # a glob and a list give the same
    assert load_volume(str(d / "slice_*"), z_spacing=0.3).equals(vol)
    # the napari reader accepts the folder
    from ebsd.napari._reader import get_reader

    assert get_reader(str(d)) is not None and get_reader(str(src)) is not None


def test_write_ctf_round_trip_and_orix_reads_it(tmp_path):
    vol = random_volume((1, 5, 6), seed=3)  # Nickel m-3m and Titanium 6/mmm
    vol.measured[0, 4, 3:] = False
    vol.valid &= vol.measured
    p = save_volume(vol, tmp_path / "two.ctf")
    back = load_volume(p)
    v = vol.valid
    assert torch.equal(back.valid, v) and torch.equal(back.measured, vol.measured)
    assert torch.equal(back.phases[v], vol.phases[v])
    assert _qdiff(back.quaternions[v], vol.quaternions[v].double().numpy()).max() < 1e-6
    assert {k: (p.name, p.symmetry) for k, p in back.phase_info.items()} == \
        {1: ("Nickel", "m-3m"), 2: ("Titanium (Alpha)", "6/mmm")}
    xm = _orix(p)
    assert xm.shape == (5, 6) and [xm.phases[i].name for i in (1, 2)] == ["Nickel", "Titanium (Alpha)"]
    assert _qdiff(back.quaternions[v], xm.rotations.data[v.numpy().ravel()]).max() < 1e-6
    with pytest.raises(Exception, match="overwrite"):
        write_ctf(vol, p)


def _ctf_text(xs, ys, *, xcells, ycells, step=0.5, ystep=None, job="Grid", phases=None, rows=None, extra=0,
              newline="\n", name="Magnesium", laue=9) -> bytes:
    ystep = step if ystep is None else ystep
    head = ["Channel Text File", "Prj\ttest.cpr", "Author\t", f"JobMode\t{job}", f"XCells\t{xcells}",
            f"YCells\t{ycells}", f"XStep\t{step}", f"YStep\t{ystep}", "AcqE1\t0", "AcqE2\t0", "AcqE3\t0",
            "Euler angles refer to Sample Coordinate system (CS0)!\tMag\t400\tCoverage\t100\tDevice\t0\tKV\t20\t"
            "TiltAngle\t70\tTiltAxis\t0", "Phases\t1", f"3.2;3.2;5.2\t90;90;120\t{name}\t{laue}\t194"]
    cols = "Phase\tX\tY\tBands\tError\tEuler1\tEuler2\tEuler3\tMAD\tBC\tBS" + "".join(f"\tX{i}" for i in range(extra))
    out = [*head, cols]
    rng = np.random.default_rng(0)
    for i, (x, y) in enumerate(zip(xs, ys)):
        ph = 1 if rows is None else rows[i]
        e = rng.uniform(0, [360, 180, 360])
        out.append(f"{ph}\t{x:.4f}\t{y:.4f}\t8\t0\t{e[0]:.3f}\t{e[1]:.3f}\t{e[2]:.3f}\t0.5\t{100 + i % 50}\t150"
                   + "\t7" * extra)
    text = newline.join(out) + newline
    return text.encode("latin-1")


def _grid_xy(ny, nx, step=0.5):
    yy, xx = np.meshgrid(np.arange(ny) * step, np.arange(nx) * step, indexing="ij")
    return xx.ravel(), yy.ravel()


def test_stale_header_complete_coordinates_loads_with_warning(tmp_path):
    xs, ys = _grid_xy(4, 5)
    p = tmp_path / "stale.ctf"
    p.write_bytes(_ctf_text(xs, ys, xcells=40, ycells=30, step=0.1))
    with pytest.warns(UserWarning, match=r"YCells x XCells = 30 x 40.*complete 4 x 5 grid at step 0.5 x 0.5"):
        vol = load_volume(p)
    assert vol.shape == (1, 4, 5) and vol.spacing[1:] == (0.5, 0.5) and bool(vol.measured.all())
    xm = _orix(p)  # orix reads it from the coordinates too
    assert xm.shape == (4, 5) and _qdiff(vol.quaternions, xm.rotations.data).max() < 1e-6


def test_truncated_last_row_loads_with_unwritten_points_not_measured(tmp_path):
    xs, ys = _grid_xy(4, 5)
    full = _ctf_text(xs, ys, xcells=5, ycells=4)
    p = tmp_path / "cut.ctf"
    lines = full.split(b"\n")
    p.write_bytes(b"\n".join(lines[:-4]) + b"\n" + lines[-4][:9])  # 2 points missing, one cut mid-line
    with pytest.warns(UserWarning, match=r"17 points but the header grid is 4 x 5 = 20.*cut off.*3 unwritten"):
        vol = load_volume(p)
    assert vol.shape == (1, 4, 5)
    m = vol.measured[0].numpy().ravel()
    assert m[:17].all() and not m[17:].any()
    assert not vol.valid[0].numpy().ravel()[17:].any() and vol.valid[0].numpy().ravel()[:17].all()
    ref = load_volume(tmp_path.joinpath("full.ctf").write_bytes(full) and tmp_path / "full.ctf")
    assert torch.equal(vol.quaternions[0].reshape(-1, 4)[:17], ref.quaternions[0].reshape(-1, 4)[:17])
    # written to .dream3d and back, the flag survives
    back = load_volume(save_volume(vol, tmp_path / "cut.dream3d"))
    assert torch.equal(back.measured, vol.measured) and torch.equal(back.valid, vol.valid)


def test_error_5_not_analysed_points_are_not_measured(tmp_path):
    xs, ys = _grid_xy(2, 3)
    text = _ctf_text(xs, ys, xcells=3, ycells=2, rows=[1, 1, 1, 1, 0, 0]).decode("latin-1").splitlines()
    text[-1] = text[-1].replace("1\t", "0\t", 1) if text[-1].startswith("1") else text[-1]
    text[-2] = "\t".join(["0", *text[-2].split("\t")[1:4], "5", *text[-2].split("\t")[5:]])
    p = tmp_path / "cancelled.ctf"
    p.write_text("\n".join(text) + "\n")
    with pytest.warns(UserWarning, match="Error 5"):
        vol = load_volume(p)
    assert vol.measured[0].numpy().ravel().tolist() == [True, True, True, True, False, True]
    assert vol.valid[0].numpy().ravel().tolist() == [True, True, True, True, False, False]


def test_hexagonal_ctf_refused_then_resampled(tmp_path):
    step = 0.5
    xs, ys = [], []
    for r in range(6):
        for c in range(5):
            xs.append(c * step + (step / 2 if r % 2 else 0))
            ys.append(r * step * np.sqrt(3) / 2)
    p = tmp_path / "hex.ctf"
    p.write_bytes(_ctf_text(np.array(xs), np.array(ys), xcells=5, ycells=6, step=step, ystep=step * np.sqrt(3) / 2))
    with pytest.raises(EBSDFormatError, match="hex_to_square=True"):
        load_volume(p)
    vol = load_volume(p, hex_to_square=True)
    assert vol.spacing[1:] == (step, step)
    Y, X = vol.shape[1:]
    assert X == 5 and Y == int(np.floor(max(ys) / step + 1e-6)) + 1
    # nearest neighbour: square-grid point (r, c) takes the hexagonal point closest to it
    from scipy.spatial import cKDTree

    raw = load_volume(p, hex_to_square=True).quaternions[0]
    src = np.loadtxt(p, skiprows=15)
    from orix.quaternion import Rotation

    qs = Rotation.from_euler(src[:, 5:8], degrees=True).data
    gy, gx = np.meshgrid(np.arange(Y) * step, np.arange(X) * step, indexing="ij")
    _, idx = cKDTree(np.column_stack([xs, ys])).query(np.column_stack([gx.ravel(), gy.ravel()]))
    assert _qdiff(raw, qs[idx]).max() < 1e-6


def test_interactive_job_mode_refused(tmp_path):
    rng = np.random.default_rng(1)
    p = tmp_path / "points.ctf"
    p.write_bytes(_ctf_text(rng.uniform(0, 100, 9), rng.uniform(0, 100, 9), xcells=9, ycells=1, job="Interactive"))
    with pytest.raises(EBSDFormatError, match="Interactive.*not a map on a grid"):
        load_volume(p)


def test_upper_case_crlf_latin1_extra_columns(tmp_path):
    xs, ys = _grid_xy(3, 4)
    p = tmp_path / "MAP.CTF"
    p.write_bytes(_ctf_text(xs, ys, xcells=4, ycells=3, newline="\r\n", name="Ferrit \xb5-Phase", extra=2))
    assert detect_format(p) == "ctf"
    vol = load_volume(p)
    assert vol.shape == (1, 3, 4) and vol.phase_info[1].name == "Ferrit \u00b5-Phase"
    assert vol.metadata["ctf_columns"][-2:] == ["X0", "X1"]


def test_laue_numbers_agree_with_orix(tmp_path):
    from ebsd.orientation import get_symmetry

    xs, ys = _grid_xy(1, 2)
    for k, laue in CTF_LAUE.items():
        p = tmp_path / f"l{k}.ctf"
        p.write_bytes(_ctf_text(xs, ys, xcells=2, ycells=1, laue=k))
        ours = load_volume(p).phase_info[1].symmetry
        if k == 10:  # orix 0.15's table names it "m3", which its own Phase then rejects: we read m-3
            with pytest.raises(ValueError, match="'m3'"):
                _orix(p)
            assert ours == "m-3"
            continue
        orix_pg = _orix(p).phases[1].point_group
        assert ours == laue == get_symmetry(orix_pg.laue.name).name, (k, ours, orix_pg.name)


def test_two_phase_ctf_keeps_both_symmetries(tmp_path):
    vol = random_volume((1, 4, 4), seed=5)
    back = load_volume(save_volume(vol, tmp_path / "a.ctf"))
    assert back.symmetries == {1: "m-3m", 2: "6/mmm"}
    d = load_volume(save_volume(back, tmp_path / "a.dream3d"))
    assert d.symmetries == back.symmetries and torch.equal(d.phases, back.phases)
    f = load_volume(save_volume(back, tmp_path / "folder"), z_spacing=1.0)
    assert f.symmetries == back.symmetries and torch.equal(f.phases[f.valid], back.phases[back.valid])
    assert isinstance(f, EBSDVolume) and f.phase_info[2] == Phase("Titanium (Alpha)", "6/mmm", back.phase_info[2].lattice)
