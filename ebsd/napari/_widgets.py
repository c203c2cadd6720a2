"""Dock widgets: "Recover slices" and "Clean outliers (RPCA)".

Both run their work in a napari worker thread (the viewer stays responsive), show a progress bar, can be
cancelled, and add their results as new layers (the originals stay: undo = toggle layer visibility).
"""
from __future__ import annotations

import threading
from functools import partial

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import EBSDError
from ._layers import volume_layers, volume_of


def parse_indices(text: str) -> list[int]:
    """``"3, 7-9"`` -> ``[3, 7, 8, 9]`` (sorted, unique). Raises ValueError on anything else."""
    out: set[int] = set()
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            a, b = part.split("-", 1) if not part.startswith("-") else (part, part)
            lo, hi = int(a), int(b)
            out.update(range(min(lo, hi), max(lo, hi) + 1))
        else:
            out.add(int(part))
    return sorted(out)


def contiguous_runs(indices: list[int]) -> list[list[int]]:
    """``[2, 3, 7]`` -> ``[[2, 3], [7]]`` (the runs :func:`ebsd.recovery.recover_missing_slices` works in)."""
    from ..recovery._common import runs

    return [list(range(a, b + 1)) for a, b in runs(indices)]


class _LayerPicker(QComboBox):
    """A combo box of the viewer's layers that pass ``accept``; refreshed when layers change."""

    def __init__(self, viewer, accept):
        super().__init__()
        self._viewer = viewer
        self._accept = accept
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        self.refresh()

    def refresh(self, *args) -> None:
        current = self.currentText()
        self.clear()
        names = [lay.name for lay in self._viewer.layers if self._accept(lay)]
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)

    def layer(self):
        name = self.currentText()
        return self._viewer.layers[name] if name in self._viewer.layers else None


