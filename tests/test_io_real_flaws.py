"""Real .ang files' flaws, each with files written by the test: a serial-section stack of upper-case .ANG files
whose stale header says 160 x 140 while the x, y columns hold a complete 35 x 40 grid; truncated scans;
Latin-1/CRLF; a stack with an odd slice; multi-phase volumes through every writer; measured round trips."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from _io_files import random_volume, write_oim_h5
from ebsd import EBSDFormatError
from ebsd.io import load_volume, save_volume

STALE_HEADER = """# TEM_PIXperUM          1.000000
# x-star                0.5
# y-star                0.5
# z-star                0.5
# WorkingDistance       15.0
#
# Phase 1
# MaterialName  \tIron (Alpha)
# Formula     \tFe
# Info \t\t
# Symmetry              43
# LatticeConstants      2.870 2.870 2.870  90.000  90.000  90.000
# NumberFamilies        0
#
# GRID: SqrGrid
# XSTEP: {xstep}
# YSTEP: {ystep}
# NCOLS_ODD: 140
# NCOLS_EVEN: 140
# NROWS: 160
#
# OPERATOR: \tsomeone
#
"""


def _ang_rows(ny, nx, step, seed, newline="\n"):
    rng = np.random.default_rng(seed)
    e = rng.uniform(0, [2 * np.pi, np.pi, 2 * np.pi], size=(ny * nx, 3))
    yy, xx = np.meshgrid(np.arange(ny) * step, np.arange(nx) * step, indexing="ij")
    ci = np.where(rng.random(ny * nx) < 0.05, -1.0, 0.8)
    lines = [f"  {a:.5f}   {b:.5f}   {c:.5f}      {x:.5f}      {y:.5f}  1500.0  {k:.3f}  0  1  0.700"
             for (a, b, c), x, y, k in zip(e, xx.ravel(), yy.ravel(), ci)]
    return newline.join(lines) + newline, e


@pytest.mark.parametrize("xstep", ["0.400000", "0.100000"])  # header step right, or stale too
def test_stale_header_ANG_stack_loads_from_coordinates(tmp_path, xstep):
    """The held-out case: a folder of upper-case .ANG files, header NROWS x NCOLS = 160 x 140, 1400 data rows
    holding a complete 35 x 40 grid at 0.4 um: loads (one warning per slice), placed by x, y, as orix does."""
    from orix import io

    d = tmp_path / "stack"
    d.mkdir()
    eulers = []
    for z in range(4):
        rows, e = _ang_rows(35, 40, 0.4, seed=z, newline="\r\n" if z % 2 else "\n")
        (d / f"Section_{z + 1}.ANG").write_text(STALE_HEADER.format(xstep=xstep, ystep=xstep) + rows)
        eulers.append(e)
    with pytest.warns(UserWarning, match=r"NROWS x NCOLS = 160 x 140.*complete 35 x 40 grid at step 0.4 x 0.4") as rec:
        vol = load_volume(d, z_spacing=0.4)
    stale = [str(w.message) for w in rec if "trusting the coordinates" in str(w.message)]
    assert len(stale) == 1 and "the same was decided for 3 more slice(s)" in stale[0]  # one warning, not 4
    assert vol.shape == (4, 35, 40) and vol.spacing == (0.4, 0.4, 0.4)
    assert bool(vol.measured.all()) and vol.metadata["format"] == "ang_stack"
    for z in range(4):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xm = io.load(str(d / f"Section_{z + 1}.ANG"))
        q = vol.quaternions[z].reshape(-1, 4).double().numpy()
        qo = xm.rotations.data
        assert xm.shape == (35, 40)
        assert np.minimum(np.abs(q - qo).max(1), np.abs(q + qo).max(1)).max() < 1e-6
    # and through the CLI
    from ebsd.cli import main

    with pytest.warns(UserWarning):
        assert main(["info", str(d), "--z-spacing", "0.4"]) == 0


def test_stack_with_an_odd_slice_names_it(tmp_path):
    d = tmp_path / "stack"
    d.mkdir()
    for z, (ny, nx) in enumerate([(5, 6), (5, 6), (5, 7), (4, 6)]):
        rows, _ = _ang_rows(ny, nx, 0.4, seed=z)
        (d / f"s{z + 1}.ang").write_text(STALE_HEADER.replace("140", str(nx)).replace("160", str(ny))
                                         .format(xstep="0.4", ystep="0.4") + rows)
    with pytest.raises(EBSDFormatError, match=r"s3\.ang.*slice 2 of 4.*first whose grid differs.*5 x 7 vs 5 x 6"):
        load_volume(d, z_spacing=1.0)


def test_truncated_ang_and_measured_round_trips(tmp_path):
    rows, _ = _ang_rows(5, 6, 0.4, seed=1)
    lines = rows.splitlines()
    p = tmp_path / "cut.ang"
    p.write_text(STALE_HEADER.replace("140", "6").replace("160", "5").format(xstep="0.4", ystep="0.4")
                 + "\n".join(lines[:26]) + "\n" + lines[26][:20])
    with pytest.warns(UserWarning, match=r"26 points but the header grid is 5 x 6 = 30.*4 unwritten"):
        vol = load_volume(p)
    m = vol.measured[0].numpy().ravel()
    assert m[:26].all() and not m[26:].any() and not vol.valid[0].numpy().ravel()[26:].any()
    # .dream3d, an .ang folder (sidecar) and our OIM .h5 keep `measured`; a single .ang writes them unindexed
    for back in (load_volume(save_volume(vol, tmp_path / "v.dream3d")),
                 load_volume(save_volume(vol, tmp_path / "folder"), z_spacing=0.4),
                 load_volume(write_oim_h5(tmp_path / "v.h5", vol))):
        assert torch.equal(back.measured, vol.measured) and torch.equal(back.valid, vol.valid)
    side = json.loads((tmp_path / "folder" / "ebsdtk.json").read_text())
    assert side["unmeasured"] == {"0": [[26, 4]]}
    single = load_volume(save_volume(vol, tmp_path / "one.ang"))
    assert bool(single.measured.all()) and torch.equal(single.valid, vol.valid)


def test_latin1_names_and_extra_columns_in_ang(tmp_path):
    rows, _ = _ang_rows(3, 4, 0.5, seed=2)
    rows = "\n".join(l + "  12.5  3" for l in rows.splitlines()) + "\n"
    text = STALE_HEADER.replace("140", "4").replace("160", "3").replace("Iron (Alpha)", "Eisen \xdfen (\xb5)")
    p = tmp_path / "latin.Ang"
    p.write_bytes((text.format(xstep="0.5", ystep="0.5") + rows).replace("\n", "\r\n").encode("latin-1"))
    vol = load_volume(p)
    assert vol.phase_info[1].name == "Eisen \u00dfen (\u00b5)" and vol.shape == (1, 3, 4)
    assert vol.metadata["ang_columns"] == 12


def test_multiphase_volume_keeps_both_symmetries_everywhere(tmp_path):
    """Two phases of different Laue classes: ids, names and symmetries survive .dream3d, an .ang folder, our
    OIM .h5 and a .ctf; IPF colours use each voxel's own phase symmetry (checked against orix)."""
    from orix.plot import IPFColorKeyTSL
    from orix.quaternion import Orientation, symmetry

    from ebsd.orientation.ipf import ipf_colors_by_phase

    vol = random_volume((2, 5, 6), seed=11)
    want = {1: ("Nickel", "m-3m"), 2: ("Titanium (Alpha)", "6/mmm")}
    for back in (load_volume(save_volume(vol, tmp_path / "v.dream3d")),
                 load_volume(save_volume(vol, tmp_path / "f"), z_spacing=0.5),
                 load_volume(write_oim_h5(tmp_path / "v.h5", vol), z_spacing=0.5)):
        assert {k: (p.name, p.symmetry) for k, p in back.phase_info.items()} == want
        assert torch.equal(back.phases, vol.phases)
    rgb = ipf_colors_by_phase(vol.quaternions, vol.phases, vol.symmetries, valid=vol.valid)
    for pid, sym in ((1, symmetry.Oh), (2, symmetry.D6h)):
        sel = (vol.phases == pid) & vol.valid
        o = Orientation(vol.quaternions[sel].double().numpy(), symmetry=sym)
        ref = IPFColorKeyTSL(sym).orientation2color(o)
        assert np.abs(rgb[sel].numpy() - ref).max() < 1e-3
    assert (rgb[~vol.valid] == 0).all()


def test_phase_name_kept_verbatim(tmp_path):
    # orix renames an .ang phase "Iron bcc (old)" to "No"; the name is the material's, keep it
    rows, _ = _ang_rows(2, 3, 0.5, seed=3)
    text = STALE_HEADER.replace("140", "3").replace("160", "2").replace("Iron (Alpha)", "Iron bcc (old)")
    p = tmp_path / "old.ang"
    p.write_text(text.format(xstep="0.5", ystep="0.5") + rows)
    assert load_volume(p).phase_info[1].name == "Iron bcc (old)"
