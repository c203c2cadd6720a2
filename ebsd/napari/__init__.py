"""napari plugin (npe2): reader, writer, "Recover slices", "Clean outliers (RPCA)", "Align sections" and
"Clean (DREAM.3D-style)" widgets, sample data.

Installed with the ``napari`` extra (``pip install "ebsd-tensor-toolkit[napari]"``); napari finds it
through the ``napari.manifest`` entry point, with no extra step. Start it with ``napari`` (then the
Plugins menu) or ``ebsdtk view PATH``.
"""