class RecoverSlicesWidget(QWidget):
    """Find bad slices, edit the list (also from the current z of the viewer), recover them."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.result = None  # the recovered EBSDVolume of the last finished run
        self.expected_error = None  # "expected error on this volume: ..." of the last finished run (self-check)
        self._job = None  # threading.Event of the run being waited for (set = cancelled); None = idle
        self._worker_running = False
        self.picker = _LayerPicker(napari_viewer, lambda lay: volume_of(lay) is not None)
        self.slices = QLineEdit()
        self.slices.setPlaceholderText("e.g. 12, 13 or 12-14")
        self.detect_btn = QPushButton("Detect bad slices")
        self.add_btn = QPushButton("Add current z")
        self.remove_btn = QPushButton("Remove current z")
        self.project = QCheckBox("Project onto neighbouring grains")
        self.project.setChecked(True)
        self.run_btn = QPushButton("Run")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Volume", self.picker)
        form.addRow("Slices", self.slices)
        row = QHBoxLayout()
        for b in (self.detect_btn, self.add_btn, self.remove_btn):
            row.addWidget(b)
        run_row = QHBoxLayout()
        run_row.addWidget(self.run_btn)
        run_row.addWidget(self.cancel_btn)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(row)
        lay.addWidget(self.project)
        lay.addLayout(run_row)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addStretch(1)

        self.detect_btn.clicked.connect(self.detect)
        self.add_btn.clicked.connect(lambda: self._edit_current(add=True))
        self.remove_btn.clicked.connect(lambda: self._edit_current(add=False))
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        self.picker.currentTextChanged.connect(lambda *_: self.detect())
        self.detect()

    # ----------------------------------------------------------------- slice list
    def indices(self) -> list[int]:
        return parse_indices(self.slices.text())

    def set_indices(self, idx) -> None:
        self.slices.setText(", ".join(str(i) for i in sorted(set(idx))))

    def _current_z(self) -> int | None:
        layer = self.picker.layer()
        if layer is None:
            return None
        world = self.viewer.dims.point[0]
        return int(round(layer.world_to_data(self.viewer.dims.point)[0])) if world is not None else None

    def _edit_current(self, add: bool) -> None:
        z = self._current_z()
        if z is None:
            return
        idx = set(self.indices())
        idx = idx | {z} if add else idx - {z}
        self.set_indices(idx)

    def detect(self) -> list[int]:
        """Fill the slice list with the automatically found bad slices (low CI / IQ / jumps)."""
        layer = self.picker.layer()
        vol = volume_of(layer) if layer is not None else None
        if vol is None:
            return []
        from ..recovery import find_bad_slices

        bad = list(find_bad_slices(vol))
        self.set_indices(bad)
        self.status.setText(f"found {len(bad)} bad slice(s)" if bad else "no bad slices found")
        return bad

    # ----------------------------------------------------------------- run / cancel
    #
    # Life of a run. ``run()`` makes a *job* token (a ``threading.Event``, set = cancelled) and connects every
    # worker signal through it; ``self._job`` holds the token of the run the widget is waiting for (``None`` =
    # idle). Whatever ends the run first -- the result (``returned``), an error (``errored``), the worker
    # stopping (``aborted`` / ``finished``) or ``cancel()`` -- returns the widget to idle exactly once
    # (:meth:`_end`); signals of a job that is no longer current are dropped. So:
    #
    # * ``cancel()`` is synchronous: the widget is idle when it returns, whether the worker thread has not
    #   started yet (napari queues the start when an event loop runs), is inside a recovery step, or has
    #   already returned a result that is still queued for the GUI thread (that result is thrown away).
    # * the worker checks the abort flag between yields only: a step that is running finishes in the
    #   background, its result is never shown; ``worker_running`` says when the thread is really done.
    # * no layer is added and no data is changed after ``cancel()`` (recovery works on a copy; layers are only
    #   added by the current job's ``returned``).
    # * an exception in the worker always ends the run: a ``RuntimeError`` (torch raises those) would be taken
    #   for a "deleted worker" by superqt, which then emits neither ``errored`` nor ``finished``; the worker
    #   re-raises it wrapped so that both are emitted.

    @property
    def busy(self) -> bool:
        """True from :meth:`run` until that run was shown, failed, or was cancelled (the widget is idle)."""
        return self._job is not None

    @property
    def worker_running(self) -> bool:
        """True while the thread of the last started worker has not finished (it may outlive a cancelled run)."""
        return self._worker_running

    def run(self):
        """Start recovery in a worker thread; returns the worker (napari ``GeneratorWorker``) or ``None``.

        ``None`` (with the reason in the status line) when no volume layer is chosen, the slice list is empty
        or malformed or out of range, or a run is still busy (cancel it first).
        """
        from napari.qt.threading import thread_worker

        if self.busy:
            self.status.setText("a recovery is already running: cancel it first")
            return None
        layer = self.picker.layer()
        vol = volume_of(layer) if layer is not None else None
        if vol is None:
            self.status.setText("choose a volume layer opened with this plugin")
            return None
        try:
            missing = self.indices()
        except ValueError:
            self.status.setText("slices must be integers separated by commas (ranges like 3-5 allowed)")
            return None
        bad = [z for z in missing if not 0 <= z < vol.shape[0]]
        if not missing or bad:
            self.status.setText("no slices to recover" if not missing else f"slices {bad} are outside 0..{vol.shape[0] - 1}")
            return None
        runs = contiguous_runs(missing)
        project = self.project.isChecked()
        name = layer.name.removesuffix(" IPF-Z")
        job = threading.Event()  # set by cancel(); also the token that ties the worker's signals to this run

        # ignore_errors: errors are reported by _errored (status line + one notification), not re-raised in
        # the GUI thread as well (and not at all for a run that was cancelled)
        @thread_worker(ignore_errors=True)
        def _work():
            from ..recovery import recover_missing_slices
            from ..recovery.api import choose_method

            try:
                current = vol
                disagreement = np.zeros(vol.shape, dtype=np.float32)
                method, check = "auto", None
                for k, run in enumerate(runs):
                    yield (k, len(runs))
                    if job.is_set():
                        return None
                    if k == 0:  # one self-check on the volume as given, for all runs
                        method, check = choose_method(vol, missing, project=project)
                        if job.is_set():
                            return None
                    current, details = recover_missing_slices(  # the other runs stay gaps, as in the self-check
                        current, missing=run, project=project, progress=False, return_details=True,
                        method=method, self_check=0, unknown=[z for z in missing if z not in run],
                        **((check or {}).get("settings") or {}),
                    )
                    dis = details.get("disagreement_deg") if isinstance(details, dict) else None
                    if dis is not None:
                        disagreement[run] = np.asarray(dis, dtype=np.float32)
                yield (len(runs), len(runs))
                if job.is_set():
                    return None
                return current, disagreement, check
            except RuntimeError as exc:  # see the note above: superqt would swallow it without any signal
                raise _WorkerFailed.wrap(exc) from exc

        self.progress.setRange(0, len(runs))
        self.progress.setValue(0)
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.status.setText(f"recovering slices {missing} ...")
        worker = _work()
        # every slot is connected before start(): no signal of this worker can be missed
        worker.yielded.connect(partial(self._yielded, job))
        worker.returned.connect(partial(self._done, job, name, missing))
        worker.aborted.connect(partial(self._end, job, "cancelled: nothing was changed"))
        worker.errored.connect(partial(self._errored, job))
        worker.finished.connect(partial(self._finished, job, worker))
        self._job = job
        self.worker = worker
        self._worker_running = True
        worker.start()
        return worker

    def cancel(self) -> None:
        """Cancel the current run; the widget is idle when this returns and the run's result is never added."""
        job = self._job
        if job is None:
            return
        job.set()
        if self.worker is not None:
            self.worker.quit()
        self._end(job, "cancelled: nothing was changed")

    def _end(self, job, message: str | None = None) -> bool:
        """Return to idle if ``job`` is the current run (once per run); False for a stale or ended job."""
        if job is not self._job:
            return False
        self._job = None
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        if job.is_set():
            self.progress.setValue(self.progress.minimum())
        if message is not None:
            self.status.setText(message)
        return True

    def _yielded(self, job, kn) -> None:
        if job is self._job and not job.is_set():
            self.progress.setValue(kn[0])

    def _done(self, job, name: str, missing: list[int], res) -> None:
        if job is not self._job or job.is_set() or res is None:
            return
        new, disagreement, check = res
        from ..recovery.api import expected_error_line

        self.expected_error = expected_error_line(check)
        if check:
            new.metadata["recovery_self_check"] = {k: check[k] for k in ("method", "mean_deg", "median_deg",
                                                                         "within5", "n_sections")}
        try:
            layers = volume_layers(new, name=f"{name} recovered")
            for data, kwargs, kind in layers[:1]:
                self.viewer._add_layer_from_data(data, kwargs, kind)
            highlight = np.zeros(new.shape, dtype=np.int32)
            highlight[missing] = 1
            scale = tuple(new.spacing)
            self.viewer.add_labels(highlight, name=f"{name} recovered slices", scale=scale, opacity=0.35,
                                   translate=tuple(new.origin))
            self.viewer.add_image(disagreement, name=f"{name} disagreement (deg)", scale=scale, colormap="magma",
                                  visible=False, translate=tuple(new.origin))
        except Exception as exc:  # never leave the widget "running" because showing the result failed
            self._errored(job, exc)
            return
        self.result = new
        self._end(job, f"recovered slices {missing}; {self.expected_error}; toggle the new layers to compare "
                       "(undo = hide them)")

    def _errored(self, job, exc) -> None:
        if job is not self._job or job.is_set():
            return
        if isinstance(exc, _WorkerFailed):
            msg = str(exc)
        else:
            msg = str(exc) if isinstance(exc, EBSDError) else f"{type(exc).__name__}: {exc}"
        self._end(job, f"recovery failed: {msg}")
        from napari.utils.notifications import show_error

        show_error(f"Recover slices: {msg}")

    def _finished(self, job, worker) -> None:
        if worker is self.worker:
            self._worker_running = False
        # normally returned / aborted / errored (or cancel()) ended the run already; this is the backstop
        self._end(job, None if job.is_set() else "recovery stopped without a result")


