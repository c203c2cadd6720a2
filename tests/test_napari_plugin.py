"""napari plugin: reader per format, writer, recovery widget (run + cancel), RPCA widget, broken files.

Runs headless under Xvfb (``bash scripts/dev.sh test`` starts it); skipped without a display.
"""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.napari

from qtpy.QtCore import QThreadPool, QTimer  # noqa: E402

from ebsd.napari._layers import volume_of  # noqa: E402
from ebsd.napari._widgets import RPCAWidget, RecoverSlicesWidget, contiguous_runs, parse_indices  # noqa: E402

PLUGIN = "ebsd-tensor-toolkit"


@pytest.fixture(scope="module")
def small_volume():
    from ebsd.synthetic import synthetic_volume

    return synthetic_volume(shape=(6, 20, 24), mean_grain_size=8.0, symmetry="m-3m", seed=5, spacing=(2.0, 0.5, 0.5))


def test_parse_helpers():
    assert parse_indices("3, 7-9, 3") == [3, 7, 8, 9]
    assert contiguous_runs([7, 2, 3, 9]) == [[2, 3], [7], [9]]
    with pytest.raises(ValueError):
        parse_indices("a,b")


@pytest.mark.parametrize("fmt", ["dream3d", "ang_folder", "ang_file", "h5", "ctf_file", "ctf_folder", "h5oina"])
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
    elif fmt == "ctf_file":
        vol = vol.slices(0, 1)
        path = save_volume(vol, tmp_path / "v.CTF")
    elif fmt == "ctf_folder":
        from ebsd.io.ctf import write_ctf

        path = tmp_path / "ctf_slices"
        path.mkdir()
        for z in range(vol.shape[0]):
            write_ctf(vol, path / f"s{z + 1}.ctf", z=z)
    elif fmt == "h5oina":
        from _io_files import write_h5oina

        path = write_h5oina(tmp_path / "v.h5oina", vol)
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
    k = 0 if fmt in ("dream3d", "ang_folder") else 1  # (.ctf folders and .h5oina stacks carry no dz either)
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


def _wait_idle(qtbot, widget, timeout=120_000):
    """Wait until the recovery widget is idle and its worker thread is done; fails (never hangs) on timeout.

    Polls the widget's state, which is driven by slots connected before the worker started, instead of
    ``qtbot.waitSignal(worker.finished)``: a worker that ends before the test connects to ``finished`` would
    leave ``waitSignal`` waiting for a signal that was already emitted (what hung CI once).
    """
    qtbot.waitUntil(lambda: not widget.busy and not widget.worker_running, timeout=timeout)


def test_sample_and_recovery_widget_adds_layers(make_napari_viewer, qtbot):
    from ebsd.napari._sample import SAMPLE_MISSING

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "two-missing-slices")
    widget = RecoverSlicesWidget(viewer)
    # the detector proposes the two missing slices of the sample
    assert widget.indices() == list(SAMPLE_MISSING)
    n_before = len(viewer.layers)
    worker = widget.run()
    assert worker is not None and widget.busy and not widget.run_btn.isEnabled()
    _wait_idle(qtbot, widget)
    assert "recovered slices" in widget.status.text() and widget.run_btn.isEnabled()
    assert len(viewer.layers) == n_before + 3
    rec = volume_of(viewer.layers[-3])
    assert rec is not None and rec.metadata.get("recovered_slices") == list(SAMPLE_MISSING)
    assert rec.valid[list(SAMPLE_MISSING)].all()
    highlight = viewer.layers[-2].data
    assert highlight[list(SAMPLE_MISSING)].all() and highlight.sum() == len(SAMPLE_MISSING) * np.prod(rec.shape[1:])


class _GatedRecovery:
    """Stand-in for ``ebsd.recovery.recover_missing_slices`` that the test can hold inside a recovery step.

    ``entered`` is set when the worker is inside a step (it has yielded its first progress value by then);
    the step waits for ``release`` (at most 30 s, so a broken test cannot hang) and then runs the real code.
    """

    def __init__(self, real, gated: bool):
        self.real = real
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        if not gated:
            self.release.set()

    def __call__(self, *a, **k):
        self.calls += 1
        self.entered.set()
        if not self.release.wait(30):
            raise AssertionError("test never released the recovery step")
        return self.real(*a, **k)


