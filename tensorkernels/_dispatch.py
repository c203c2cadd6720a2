"""Backend selection shared by every kernel in :mod:`tensorkernels`."""
from __future__ import annotations

import functools
import os

import torch

_VALID = ("auto", "torch", "triton")


class KernelBackendError(ValueError):
    """A kernel backend was asked for that cannot run the given input."""


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when ``import triton`` works (it may still be unable to run without CUDA)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # pragma: no cover - depends on the environment
        return False
    return True


def interpreting() -> bool:
    """True when Triton kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str | None, *tensors: torch.Tensor) -> str:
    """Return ``"torch"`` or ``"triton"`` for a call on ``tensors``.

    Raises :class:`KernelBackendError` when ``"triton"`` is forced but cannot run
    (Triton missing, or CPU tensors without ``TRITON_INTERPRET=1``).
    """
    choice = backend if backend is not None else os.environ.get("EBSDTK_KERNEL_BACKEND", "auto")
    choice = choice.lower()
    if choice not in _VALID:
        raise KernelBackendError(f"unknown kernel backend {choice!r}; use one of {_VALID}")
    on_cuda = all(t.is_cuda for t in tensors if isinstance(t, torch.Tensor))
    if choice == "torch":
        return "torch"
    if choice == "auto":
        return "triton" if (on_cuda and triton_available() and not interpreting()) else "torch"
    # forced triton
    if not triton_available():
        raise KernelBackendError("backend='triton' needs the triton package: pip install triton")
    if not on_cuda and not interpreting():
        raise KernelBackendError(
            "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before kernels are imported"
        )
    return "triton"
