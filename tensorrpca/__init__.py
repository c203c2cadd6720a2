"""Tensor robust PCA by scaled gradient descent on Tucker factors (Dong, Tong, Ma, Chi 2022),
and its deep-unfolded, self-supervised variant (Dong, Shah, Donegan, Chi 2023)."""
from __future__ import annotations

import importlib

from .errors import RPCAError, RPCAInputError, RPCAConvergenceWarning

__version__ = "0.1.0"

_LAZY = {
    "rpca": "tensorrpca.scaledgd",
    "RPCAResult": "tensorrpca.scaledgd",
    "RPCAParams": "tensorrpca.scaledgd",
    "clear_graph_cache": "tensorrpca.scaledgd",
    "UnfoldedRPCA": "tensorrpca.unfolded",
    "load_params": "tensorrpca.unfolded",
    "random_search": "tensorrpca.unfolded",
}

__all__ = ["RPCAError", "RPCAInputError", "RPCAConvergenceWarning", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tensorrpca' has no attribute {name!r}")
