"""3-D EBSD volumes: I/O, orientation math with crystal symmetry, synthetic microstructures,
slice recovery, napari plugin and batch CLI.

Heavy submodules load lazily, so ``import ebsd`` stays cheap and never imports napari.
"""
from __future__ import annotations

import importlib

from .errors import EBSDError, EBSDFormatError, EBSDValueError, EBSDFileExistsError, EBSDDependencyError
from .volume import EBSDVolume, Phase

__version__ = "0.1.0"

_LAZY = {
    "load_volume": "ebsd.io",
    "save_volume": "ebsd.io",
    "synthetic_volume": "ebsd.synthetic",
    "recover_missing_slices": "ebsd.recovery",
    "find_bad_slices": "ebsd.recovery",
    "align_sections": "ebsd.reconstruction",
    "apply_shifts": "ebsd.reconstruction",
    "reconstruct": "ebsd.reconstruction",
    "mark_bad": "ebsd.reconstruction",
    "neighbor_orientation_correlation": "ebsd.reconstruction",
    "fill_bad_data": "ebsd.reconstruction",
    "remove_small_grains": "ebsd.reconstruction",
    "grain_statistics": "ebsd.reconstruction",
    "segment_grains": "ebsd.orientation",
}

__all__ = [
    "EBSDVolume", "Phase", "EBSDError", "EBSDFormatError", "EBSDValueError", "EBSDFileExistsError",
    "EBSDDependencyError", *_LAZY,
]


# submodules reachable as attributes without importing them first (``ebsd.batch.run(...)``), loaded on use
_SUBMODULES = ("batch", "io", "orientation", "recovery", "synthetic")


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"ebsd.{name}")
    raise AttributeError(f"module 'ebsd' has no attribute {name!r}")
