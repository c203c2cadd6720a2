"""``ebsdtk info PATH``."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from _io_files import random_volume
from ebsd.cli import main
from ebsd.io import save_volume


def test_info_dream3d(tmp_path, capsys):
    vol = random_volume((3, 4, 5), seed=1)
    p = save_volume(vol, tmp_path / "v.dream3d")
    assert main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert "3 x 4 x 5" in out
    assert "0.5 x 0.25 x 0.25 um" in out
    assert "Nickel" in out and "m-3m" in out and "6/mmm" in out
    assert f"{vol.fraction_indexed:.1%}" in out
    assert "recovered slices: [1]" in out


def test_info_json_ang_folder(tmp_path, capsys):
    vol = random_volume((2, 3, 4), seed=2)
    p = save_volume(vol, tmp_path / "slices")
    assert main(["info", str(p), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["shape"] == [2, 3, 4]
    assert d["spacing_um"] == [0.5, 0.25, 0.25]
    assert [ph["symmetry"] for ph in d["phases"]] == ["m-3m", "6/mmm"]
    assert d["fraction_indexed"] == pytest.approx(vol.fraction_indexed)


def test_info_real_ang(shared_data, capsys):
    assert main(["info", str(shared_data / "ang" / "DC06_2uniax.ang")]) == 0
    out = capsys.readouterr().out
    assert "1 x 101 x 51" in out and "Iron (Alpha)" in out and "100.0%" in out


def test_info_broken_file_exit_2(tmp_path, capsys):
    p = tmp_path / "broken.dream3d"
    p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 50)
    assert main(["info", str(p)]) == 2
    err = capsys.readouterr().err
    assert "ebsdtk info: error:" in err and str(p) in err
    q = tmp_path / "cut.ang"
    q.write_text("# Phase 1\n# MaterialName Ni\n# Symmetry 43\n# NCOLS_ODD: 3\n# NROWS: 2\n"
                 + "0 0 0 0 0 1 1 1\n" * 7)
    assert main(["info", str(q)]) == 2  # 7 points for a 2 x 3 grid, no coordinates to place them
    assert "2 x 3" in capsys.readouterr().err
    # a truncated scan (1 of 6 points written) loads; info counts the points never measured
    q.write_text("# Phase 1\n# MaterialName Ni\n# Symmetry 43\n# NCOLS_ODD: 3\n# NROWS: 2\n0 0 0 0 0 1 1 1\n")
    with pytest.warns(UserWarning, match="truncated"):
        assert main(["info", str(q)]) == 0
    assert "not measured:     5 voxels" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "missing.ang")]) == 2


def test_info_subprocess_entry_point(tmp_path):
    p = save_volume(random_volume((1, 2, 2)), tmp_path / "v.dream3d")
    r = subprocess.run([sys.executable, "-m", "ebsd", "info", str(p)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "1 x 2 x 2" in r.stdout
    r = subprocess.run([sys.executable, "-m", "ebsd", "info", str(tmp_path / "nope.dream3d")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no such file" in r.stderr


def test_info_reads_ctf_and_h5oina(tmp_path, capsys, shared_data):
    from _io_files import write_h5oina

    assert main(["info", str(shared_data / "ctf" / "twins.ctf")]) == 0
    out = capsys.readouterr().out
    assert "1 x 137 x 167" in out and "Magnesium" in out and "6/mmm" in out and "(ctf)" in out
    p = write_h5oina(tmp_path / "map.h5oina", random_volume((2, 3, 4), seed=1))
    assert main(["info", str(p), "--z-spacing", "0.5", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["format"] == "h5oina" and d["shape"] == [2, 3, 4]
    assert [(q["name"], q["symmetry"]) for q in d["phases"]] == [("Nickel", "m-3m"), ("Titanium (Alpha)", "6/mmm")]
