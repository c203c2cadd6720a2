"""Recover missing or bad slices of serial-sectioned 3-D EBSD volumes.

Two steps, after Dong, Donegan, Shah & Chi, "A Lightweight Transformer for Faster and Robust EBSD Data
Collection": a small axial transformer (:class:`SliceRecoveryTransformer`) reads the volume around the gap
in cubochoric coordinates and predicts the missing slices; a projection step
(:mod:`ebsd.recovery.projection`) then gives each recovered voxel the mean orientation of a grain of the
adjacent known slices. Baselines (:mod:`ebsd.recovery.baselines`) and bad-slice detection
(:func:`find_bad_slices`) live here too.

>>> new = recover_missing_slices(vol, missing=[12, 13])       # or missing=None: find them
>>> new.metadata["recovered_slices"]
[12, 13]
"""
from .api import DEFAULT_CHECKPOINT, recover_missing_slices
from .baselines import BASELINES, nearest_slice, project_nearest, slerp_neighbours
from .detect import find_bad_slices
from .model import ModelConfig, SliceRecoveryTransformer, load_model

__all__ = [
    "recover_missing_slices", "find_bad_slices", "SliceRecoveryTransformer", "ModelConfig", "load_model",
    "nearest_slice", "slerp_neighbours", "project_nearest", "BASELINES", "DEFAULT_CHECKPOINT",
]