@pytest.fixture
def cancel_setup(make_napari_viewer, monkeypatch):
    """Viewer with the sample volume, a recovery widget with four separate runs queued, and a factory that
    patches the recovery with a :class:`_GatedRecovery`."""
    import ebsd.recovery as recovery

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "two-missing-slices")
    widget = RecoverSlicesWidget(viewer)
    widget.set_indices([2, 5, 9, 10, 14])  # four separate runs
    # every layer's name and data, and a deep copy of the EBSDVolume the layers carry
    snapshot = SimpleNamespace(layers=[(lay.name, np.array(lay.data, copy=True)) for lay in viewer.layers],
                               volume=volume_of(widget.picker.layer()).copy())

    made = []
    # these tests are about cancelling between recovery steps: skip the self-check (tested elsewhere)
    import ebsd.recovery.api as api

    monkeypatch.setattr(api, "choose_method", lambda *a, **k: ("blend", None))

    def patch(gated: bool) -> _GatedRecovery:
        fake = _GatedRecovery(recovery.recover_missing_slices, gated)
        monkeypatch.setattr(recovery, "recover_missing_slices", fake)
        made.append(fake)
        return fake

    yield viewer, widget, snapshot, patch
    for fake in made:  # never leave a worker blocked in the gate behind
        fake.release.set()
    assert QThreadPool.globalInstance().waitForDone(60_000), "a worker thread did not end"


def _assert_cancelled_and_unchanged(viewer, widget, snapshot):
    assert not widget.busy and widget.run_btn.isEnabled() and not widget.cancel_btn.isEnabled()
    assert "cancelled" in widget.status.text()
    assert widget.result is None
    assert [lay.name for lay in viewer.layers] == [name for name, _ in snapshot.layers]  # no layer added
    for lay, (_, data) in zip(viewer.layers, snapshot.layers):
        np.testing.assert_array_equal(lay.data, data)  # no data changed
    assert volume_of(widget.picker.layer()).equals(snapshot.volume)
    assert widget.progress.value() == 0  # late progress of the cancelled run is dropped


@pytest.mark.parametrize("where", ["test_body", "event_loop"])
def test_recovery_cancel_immediately_after_run(cancel_setup, qtbot, where):
    """Cancel right after run(). From inside the event loop napari only queues the worker's start, so the
    worker is quit before it starts (the timing that once left the widget "running"); from the test body
    the worker starts at once and cancel() races with the thread getting going."""
    viewer, widget, snapshot, patch = cancel_setup
    fake = patch(gated=False)
    started = []

    def run_and_cancel():
        worker = widget.run()
        widget.cancel()
        started.append((worker, widget.busy))

    if where == "test_body":
        run_and_cancel()
    else:
        QTimer.singleShot(0, run_and_cancel)
        qtbot.waitUntil(lambda: bool(started), timeout=10_000)
    worker, busy_after_cancel = started[0]
    assert worker is not None and worker.abort_requested
    assert not busy_after_cancel  # cancel() is synchronous: idle at once, whatever the worker does
    _assert_cancelled_and_unchanged(viewer, widget, snapshot)
    _wait_idle(qtbot, widget, timeout=60_000)  # the worker thread ends too (aborted / finished arrive)
    _assert_cancelled_and_unchanged(viewer, widget, snapshot)
    # the worker checks the abort flag between steps: at most the step it was already in ran
    assert fake.calls <= 1
    if where == "event_loop":
        assert fake.calls == 0  # quit before start: no recovery step at all
    # the widget is usable again
    assert widget.run() is not None
    widget.cancel()
    _wait_idle(qtbot, widget, timeout=60_000)


def test_recovery_cancel_after_first_progress_yield(cancel_setup, qtbot):
    """Cancel while the worker is inside its first recovery step (after its first progress yield)."""
    viewer, widget, snapshot, patch = cancel_setup
    fake = patch(gated=True)
    try:
        worker = widget.run()
        assert worker is not None
        qtbot.waitUntil(fake.entered.is_set, timeout=30_000)
        assert widget.busy and widget.worker_running
        assert widget.run() is None and "already running" in widget.status.text()  # no second run meanwhile
        widget.cancel()
        _assert_cancelled_and_unchanged(viewer, widget, snapshot)
        assert widget.worker_running  # the step in flight is not interrupted ...
    finally:
        fake.release.set()
    _wait_idle(qtbot, widget, timeout=60_000)  # ... but the worker stops after it
    assert fake.calls == 1  # runs 2..4 never started
    _assert_cancelled_and_unchanged(viewer, widget, snapshot)


