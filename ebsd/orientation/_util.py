"""Helpers shared by the orientation modules: numpy at the public edge, chunking of large batches."""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch

from ..errors import EBSDValueError


def numpy_edge(fn: Callable) -> Callable:
    """Let ``fn`` (written for torch tensors) take numpy arrays: when its first argument is a numpy array,
    array arguments become tensors and tensor results come back as numpy arrays (tuples handled)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not (args and isinstance(args[0], np.ndarray)):
            return fn(*args, **kwargs)
        args = tuple(torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in args)
        kwargs = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
                  for k, v in kwargs.items()}
        out = fn(*args, **kwargs)
        if isinstance(out, tuple):
            return tuple(o.numpy() if isinstance(o, torch.Tensor) else o for o in out)
        return out.numpy() if isinstance(out, torch.Tensor) else out

    return wrapper


def as_quat(q, name: str = "q") -> torch.Tensor:
    """A floating ``(..., 4)`` tensor (ints become the default float dtype)."""
    q = torch.as_tensor(q)
    if not torch.is_floating_point(q):
        q = q.to(torch.get_default_dtype())
    if q.shape[-1:] != (4,):
        raise EBSDValueError(f"{name}: quaternions need a last dimension of 4, got shape {tuple(q.shape)}")
    return q


def common(q1: torch.Tensor, q2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same dtype (promoted) and device for a pair of quaternion tensors."""
    if q1.device != q2.device:
        raise EBSDValueError(f"orientations are on different devices: {q1.device} and {q2.device}")
    dt = torch.promote_types(q1.dtype, q2.dtype)
    return q1.to(dt), q2.to(dt)


def chunked_rows(fn: Callable, tensors: list[torch.Tensor], rows: int) -> torch.Tensor:
    """Apply ``fn(*tensors)`` on flattened ``(n, ...)`` tensors in row chunks of ``rows``; concatenate."""
    n = tensors[0].shape[0]
    if n <= rows:
        return fn(*tensors)
    return torch.cat([fn(*(t[i:i + rows] for t in tensors)) for i in range(0, n, rows)], dim=0)
