"""napari plugin: reader per format, writer, recovery widget (run + cancel), RPCA widget, broken files.

Runs headless under Xvfb (``bash scripts/dev.sh test`` starts it); skipped without a display.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.napari

from ebsd.napari._layers import volume_of  # noqa: E402
from ebsd.napari._widgets import RPCAWidget, RecoverSlicesWidget, contiguous_runs, parse_indices  # noqa: E402

PLUGIN = "ebsd-tensor-toolkit"


@pytest.fixture(scope="module")
def small_volume():
    from ebsd.synthetic import synthetic_volume

    return synthetic_volume(shape=(6, 20, 24), mean_grain_size=8.0, symmetry="m-3m", seed=5, spacing=(2.0, 0.5, 0.5))


def _wait(qtbot, worker, timeout=120_000):
    with qtbot.waitSignal(worker.finished, timeout=timeout):
        pass


def test_parse_helpers():
    assert parse_indices("3, 7-9, 3") == [3, 7, 8, 9]
    assert contiguous_runs([7, 2, 3, 9]) == [[2, 3], [7], [9]]
    with pytest.raises(ValueError):
        parse_indices("a,b")


@pytest.mark.parametrize("fmt", ["dream3d", "ang_folder", "ang_file", "h5"])
def test_reader_opens_each_format_with_shape_and_scale(make_napari_viewer, tmp_path, small_volume, fmt):
    from ebsd.io import save_volume

    vol = small_volume
    if fmt == "dream3d":
        path = tmp_path / "v.dream3d"
        save_volume(vol, path)
    elif fmt == "ang_folder":
        path = tmp_path / "slices"
        save_volume(vol, path, format="ang")
    elif fmt == "ang_file":
        folder = tmp_path / "slices"
        save_volume(vol, folder, format="ang")
        path = sorted(folder.glob("*.ang"))[0]
        vol = vol.slices(0, 1)
    else:
        from ebsd.io.h5oim import write_oim_h5

        path = tmp_path / "v.h5"
        write_oim_h5(vol.slices(0, 1), path)
        vol = vol.slices(0, 1)
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin=PLUGIN)
    names = [lay.name for lay in layers]
    ipf = [lay for lay in layers if lay.name.endswith("IPF-Z")][0]
    assert ipf.rgb and ipf.data.shape == (*vol.shape, 3)
    # single slices carry no z spacing (readers default dz to the in-plane step): compare (dy, dx) there
    k = 0 if fmt in ("dream3d", "ang_folder") else 1
    np.testing.assert_allclose(ipf.scale[k:], vol.spacing[k:], rtol=1e-5)
    assert any(n.endswith("phases") for n in names) and any(n.endswith("CI") for n in names)
    got = volume_of(ipf)
    assert got is not None and got.shape == vol.shape


def test_broken_file_gives_notification_not_crash(make_napari_viewer, tmp_path, monkeypatch):
    bad = tmp_path / "broken.ang"
    bad.write_text("# this is not\n# an ang file\n1 2 3\n")
    shown = []
    import napari.utils.notifications as notes

    monkeypatch.setattr(notes, "show_error", lambda msg: shown.append(msg))
    viewer = make_napari_viewer()
    viewer.open(str(bad), plugin=PLUGIN)
    assert len(viewer.layers) == 0
    assert shown and "broken.ang" in shown[0]


def test_sample_and_recovery_widget_adds_layers(make_napari_viewer, qtbot):
    from ebsd.napari._sample import SAMPLE_MISSING

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "two-missing-slices")
    widget = RecoverSlicesWidget(viewer)
    # the detector proposes the two missing slices of the sample
    assert widget.indices() == list(SAMPLE_MISSING)
    n_before = len(viewer.layers)
    worker = widget.run()
    _wait(qtbot, worker)
    assert len(viewer.layers) == n_before + 3
    rec = volume_of(viewer.layers[-3])
    assert rec is not None and rec.metadata.get("recovered_slices") == list(SAMPLE_MISSING)
    assert rec.valid[list(SAMPLE_MISSING)].all()
    highlight = viewer.layers[-2].data
    assert highlight[list(SAMPLE_MISSING)].all() and highlight.sum() == len(SAMPLE_MISSING) * np.prod(rec.shape[1:])


@pytest.mark.xfail(strict=False, reason="race: quit() right after start sometimes leaves the worker without a finished signal (seen once in 4 full runs); fix pending")
def test_recovery_cancel_changes_nothing(make_napari_viewer, qtbot, monkeypatch):
    import time

    import ebsd.recovery as recovery

    real = recovery.recover_missing_slices

    def slow(*a, **k):
        time.sleep(0.5)
        return real(*a, **k)

    monkeypatch.setattr(recovery, "recover_missing_slices", slow)
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "two-missing-slices")
    widget = RecoverSlicesWidget(viewer)
    widget.set_indices([2, 5, 9, 10, 14])  # four separate runs
    n_before = len(viewer.layers)
    worker = widget.run()
    widget.cancel()
    _wait(qtbot, worker)
    assert len(viewer.layers) == n_before and widget.result is None
    assert "cancelled" in widget.status.text()


def test_rpca_widget_adds_low_rank_and_sparse(make_napari_viewer, qtbot):
    from tensorrpca.synthetic import synthetic_rpca

    Y, X, S = synthetic_rpca((20, 24, 28), ranks=(2, 2, 2), alpha=0.02, seed=3, dtype=torch.float32)
    viewer = make_napari_viewer()
    viewer.add_image(Y.numpy(), name="field")
    w = RPCAWidget(viewer)
    w.ranks.setText("2,2,2")
    worker = w.run()
    _wait(qtbot, worker)
    names = [lay.name for lay in viewer.layers]
    assert "field low-rank" in names and "field sparse" in names
    low = viewer.layers["field low-rank"].data
    sparse = viewer.layers["field sparse"].data
    # the low-rank layer is the clean tensor (clipped at 0 for display), the sparse one holds the corruption
    np.testing.assert_allclose(low, np.clip(X.numpy(), 0, None), atol=1e-3)
    assert ((np.abs(sparse) > 1e-3) == (S.numpy() != 0)).mean() > 0.999


def test_writer_saves_recoverable_dream3d(make_napari_viewer, tmp_path, small_volume):
    from ebsd.io import load_volume, save_volume

    src = tmp_path / "in.dream3d"
    save_volume(small_volume, src)
    viewer = make_napari_viewer()
    layers = viewer.open(str(src), plugin=PLUGIN)
    out = tmp_path / "out.dream3d"
    ipf = layers[0]
    written = napari.save_layers(str(out), [ipf], plugin=PLUGIN)
    assert [str(p) for p in written] == [str(out)]
    assert load_volume(out).equals(small_volume, atol=1e-6)
