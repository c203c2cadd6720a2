"""Multimodal diffusion over polarized-light (PL) + EBSD images: super-resolution, denoising and grain
boundaries by posterior sampling. ``diffusers`` is imported only when a model is built or loaded."""
from __future__ import annotations

import importlib

from .errors import DiffusionError, DiffusionInputError, CheckpointError

__version__ = "0.1.0"

_LAZY = {"MultimodalDiffusion": "diffusion.model"}

__all__ = ["DiffusionError", "DiffusionInputError", "CheckpointError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diffusion' has no attribute {name!r}")
