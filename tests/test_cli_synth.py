"""``ebsdtk synth OUT``."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ebsd.cli import main
from ebsd.io import load_volume
from ebsd.synthetic import synthetic_volume


def test_synth_dream3d_round_trip(tmp_path, capsys):
    out = tmp_path / "v.dream3d"
    args = ["synth", str(out), "--shape", "6,20,24", "--grain-size", "6", "--seed", "3", "--twins",
            "--noise-deg", "1", "--unindexed", "0.02", "--missing", "2,3", "--spacing", "0.5,0.25,0.25"]
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    vol = load_volume(out)
    ref = synthetic_volume((6, 20, 24), 6.0, "m-3m", 3, twins=True, noise_deg=1.0, unindexed_fraction=0.02,
                           missing_slices=(2, 3), spacing=(0.5, 0.25, 0.25))
    assert vol.equals(ref)
    assert vol.symmetry == "m-3m" and vol.spacing == (0.5, 0.25, 0.25)
    assert not vol.valid[2].any() and not vol.valid[3].any()
    # no silent overwrite; --overwrite replaces
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert main(args[:2] + ["--shape", "4,8,8", "--overwrite"]) == 0
    assert load_volume(out).shape == (4, 8, 8)


def test_synth_hexagonal_ang_folder_and_texture(tmp_path):
    out = tmp_path / "slices"
    assert main(["synth", str(out), "--shape", "2,10,12", "--grain-size", "4", "--symmetry", "6/mmm",
                 "--texture", "fiber:0,0,1:5"]) == 0
    vol = load_volume(out)
    ref = synthetic_volume((2, 10, 12), 4.0, "6/mmm", 0, texture=("fiber", (0.0, 0.0, 1.0), 5.0))
    assert vol.shape == (2, 10, 12) and vol.symmetry == "6/mmm"
    dq = torch.minimum((vol.quaternions - ref.quaternions).abs().amax(-1),
                       (vol.quaternions + ref.quaternions).abs().amax(-1))
    assert float(dq.max()) < 1e-4


def test_synth_bad_arguments(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "a.dream3d"), "--symmetry", "6/mmm", "--twins"]) == 2
    assert "m-3m" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "b.dream3d"), "--texture", "brass"]) == 2
    with pytest.raises(SystemExit):
        main(["synth", str(tmp_path / "c.dream3d"), "--shape", "1,2,3,4"])


def test_synth_help_subprocess():
    r = subprocess.run([sys.executable, "-m", "ebsd", "synth", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--grain-size" in r.stdout and "--twins" in r.stdout
