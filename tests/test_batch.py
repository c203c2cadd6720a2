"""``ebsdtk batch`` / :mod:`ebsd.batch` on a 2-worker dask LocalCluster (threads, CPU): outputs, manifest,
failures, resuming, tiling."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _recovery_helpers import tiny_model
from ebsd import batch
from ebsd.cli import main
from ebsd.errors import EBSDValueError
from ebsd.io import load_volume, save_volume
from ebsd.orientation import misorientation_angle
from ebsd.recovery import recover_missing_slices
from ebsd.synthetic import synthetic_volume

MISSING = [4]


def _volumes(root: Path) -> tuple[Path, Path]:
    """``root/in`` with 2 .dream3d, 1 folder of .ang slices (3 volumes, slice 4 blanked) and 1 corrupt
    .dream3d; ``root/model`` a tiny random recovery checkpoint."""
    inp = root / "in"
    inp.mkdir(parents=True)
    for i in range(3):
        v = synthetic_volume((8, 24, 24), mean_grain_size=8, seed=i, noise_deg=0.5, missing_slices=MISSING)
        save_volume(v, inp / (f"vol{i}.dream3d" if i < 2 else f"sub/vol{i}"))
    (inp / "broken.dream3d").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    model = root / "model"
    tiny_model().save(model, extra={"inference": {"tile": 16, "overlap": 4, "context": 2}})
    return inp, model


def _manifest(out: Path) -> dict:
    return {Path(r["input"]).name: r for r in json.loads((out / "manifest.json").read_text())["records"]}


def _mtimes(out: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name.endswith(".dream3d")}


def test_discover_folders_files_pattern(tmp_path):
    inp, _ = _volumes(tmp_path)
    (inp / "out").mkdir()
    (inp / "out" / "x.dream3d").write_bytes(b"")  # inside the excluded output folder
    found = batch.discover(inp, exclude=[inp / "out"])
    assert [p.relative_to(inp).as_posix() for p in found] == ["broken.dream3d", "sub/vol2", "vol0.dream3d",
                                                               "vol1.dream3d"]
    assert [p.name for p in batch.discover(inp, "vol*.dream3d")] == ["vol0.dream3d", "vol1.dream3d"]
    assert [p.name for p in batch.discover(inp, "sub/*")] == ["vol2"]
    # Oxford files too: a folder of .ctf slices is one volume, an .h5oina file is one
    (inp / "ctfs").mkdir()
    (inp / "ctfs" / "s0.CTF").write_text("Channel Text File\n")
    (inp / "scan.h5oina").write_bytes(b"")
    names = [p.relative_to(inp).as_posix() for p in batch.discover(inp, exclude=[inp / "out"])]
    assert "ctfs" in names and "scan.h5oina" in names


def test_cli_three_volumes_one_corrupt_resume(tmp_path):
    inp, model = _volumes(tmp_path)
    out = tmp_path / "out"
    argv = ["batch", "recover", str(inp), "--out", str(out), "--workers", "2", "--threads", "--model", str(model),
            "--quiet"]
    assert main(argv) == 1  # one input failed
    recs = _manifest(out)
    assert {k: r["status"] for k, r in recs.items()} == {
        "broken.dream3d": "failed", "vol0.dream3d": "ok", "vol1.dream3d": "ok", "vol2": "ok"}
    assert "EBSDFormatError" in recs["broken.dream3d"]["error"] and "broken.dream3d" in recs["broken.dream3d"]["error"]
    outs = sorted(p.name for p in out.glob("*.dream3d"))
    assert outs == ["sub__vol2.recovered.dream3d", "vol0.recovered.dream3d", "vol1.recovered.dream3d"]
    # each output equals recover_missing_slices on that input, called directly
    for name, src in [("vol0.recovered.dream3d", inp / "vol0.dream3d"), ("sub__vol2.recovered.dream3d", inp / "sub/vol2")]:
        got = load_volume(out / name)
        ref = recover_missing_slices(load_volume(src), MISSING, model=str(model), progress=False)
        assert got.metadata["recovered_slices"] == MISSING
        assert got.equals(ref, atol=1e-6)
    for k in ("vol0.dream3d", "vol1.dream3d", "vol2"):
        assert recs[k]["metrics"]["recovered_slices"] == MISSING and recs[k]["seconds"]["total"] > 0

    # second run: no work at all (outputs untouched), the known-bad input is still reported
    before = _mtimes(out)
    assert main(argv) == 1
    recs = _manifest(out)
    assert not any(r["attempted"] for r in recs.values())
    assert [recs[k]["status"] for k in ("vol0.dream3d", "vol1.dream3d", "vol2")] == ["skipped"] * 3
    assert recs["broken.dream3d"]["status"] == "failed" and "EBSDFormatError" in recs["broken.dream3d"]["error"]
    assert _mtimes(out) == before

    # removing one output redoes only that one
    (out / "vol1.recovered.dream3d").unlink()
    assert main(argv) == 1
    recs = _manifest(out)
    assert {k for k, r in recs.items() if r["attempted"]} == {"vol1.dream3d"}
    assert recs["vol1.dream3d"]["status"] == "ok"
    after = _mtimes(out)
    assert after["vol0.recovered.dream3d"] == before["vol0.recovered.dream3d"]
    assert after["vol1.recovered.dream3d"] != before["vol1.recovered.dream3d"]

    # a touched but unchanged input is re-hashed and skipped; a changed one is redone
    os.utime(inp / "vol0.dream3d", ns=(1, 1))
    v = synthetic_volume((8, 24, 24), mean_grain_size=8, seed=7, noise_deg=0.5, missing_slices=MISSING)
    save_volume(v, inp / "vol1.dream3d", overwrite=True)
    (inp / "broken.dream3d").unlink()
    assert main(argv) == 0
    recs = _manifest(out)
    assert recs["vol0.dream3d"]["status"] == "skipped" and recs["vol1.dream3d"]["status"] == "ok"
    assert recs["vol1.dream3d"]["attempted"] and not recs["vol2"]["attempted"]
    assert _mtimes(out)["vol0.recovered.dream3d"] == before["vol0.recovered.dream3d"]

    # an input that breaks after it was processed: failed, its old output no longer counts as up to date
    (inp / "vol0.dream3d").write_bytes(b"not hdf5")
    assert main(argv) == 1
    recs = _manifest(out)
    assert recs["vol0.dream3d"]["status"] == "failed" and recs["vol0.dream3d"]["attempted"]
    assert not (out / "vol0.recovered.dream3d.done.json").exists()
    assert main(argv) == 1
    assert not _manifest(out)["vol0.dream3d"]["attempted"]  # same broken bytes: reported, not retried


def test_api_params_change_reruns_and_info(tmp_path):
    inp, model = _volumes(tmp_path)
    out = tmp_path / "out"
    r1 = batch.run("recover", inp, out, workers=2, processes=False, progress=False, model=str(model),
                   pattern="vol*", project=False)
    assert [r["status"] for r in r1] == ["ok", "ok", "ok"]  # "vol*" matches vol2's folder name too
    r2 = batch.run("recover", inp, out, workers=2, processes=False, progress=False, model=str(model),
                   pattern="vol*", project=True)  # other parameters: redone
    assert [(r["status"], r["attempted"]) for r in r2] == [("ok", True)] * 3
    with open(out / "vol0.recovered.dream3d", "r+b") as f:  # a damaged (truncated) output is redone
        f.truncate(100)
    r2b = batch.run("recover", inp, out, workers=2, processes=False, progress=False, model=str(model),
                    pattern="vol*", project=True)
    assert [(Path(r["input"]).name, r["status"]) for r in r2b] == [
        ("vol2", "skipped"), ("vol0.dream3d", "ok"), ("vol1.dream3d", "skipped")]
    assert load_volume(out / "vol0.recovered.dream3d").metadata["recovered_slices"] == MISSING
    r3 = batch.run("info", inp, out, workers=2, processes=False, progress=False)
    st = {Path(r["input"]).name: r["status"] for r in r3}
    assert st == {"broken.dream3d": "failed", "vol0.dream3d": "ok", "vol1.dream3d": "ok", "vol2": "ok"}
    d = json.loads((out / "sub__vol2.info.json").read_text())
    assert d["shape"] == [8, 24, 24] and d["empty_slices"] == MISSING


def test_enhance_and_bad_parameters_refused(tmp_path):
    inp, _ = _volumes(tmp_path)
    with pytest.raises(EBSDValueError, match="2-D"):
        batch.run("enhance", inp, tmp_path / "o", progress=False)
    assert main(["batch", "enhance", str(inp), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    with pytest.raises(EBSDValueError, match="unknown parameters"):
        batch.run("rpca", inp, tmp_path / "o", progress=False, rank=3)
    assert not (tmp_path / "o" / "manifest.json").exists()


# --------------------------------------------------------------------------------------------- tiling
def _owners(n, T, ov, off=0):
    """Which network tile start writes each position last along one axis: the rule of
    ``ebsd.recovery.api.predict_slices`` (starts every ``T - ov`` plus ``n - T``, interiors lose ``ov // 2``
    on sides with a neighbour), written out independently."""
    t = min(T, n)
    if n <= t:
        starts = [0]
    else:
        starts = list(range(0, n - t + 1, max(1, t - ov)))
        if starts[-1] != n - t:
            starts.append(n - t)
    own = [None] * n
    for y in starts:
        for v in range(y + (ov // 2 if y > 0 else 0), y + t - (ov // 2 if y + t < n else 0)):
            own[v] = y + off
    return own


@pytest.mark.parametrize("T,ov", [(16, 4), (48, 8), (16, 5)])
def test_recovery_windows_follow_the_network_grid(T, ov):
    for n in range(5, 110, 3):
        ref = _owners(n, T, ov)
        for tile in (4, 7, 16, 33, 50):
            for halo in (0, 5):
                w = batch.recovery_windows(n, tile, halo, min(T, n), ov)
                assert [v for c0, c1, _, _ in w for v in range(c0, c1)] == list(range(n))
                for c0, c1, a, b in w:
                    assert 0 <= a <= c0 < c1 <= b <= n
                    assert a == 0 or c0 - a >= halo
                    own = _owners(b - a, T, ov, off=a)
                    assert own[c0 - a:c1 - a] == ref[c0:c1], (n, tile, halo, (c0, c1, a, b))


def test_tiled_recovery_matches_untiled():
    vol = synthetic_volume((9, 44, 40), mean_grain_size=10, seed=3, noise_deg=0.5, missing_slices=[4, 5])
    net = tiny_model()  # tile 16, overlap 4: 4 x 4 network tiles
    missing = [4, 5]
    raw, _ = batch.recover_tiled(vol, missing, model=net, tile=None, project=False, method="network")
    raw_t, n = batch.recover_tiled(vol, missing, model=net, tile=15, halo=4, project=False, method="network")
    assert n == 9
    q, qt = raw.quaternions, raw_t.quaternions
    # the network output is the same voxel for voxel (same tiles), known slices untouched
    assert torch.minimum((q - qt).abs().amax(-1), (q + qt).abs().amax(-1)).max() <= 1e-5
    keep = [z for z in range(9) if z not in missing]
    assert torch.equal(qt[keep], vol.quaternions[keep])
    # with the projection step, grain means come from the part of each grain inside the window
    full, _ = batch.recover_tiled(vol, missing, model=net, tile=None, method="network")
    tiled, _ = batch.recover_tiled(vol, missing, model=net, tile=15, halo=4, method="network")
    ang = torch.rad2deg(misorientation_angle(full.quaternions[missing], tiled.quaternions[missing], "m-3m"))
    assert float(ang.median()) <= 1e-3 and float(ang.max()) <= 0.5  # measured: median 0, max 0.11 deg
    assert tiled.metadata["recovered_slices"] == missing
    assert torch.equal(tiled.confidence, full.confidence) and torch.equal(tiled.valid, full.valid)
    # auto: one self-check (central window) decides the method for every window, and says so
    auto, _ = batch.recover_tiled(vol, missing, model=net, tile=15, halo=4)
    sc = auto.metadata["recovery_self_check"]
    assert sc["window"] == "central" and sc["n_sections"] >= 1
    assert auto.metadata["recovery_method"] == sc["method"].split(" (")[0]


def test_tiled_rpca_equals_untiled_on_exactly_low_rank_volume(tmp_path):
    """Image quality = exact Tucker rank (2, 2, 2) + 5 % sparse spikes: every x-y window is exactly low rank
    plus sparse too, so tiled and untiled RPCA both return the true low-rank part."""
    from tensorrpca.synthetic import synthetic_rpca

    p = synthetic_rpca((10, 32, 32), (2, 2, 2), alpha=0.05, seed=0, dtype=torch.float32)
    L = p.low_rank.numpy()
    inp = tmp_path / "in"
    inp.mkdir()
    v = synthetic_volume((10, 32, 32), mean_grain_size=10, seed=1)
    v.image_quality = p.Y.clone()
    save_volume(v, inp / "lowrank.dream3d")
    res = {}
    for tile in (None, 16):
        out = tmp_path / f"out{tile}"
        (r,) = batch.run("rpca", inp, out, workers=2, processes=False, progress=False, ranks=(2, 2, 2),
                         tile=tile, halo=4, tol=1e-6)
        assert r["status"] == "ok" and r["metrics"]["converged"] and r["metrics"]["tiles"] == (1 if tile is None else 4)
        import h5py

        with h5py.File(out / "lowrank.rpca.h5") as f:
            res[tile] = (f["low_rank"][()], f["sparse"][()])
    for low, sparse in res.values():
        assert np.linalg.norm(low - L) / np.linalg.norm(L) <= 1e-4
        np.testing.assert_allclose(low + sparse, p.Y.numpy(), atol=1e-4)
    assert np.abs(res[None][0] - res[16][0]).max() <= 1e-3 * np.abs(L).max()
    # the windows are the exact blocks: tile 16, halo 4 on 32 -> cores [0,16), [16,32), windows [0,20), [12,32)
    assert batch.tile_windows(32, 16, 4) == [(0, 16, 0, 20), (16, 32, 12, 32)]


def test_ctrl_c_keeps_finished_outputs(tmp_path, monkeypatch):
    """Ctrl-C after the first finished input: the manifest is written, that output and its sidecar are in
    place, and the next run does not redo it."""
    import distributed

    inp, model = _volumes(tmp_path)
    (inp / "broken.dream3d").unlink()
    out = tmp_path / "out"
    real = distributed.as_completed

    def interrupted(futures):
        for k, f in enumerate(real(futures)):
            if k == 1:
                raise KeyboardInterrupt
            yield f

    monkeypatch.setattr(distributed, "as_completed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        batch.run("recover", inp, out, workers=2, processes=False, progress=False, model=str(model))
    recs = json.loads((out / "manifest.json").read_text())["records"]
    ok = [r for r in recs if r["status"] == "ok"]
    assert len(ok) == 1 and sum(r["status"] == "interrupted" for r in recs) == 2
    done = Path(ok[0]["output"])
    assert done.is_file() and Path(str(done) + ".done.json").is_file()
    assert load_volume(done).metadata["recovered_slices"] == MISSING
    monkeypatch.setattr(distributed, "as_completed", real)
    recs = batch.run("recover", inp, out, workers=2, processes=False, progress=False, model=str(model))
    by_out = {r["output"]: r for r in recs}
    assert by_out[str(done)]["status"] == "skipped" and not by_out[str(done)]["attempted"]
    # the others ran again, or were skipped if their task had finished in the background before the cancel
    assert all(r["status"] in ("ok", "skipped") for r in recs) and len(list(out.glob("*.recovered.dream3d"))) == 3
