"""Take the README screenshot: napari with the sample volume, the "Recover slices" widget docked, after a
recovery. Run headless: ``xvfb-run -a python scripts/napari_screenshot.py docs/napari_recovery.png``."""
from __future__ import annotations

import sys
import time


def main(out: str = "docs/napari_recovery.png") -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    from ebsd.napari._widgets import RecoverSlicesWidget

    viewer = napari.Viewer(title="ebsd-tensor-toolkit")
    viewer.window._qt_window.resize(1500, 900)
    viewer.open_sample("ebsd-tensor-toolkit", "two-missing-slices")
    widget = RecoverSlicesWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Recover slices", area="right")
    widget.run()
    t0 = time.time()
    # poll the widget's own state (its slots were connected before the worker started, so no signal is missed)
    while (widget.busy or widget.worker_running) and time.time() - t0 < 600:
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.dims.set_point(0, 9 * viewer.layers[0].scale[0])  # a recovered slice
    for lay in viewer.layers:
        lay.visible = lay.name.endswith("recovered IPF-Z") or lay.name.endswith("recovered slices")
    QApplication.processEvents()
    viewer.screenshot(out, canvas_only=False)
    print(f"saved {out}: {widget.status.text()}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