class _WorkerFailed(Exception):
    """A ``RuntimeError`` raised in a worker, re-raised under another type so that the worker reports it
    (superqt takes a ``RuntimeError`` for a deleted worker and emits neither ``errored`` nor ``finished``)."""

    @classmethod
    def wrap(cls, exc: BaseException) -> "_WorkerFailed":
        return cls(f"{type(exc).__name__}: {exc}")


def _run_form(widget: QWidget, run_label: str, rows) -> tuple[QPushButton, QLabel]:
    """Lay ``widget`` out as a form of labelled ``rows`` (``(label, field)``), a run button wired to
    ``widget.run`` and a word-wrapped status line; returns ``(run button, status label)``."""
    run_btn = QPushButton(run_label)
    status = QLabel("")
    status.setWordWrap(True)
    form = QFormLayout(widget)
    for label, field in rows:
        form.addRow(label, field)
    form.addRow(run_btn)
    form.addRow(status)
    run_btn.clicked.connect(widget.run)
    return run_btn, status


class RPCAWidget(QWidget):
    """Run tensor robust PCA on an image layer; add the low-rank and sparse parts as layers."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.picker = _LayerPicker(napari_viewer, lambda lay: lay.__class__.__name__ == "Image")
        self.ranks = QLineEdit("8,8,8")
        self.max_iter = QLineEdit("100")
        self.run_btn, self.status = _run_form(self, "Run RPCA", [
            ("Layer", self.picker), ("Tucker ranks", self.ranks), ("Max iterations", self.max_iter)])

    def run(self):
        from napari.qt.threading import thread_worker

        layer = self.picker.layer()
        if layer is None:
            self.status.setText("choose an image layer")
            return None
        data = np.asarray(layer.data)
        rgb = bool(getattr(layer, "rgb", False))
        Y = data.astype(np.float32) / (255.0 if data.dtype == np.uint8 else 1.0)
        try:
            ranks = [int(r) for r in self.ranks.text().split(",") if r.strip()]
            max_iter = int(self.max_iter.text())
        except ValueError:
            self.status.setText("ranks must be integers separated by commas")
            return None
        if rgb and len(ranks) == Y.ndim - 1:
            ranks.append(Y.shape[-1])
        if len(ranks) != Y.ndim:
            self.status.setText(f"give {Y.ndim} ranks for this {Y.ndim}-D layer")
            return None

        @thread_worker(ignore_errors=True)  # errors are shown by the errored slot below
        def _work():
            from tensorrpca import rpca

            try:
                return rpca(Y, ranks=tuple(ranks), max_iter=max_iter)
            except RuntimeError as exc:
                raise _WorkerFailed.wrap(exc) from exc

        def _done(res):
            kw = {"scale": layer.scale, "translate": layer.translate}
            low = np.clip(res.low_rank, 0, None)
            self.viewer.add_image(low, name=f"{layer.name} low-rank", rgb=rgb and low.max() <= 1.0, **kw)
            self.viewer.add_image(np.abs(res.sparse).sum(-1) if rgb else res.sparse,
                                  name=f"{layer.name} sparse", colormap="magma", **kw)
            self.status.setText(f"done in {res.n_iter} iterations")

        worker = _work()
        worker.returned.connect(_done)
        worker.errored.connect(lambda e: self.status.setText(f"RPCA failed: {e}"))
        self.status.setText("running ...")
        self.worker = worker
        worker.start()
        return worker


__all__ = ["RecoverSlicesWidget", "RPCAWidget", "parse_indices", "contiguous_runs"]


# ------------------------------------------------------------------------- reconstruction: align and clean
class _ShiftPlot(QWidget):
    """A small plot of the shift curve: dy (red) and dx (blue) against the section index; damaged sections
    marked by grey bars."""

    def __init__(self):
        super().__init__()
        self.setMinimumHeight(110)
        self.shifts = None
        self.outliers: list[int] = []

    def set_curve(self, shifts, outliers=()) -> None:
        self.shifts = None if shifts is None else np.asarray(shifts)
        self.outliers = list(outliers)
        self.update()

    def paintEvent(self, event):  # noqa: N802 (Qt)
        from qtpy.QtCore import QPointF
        from qtpy.QtGui import QColor, QPainter, QPen

        p = QPainter(self)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor(30, 30, 30))
        if self.shifts is None or len(self.shifts) < 1:
            p.end()
            return
        s = self.shifts
        Z = len(s)
        lim = max(1, int(np.abs(s).max()))
        x_of = lambda z: 6 + (w - 12) * (z / max(Z - 1, 1))  # noqa: E731
        y_of = lambda v: h / 2 - (h / 2 - 6) * v / lim  # noqa: E731
        p.setPen(QPen(QColor(90, 90, 90)))
        p.drawLine(QPointF(0, h / 2), QPointF(w, h / 2))
        for z in self.outliers:
            p.fillRect(int(x_of(z)) - 2, 0, 5, h, QColor(110, 110, 110))
        for col, color in ((0, QColor(230, 80, 80)), (1, QColor(80, 140, 240))):
            p.setPen(QPen(color, 2))
            for z in range(Z - 1):
                p.drawLine(QPointF(x_of(z), y_of(s[z, col])), QPointF(x_of(z + 1), y_of(s[z + 1, col])))
        p.end()


def _ebsd_layer(lay) -> bool:
    return volume_of(lay) is not None


class AlignSectionsWidget(QWidget):
    """Align the sections of an EBSD volume: preview the shift curve, then apply (adds "<name> aligned"
    layers and hides the originals; undo = toggle the layers' visibility)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.result = None
        self._source = None
        self.picker = _LayerPicker(napari_viewer, _ebsd_layer)
        self.method = QComboBox()
        self.method.addItems(["misorientation", "grain", "phase-correlation"])
        self.reference = QComboBox()
        self.reference.addItems(["previous", "mean"])
        self.max_shift = QLineEdit("10")
        self.tolerance = QLineEdit("5")
        self.preview_btn = QPushButton("Preview shifts")
        self.apply_btn = QPushButton("Apply")
        self.apply_btn.setEnabled(False)
        self.plot = _ShiftPlot()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form = QFormLayout(self)
        form.addRow("Layer", self.picker)
        form.addRow("Method", self.method)
        form.addRow("Reference", self.reference)
        form.addRow("Max shift (voxels)", self.max_shift)
        form.addRow("Tolerance (deg)", self.tolerance)
        row = QHBoxLayout()
        row.addWidget(self.preview_btn)
        row.addWidget(self.apply_btn)
        form.addRow(row)
        form.addRow(self.plot)
        form.addRow(self.status)
        self.preview_btn.clicked.connect(self.preview)
        self.apply_btn.clicked.connect(self.apply)

    def preview(self):
        """Run the alignment in a worker thread; the shift curve appears when it is done."""
        from napari.qt.threading import thread_worker

        layer = self.picker.layer()
        vol = volume_of(layer) if layer is not None else None
        if vol is None:
            self.status.setText("choose an EBSD volume layer (its IPF layer)")
            return None
        try:
            max_shift = int(self.max_shift.text())
            tol = float(self.tolerance.text())
        except ValueError:
            self.status.setText("max shift must be an integer and the tolerance a number")
            return None
        method, reference = self.method.currentText(), self.reference.currentText()

        @thread_worker(ignore_errors=True)
        def _work():
            from ..reconstruction import align_sections

            try:
                return align_sections(vol, method=method, reference=reference, max_shift=max_shift,
                                      tolerance_deg=tol, progress=False)
            except RuntimeError as exc:
                raise _WorkerFailed.wrap(exc) from exc

        def _done(res):
            self.result, self._source = res, layer
            self.plot.set_curve(res.shifts, res.outliers)
            self.apply_btn.setEnabled(True)
            self.preview_btn.setEnabled(True)
            self.status.setText(res.summary() + " (red: dy, blue: dx) - Apply adds the aligned layers")

        def _err(e):
            self.preview_btn.setEnabled(True)
            self.status.setText(f"alignment failed: {e}")

        worker = _work()
        worker.returned.connect(_done)
        worker.errored.connect(_err)
        self.preview_btn.setEnabled(False)
        self.apply_btn.setEnabled(False)
        self.status.setText("aligning ...")
        self.worker = worker
        worker.start()
        return worker

    def apply(self) -> list | None:
        """Add the aligned volume as new layers and hide the source's layers (nothing is deleted)."""
        if self.result is None or self._source is None:
            self.status.setText("preview first")
            return None
        src = self._source
        base = src.name[:-len(" IPF-Z")] if src.name.endswith(" IPF-Z") else src.name
        added = []
        for data, kw, kind in volume_layers(self.result.volume, name=f"{base} aligned"):
            added.append(getattr(self.viewer, f"add_{kind}")(data, **kw))
        for lay in self.viewer.layers:
            if lay.name.startswith(base + " ") and lay not in added:
                lay.visible = False
        self.status.setText(f"applied: layers '{base} aligned ...' added; the originals are hidden (toggle their "
                            "visibility to compare or undo)")
        self.apply_btn.setEnabled(False)
        return added


class CleanWidget(QWidget):
    """DREAM.3D-style clean-up of an EBSD volume layer: CI threshold, neighbour orientation correlation,
    segmentation, fill bad data, minimum grain size; adds "<name> clean" layers and a grain-id labels layer."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.picker = _LayerPicker(napari_viewer, _ebsd_layer)
        self.ci_min = QLineEdit("0.1")
        self.tolerance = QLineEdit("5")
        self.level = QLineEdit("2")
        self.min_defect = QLineEdit("1000")
        self.min_grain = QLineEdit("10")
        self.run_btn, self.status = _run_form(self, "Clean", [
            ("Layer", self.picker), ("Min CI", self.ci_min), ("Tolerance (deg)", self.tolerance),
            ("NOC level (0: off)", self.level), ("Fill defects under (voxels, 0: off)", self.min_defect),
            ("Min grain (voxels, 0: off)", self.min_grain)])

    def steps(self) -> list:
        ci, tol = float(self.ci_min.text()), float(self.tolerance.text())
        level, defect, grain = int(self.level.text()), int(self.min_defect.text()), int(self.min_grain.text())
        st: list = [("mark_bad", {"ci_min": ci})]
        if level:
            st.append(("neighbor_orientation_correlation", {"min_confidence": ci, "tolerance_deg": tol, "level": level}))
        st.append(("segment", {"threshold_deg": tol}))
        if defect:
            st.append(("fill_bad_data", {"min_defect_size": defect}))
        if grain:
            st.append(("remove_small_grains", {"min_voxels": grain}))
        st.append("statistics")
        return st

    def run(self):
        from napari.qt.threading import thread_worker

        layer = self.picker.layer()
        vol = volume_of(layer) if layer is not None else None
        if vol is None:
            self.status.setText("choose an EBSD volume layer (its IPF layer)")
            return None
        try:
            steps = self.steps()
        except ValueError:
            self.status.setText("the parameters must be numbers (levels and sizes integers)")
            return None

        @thread_worker(ignore_errors=True)
        def _work():
            from ..reconstruction import reconstruct

            try:
                return reconstruct(vol, steps=steps, progress=False)
            except RuntimeError as exc:
                raise _WorkerFailed.wrap(exc) from exc

        def _done(res):
            base = layer.name[:-len(" IPF-Z")] if layer.name.endswith(" IPF-Z") else layer.name
            for data, kw, kind in volume_layers(res.volume, name=f"{base} clean"):
                getattr(self.viewer, f"add_{kind}")(data, **kw)
            lab = res.labels.cpu().numpy() + 1  # 0 = no grain
            self.viewer.add_labels(lab.astype(np.int32), name=f"{base} grains", scale=tuple(res.volume.spacing),
                                   translate=tuple(res.volume.origin), opacity=0.5, visible=False)
            s = res.statistics.summary()
            self.status.setText(f"{res.n_grains} grains; mean ESD of interior grains {s['mean_esd_um']:.3g} um")
            self.run_btn.setEnabled(True)

        def _err(e):
            self.run_btn.setEnabled(True)
            self.status.setText(f"clean-up failed: {e}")

        worker = _work()
        worker.returned.connect(_done)
        worker.errored.connect(_err)
        self.run_btn.setEnabled(False)
        self.status.setText("cleaning ...")
        self.worker = worker
        worker.start()
        return worker


__all__ += ["AlignSectionsWidget", "CleanWidget"]
