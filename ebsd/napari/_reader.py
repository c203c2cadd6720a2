"""napari reader contribution: .ang and .ctf files, folders of them, .dream3d, EDAX .h5, H5EBSD, Oxford
.h5oina, Bruker and EMsoft .h5 files."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import EBSDError
from ._layers import volume_layers

_SUFFIXES = {".ang", ".ctf", ".dream3d", ".h5", ".hdf5", ".h5ebsd", ".h5oina"}
_SLICES = {".ang", ".ctf"}


def _ours(path: str) -> bool:
    p = Path(path)
    if p.is_dir():
        return any(f.suffix.lower() in _SLICES for f in p.iterdir())
    return p.suffix.lower() in _SUFFIXES


def get_reader(path):
    """Return a reader function for ``path`` (a file, a folder of .ang/.ctf slices, or a list of them),
    or None when the path is not ours."""
    paths = [os.fspath(p) for p in path] if isinstance(path, (list, tuple)) else [os.fspath(path)]
    if not paths or not all(_ours(p) for p in paths):
        return None
    return read_ebsd


def read_ebsd(path):
    """Read one EBSD volume into layers. A broken file shows our error as a napari notification and
    adds no layer (the viewer keeps running)."""
    from ..io import load_volume

    paths = [os.fspath(p) for p in path] if isinstance(path, (list, tuple)) else [os.fspath(path)]
    try:
        if len(paths) > 1:  # several .ang/.ctf slices dropped together: stack them
            vol = load_volume(paths)
        else:
            vol = load_volume(paths[0])
    except EBSDError as exc:
        from napari.utils.notifications import show_error

        show_error(f"ebsd-tensor-toolkit could not open {paths[0] if len(paths) == 1 else paths}: {exc}")
        return [(None,)]  # npe2's "opened, nothing to add" sentinel: no crash, no reader dialog
    name = Path(paths[0]).stem if len(paths) == 1 else Path(paths[0]).parent.name
    return volume_layers(vol, name=name)
