"""recover_missing_slices end to end (random small model) and the ``ebsdtk recover`` command."""
from __future__ import annotations

import pytest
import torch

from ebsd import EBSDVolume
from ebsd.cli import main as cli_main
from ebsd.errors import EBSDValueError
from ebsd.recovery import recover_missing_slices
from ebsd.recovery.api import predict_slices
from ebsd.recovery.baselines import adjacent_grains
from ebsd.synthetic import synthetic_volume

from _recovery_helpers import in_set, tiny_model


@pytest.fixture(scope="module")
def vol():
    return synthetic_volume((12, 40, 36), 8.0, "m-3m", 31, noise_deg=0.5, unindexed_fraction=0.01,
                            missing_slices=[5, 6])


def test_end_to_end_with_random_model(vol):
    net = tiny_model()
    new = recover_missing_slices(vol, [5, 6], model=net, method="network", progress=False)
    assert isinstance(new, EBSDVolume) and new is not vol
    assert new.shape == vol.shape
    assert new.metadata["recovered_slices"] == [5, 6]
    assert new.metadata["recovery_method"] == "transformer+projection"
    assert new.valid[5:7].all()
    assert torch.isfinite(new.quaternions).all()
    assert torch.allclose(new.quaternions.norm(dim=-1), torch.ones(()), atol=1e-4)
    keep = [z for z in range(12) if z not in (5, 6)]
    assert torch.equal(new.quaternions[keep], vol.quaternions[keep])
    assert torch.equal(new.valid[keep], vol.valid[keep])
    assert (new.confidence[5:7] > 0.3).float().mean() > 0.5  # neighbours' CI, not the blank slice's 0
    grains = adjacent_grains(vol, (5, 6), 4, 7)
    assert in_set(new.quaternions[5:7], grains.means).all()
    assert vol.metadata.get("recovered_slices") is None  # input untouched


def test_details(vol):
    net = tiny_model()
    new, details = recover_missing_slices(vol, [5, 6], model=net, method="network", progress=False,
                                          return_details=True)
    assert details["recovered_slices"] == [5, 6]
    dis = details["disagreement_deg"]
    assert dis.shape == (2, 40, 36) and (dis >= 0).all() and (dis <= 180).all()


def test_without_projection_and_auto_detection(vol):
    net = tiny_model()
    raw = recover_missing_slices(vol, None, model=net, method="network", project=False, progress=False)
    assert raw.metadata["recovered_slices"] == [5, 6]
    assert raw.metadata["recovery_method"] == "transformer"


def test_tiles_cover_every_voxel(vol):
    net = tiny_model()
    settings = {"tile": 16, "overlap": 4, "context": 2}
    out = predict_slices(net, vol, (5, 6), {5, 6}, settings, batch_size=3)
    assert out.shape == (2, 40, 36, 4)
    assert torch.isfinite(out).all()


def test_nothing_to_recover_and_bad_arguments(vol):
    net = tiny_model()
    clean = synthetic_volume((8, 24, 24), 8.0, "m-3m", 32, noise_deg=0.5)
    same = recover_missing_slices(clean, None, model=net, progress=False)
    assert same.metadata["recovered_slices"] == [] and same.equals(clean)
    with pytest.raises(EBSDValueError, match="outside"):
        recover_missing_slices(vol, [40], model=net, progress=False)
    with pytest.raises(EBSDValueError, match="unknown inference settings"):
        recover_missing_slices(vol, [5], model=net, progress=False, tiles=3)


def test_cli_recover_dream3d(tmp_path, vol, capsys):
    from ebsd.io import load_volume, save_volume

    ck = tmp_path / "ck"
    tiny_model().save(ck, extra={"inference": {"tile": 16, "overlap": 4, "context": 2}})
    src = save_volume(vol, tmp_path / "in.dream3d")
    out = tmp_path / "out.dream3d"
    assert cli_main(["recover", str(src), "--missing", "5,6", "--out", str(out), "--model", str(ck), "--quiet"]) == 0
    back = load_volume(out)
    assert back.metadata["recovered_slices"] == [5, 6]
    assert back.valid[5:7].all()
    # refuses to overwrite, then does with --overwrite; --auto finds the same slices
    assert cli_main(["recover", str(src), "--auto", "--out", str(out), "--model", str(ck), "--quiet"]) == 2
    assert cli_main(["recover", str(src), "--auto", "--out", str(out), "--model", str(ck), "--quiet",
                     "--overwrite"]) == 0
    assert "bad slices found: [5, 6]" in capsys.readouterr().out
    assert load_volume(out).metadata["recovered_slices"] == [5, 6]


def test_parse_slices():
    from ebsd.commands.recover import parse_slices

    assert parse_slices("12,13") == [12, 13]
    assert parse_slices("3-5, 9") == [3, 4, 5, 9]
    with pytest.raises(EBSDValueError):
        parse_slices("a,b")


def test_cli_recover_ang_folder(tmp_path, vol):
    from ebsd.io import load_volume, save_volume

    ck = tmp_path / "ck"
    tiny_model().save(ck, extra={"inference": {"tile": 16, "overlap": 4, "context": 2}})
    src = save_volume(vol, tmp_path / "slices")  # a folder of .ang files
    out = tmp_path / "out.dream3d"
    assert cli_main(["recover", str(src), "--missing", "5-6", "--out", str(out), "--model", str(ck), "--quiet"]) == 0
    back = load_volume(out)
    assert back.shape == vol.shape
    assert back.metadata["recovered_slices"] == [5, 6]
