"""Elementwise thresholding of a residual, fused in one pass.

``threshold_residual(Y, X, zeta)`` computes, for ``D = Y - X``:

* ``out="sparse"`` (default): ``S = T_zeta(D)``, where hard thresholding is
  ``T(d) = d * 1{|d| > zeta}`` and soft thresholding ``T(d) = sign(d) * max(|d| - zeta, 0)``;
* ``out="residual"``: ``R = X + S - Y = S - D``. For hard thresholding this is
  ``-D * 1{|D| <= zeta}``, for soft ``-clamp(D, -zeta, zeta)``. ScaledGD tensor RPCA only needs ``R``,
  so ``S`` never has to be stored during the iterations;
* ``out="kept"``: ``D - S = -R``, what the threshold lets through (``D * 1{|D| <= zeta}`` for hard
  thresholding, ``clamp(D, -zeta, zeta)`` for soft): the clipped tensor of RPCA's spectral initialisation.

One read of ``Y`` and ``X`` and one write of the output: the Triton kernel does the subtraction,
the comparison and the select in registers.
"""
from __future__ import annotations

import torch

from ._dispatch import resolve_backend

_MODES = ("hard", "soft")
_OUTS = ("sparse", "residual", "kept")


def _check(mode: str, out: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if out not in _OUTS:
        raise ValueError(f"out must be one of {_OUTS}, got {out!r}")


def _torch_threshold_residual(Y, X, zeta, mode, out):
    D = Y - X if X is not None else Y
    if mode == "hard":
        if out == "sparse":
            return torch.where(D.abs() > zeta, D, torch.zeros_like(D))
        if out == "kept":
            return torch.where(D.abs() <= zeta, D, torch.zeros_like(D))
        return torch.where(D.abs() <= zeta, -D, torch.zeros_like(D))
    if out == "sparse":
        return torch.sign(D) * torch.clamp(D.abs() - zeta, min=0)
    if out == "kept":
        return torch.clamp(D, -zeta, zeta)
    return -torch.clamp(D, -zeta, zeta)


def threshold_residual(
    Y: torch.Tensor,
    X: torch.Tensor | None,
    zeta: float,
    mode: str = "hard",
    out: str = "sparse",
    backend: str | None = None,
) -> torch.Tensor:
    """Threshold ``Y - X`` at ``zeta`` in one pass.

    Args:
        Y, X: tensors of the same shape, dtype and device (any shape). ``X=None`` means zero.
        zeta: the threshold (same units as ``Y``), ``>= 0``.
        mode: ``"hard"`` or ``"soft"``.
        out: ``"sparse"`` for ``T_zeta(Y - X)``, ``"residual"`` for ``T_zeta(Y - X) - (Y - X)``, ``"kept"`` for
            ``(Y - X) - T_zeta(Y - X)``.
        backend: see :mod:`tensorkernels`.

    Returns:
        A new tensor shaped like ``Y``.
    """
    _check(mode, out)
    if X is not None and (X.shape != Y.shape or X.dtype != Y.dtype or X.device != Y.device):
        raise ValueError(
            f"Y and X must share shape, dtype and device; got {tuple(Y.shape)}/{Y.dtype}/{Y.device} "
            f"and {tuple(X.shape)}/{X.dtype}/{X.device}"
        )
    zeta = float(zeta)
    if zeta < 0:
        raise ValueError(f"zeta must be >= 0, got {zeta}")
    tensors = (Y,) if X is None else (Y, X)
    if resolve_backend(backend, *tensors) == "triton":
        from ._triton_threshold import triton_threshold_residual

        return triton_threshold_residual(Y, X, zeta, mode, out)
    return _torch_threshold_residual(Y, X, zeta, mode, out)


def threshold(x: torch.Tensor, zeta: float, mode: str = "hard", backend: str | None = None) -> torch.Tensor:
    """``T_zeta(x)``: hard (``x * 1{|x| > zeta}``) or soft thresholding, elementwise."""
    return threshold_residual(x, None, zeta, mode=mode, out="sparse", backend=backend)