def test_recovery_cancel_after_worker_returned_drops_the_result(cancel_setup, qtbot):
    """Cancel after the worker returned but before its result reached the GUI thread: nothing is added."""
    viewer, widget, snapshot, patch = cancel_setup
    widget.set_indices([9, 10])  # one run of the sample's real missing slices: fast
    fake = patch(gated=False)
    worker = widget.run()
    assert worker is not None
    # block the GUI thread (no event processing) until the worker thread is done: its returned / finished
    # signals are then queued, not yet delivered
    assert QThreadPool.globalInstance().waitForDone(120_000)
    assert fake.calls == 1 and widget.busy
    widget.cancel()
    _wait_idle(qtbot, widget)
    _assert_cancelled_and_unchanged(viewer, widget, snapshot)


def test_recovery_runtime_error_returns_widget_to_idle(cancel_setup, qtbot, monkeypatch):
    """A RuntimeError in the worker (torch raises those) is reported and ends the run; superqt alone would
    swallow it without emitting ``errored`` or ``finished`` and the widget would stay "running"."""
    import ebsd.recovery as recovery
    import napari.utils.notifications as notes

    viewer, widget, snapshot, _ = cancel_setup
    shown = []
    monkeypatch.setattr(notes, "show_error", lambda msg: shown.append(msg))

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(recovery, "recover_missing_slices", boom)
    worker = widget.run()
    assert worker is not None
    _wait_idle(qtbot, widget, timeout=60_000)
    assert widget.status.text() == "recovery failed: RuntimeError: boom"
    assert shown == ["Recover slices: RuntimeError: boom"]
    assert widget.result is None and len(viewer.layers) == len(snapshot.layers)
    assert widget.run_btn.isEnabled() and not widget.cancel_btn.isEnabled()


def test_rpca_widget_adds_low_rank_and_sparse(make_napari_viewer, qtbot):
    from tensorrpca.synthetic import synthetic_rpca

    Y, X, S = synthetic_rpca((20, 24, 28), ranks=(2, 2, 2), alpha=0.02, seed=3, dtype=torch.float32)
    viewer = make_napari_viewer()
    viewer.add_image(Y.numpy(), name="field")
    w = RPCAWidget(viewer)
    w.ranks.setText("2,2,2")
    worker = w.run()
    assert worker is not None
    # poll the widget (its slots were connected before the worker started) instead of waitSignal(finished),
    # which misses a signal emitted before it connects; then let the thread end
    qtbot.waitUntil(lambda: w.status.text() != "running ...", timeout=120_000)
    assert QThreadPool.globalInstance().waitForDone(60_000)
    names = [lay.name for lay in viewer.layers]
    assert "field low-rank" in names and "field sparse" in names
    low = viewer.layers["field low-rank"].data
    sparse = viewer.layers["field sparse"].data
    # the low-rank layer is the clean tensor (clipped at 0 for display), the sparse one holds the corruption
    np.testing.assert_allclose(low, np.clip(X.numpy(), 0, None), atol=1e-3)
    assert ((np.abs(sparse) > 1e-3) == (S.numpy() != 0)).mean() > 0.999


def test_rpca_widget_reports_a_runtime_error(make_napari_viewer, qtbot, monkeypatch):
    """A RuntimeError inside the RPCA worker (torch raises those) reaches the status line instead of leaving
    the widget at "running ..." (superqt would swallow it without emitting ``errored``)."""
    import tensorrpca

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(tensorrpca, "rpca", boom)
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((6, 7, 8)).astype(np.float32), name="field")
    w = RPCAWidget(viewer)
    w.ranks.setText("2,2,2")
    n_layers = len(viewer.layers)
    assert w.run() is not None
    qtbot.waitUntil(lambda: w.status.text() != "running ...", timeout=60_000)
    assert QThreadPool.globalInstance().waitForDone(60_000)
    assert w.status.text() == "RPCA failed: RuntimeError: boom"
    assert len(viewer.layers) == n_layers


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
