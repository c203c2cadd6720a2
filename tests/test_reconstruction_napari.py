"""napari dock steps of the reconstruction: "Align sections" (preview, apply, undo by layers) and "Clean"."""
from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.napari

from qtpy.QtCore import QThreadPool  # noqa: E402

from ebsd.napari._layers import volume_layers, volume_of  # noqa: E402
from ebsd.napari._widgets import AlignSectionsWidget, CleanWidget  # noqa: E402


def _add(viewer, vol, name="S"):
    for data, kw, kind in volume_layers(vol, name=name):
        getattr(viewer, f"add_{kind}")(data, **kw)


def test_align_widget_preview_apply_undo(make_napari_viewer, qtbot):
    from ebsd.reconstruction import random_drift
    from ebsd.synthetic import synthetic_volume

    d = random_drift(6, max_shift=3, jumps=0, seed=4)
    vol = synthetic_volume((6, 32, 32), mean_grain_size=8, seed=2, drift=d)
    viewer = make_napari_viewer()
    _add(viewer, vol)
    w = AlignSectionsWidget(viewer)
    assert w.picker.currentText() == "S IPF-Z"
    w.max_shift.setText("4")
    assert w.preview() is not None
    qtbot.waitUntil(lambda: w.status.text() != "aligning ...", timeout=120_000)
    assert QThreadPool.globalInstance().waitForDone(60_000)
    assert w.result is not None and (w.result.shifts == d[0] - d).all()
    assert (w.plot.shifts == w.result.shifts).all() and w.apply_btn.isEnabled()
    n = len(viewer.layers)
    added = w.apply()
    assert len(viewer.layers) == n + 4 and "S aligned IPF-Z" in [lay.name for lay in viewer.layers]
    new = volume_of(viewer.layers["S aligned IPF-Z"])
    assert (np.asarray(new.metadata["alignment_shifts"]) == d[0] - d).all()
    assert not viewer.layers["S IPF-Z"].visible and all(lay.visible or "IPF" not in lay.name for lay in added)


def test_clean_widget_adds_clean_layers_and_grains(make_napari_viewer, qtbot):
    from ebsd.synthetic import synthetic_volume

    vol = synthetic_volume((6, 24, 24), mean_grain_size=8, seed=2, speckle_fraction=0.05)
    viewer = make_napari_viewer()
    _add(viewer, vol)
    w = CleanWidget(viewer)
    w.min_grain.setText("4")
    assert w.run() is not None
    qtbot.waitUntil(lambda: w.status.text() != "cleaning ...", timeout=120_000)
    assert QThreadPool.globalInstance().waitForDone(60_000)
    assert "grains" in w.status.text(), w.status.text()
    names = [lay.name for lay in viewer.layers]
    assert "S clean IPF-Z" in names and "S grains" in names
    clean = volume_of(viewer.layers["S clean IPF-Z"])
    assert float(clean.confidence[clean.valid].min()) >= 0.1  # speckle replaced or marked bad
    assert viewer.layers["S grains"].data.max() > 5
