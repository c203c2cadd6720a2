"""Fused residual pass of ScaledGD tensor RPCA: threshold + first contractions, one read of ``Y``.

With the tensor viewed as ``(P, I, J)`` (``J`` = last mode, ``I`` = the mode before it, ``P`` = the
product of the others) and the low-rank estimate given as ``X = H x_3 U_N`` (``H = G x_1 U_1 ... x_{N-1}
U_{N-1}``, shape ``(P, I, r_N)``), :func:`residual_contract` returns

* ``PN[p, i, c] = sum_j R[p, i, j] * U_N[j, c]``        (``R x_N U_N^T``, shape ``(P, I, r_N)``)
* ``Q[p, b, j]  = sum_i U_prev[i, b] * R[p, i, j]``      (``R x_{N-1} U_{N-1}^T``, shape ``(P, r_{N-1}, J)``)

where ``R = T_zeta(Y - X) - (Y - X)`` is the thresholded residual (hard: ``-(Y - X) 1{|Y - X| <= zeta}``,
soft: ``-clamp(Y - X, -zeta, zeta)``). Every gradient of the ScaledGD step follows from ``PN`` and ``Q``
with work on tensors ``r/I`` times smaller. The Triton kernel computes ``X`` tile by tile in registers
(``H`` tile times ``U_N^T``), so neither ``X`` nor ``R`` is ever written to memory: one read of ``Y`` and of
the small ``H`` per call.
"""
from __future__ import annotations

import torch

from ._dispatch import resolve_backend
from .threshold import threshold_residual


def _check(Y, H, UN, Uprev, mode):
    if mode not in ("hard", "soft"):
        raise ValueError(f"mode must be 'hard' or 'soft', got {mode!r}")
    if Y.ndim != 3 or H.ndim != 3:
        raise ValueError(f"Y and H must be (P, I, J) and (P, I, r); got {tuple(Y.shape)} and {tuple(H.shape)}")
    P, I, J = Y.shape
    if H.shape[:2] != (P, I) or UN.shape != (J, H.shape[2]) or Uprev.ndim != 2 or Uprev.shape[0] != I:
        raise ValueError(
            f"inconsistent shapes: Y {tuple(Y.shape)}, H {tuple(H.shape)}, U_N {tuple(UN.shape)}, "
            f"U_prev {tuple(Uprev.shape)}"
        )
    if len({t.dtype for t in (Y, H, UN, Uprev)}) != 1 or len({t.device for t in (Y, H, UN, Uprev)}) != 1:
        raise ValueError("Y, H, U_N and U_prev must share dtype and device")


def residual_contract_torch(Y, H, UN, Uprev, zeta, mode: str = "hard", missing: bool = False):
    """Reference implementation (materialises ``X`` and ``R``).

    Differentiable in ``Y``, ``H``, ``U_N``, ``U_prev`` when any of them requires grad; otherwise it works
    in place on the one full-size temporary (fewer passes over memory on CPU). ``missing``: NaN entries of
    ``Y`` are missing (zero residual).
    """
    P, I, J = Y.shape
    X = (H.reshape(P * I, -1) @ UN.t()).reshape(P, I, J)  # one GEMM, not P small ones
    if torch.is_grad_enabled() and any(t.requires_grad for t in (Y, H, UN, Uprev)):
        R = threshold_residual(Y, X, zeta, mode=mode, out="residual", backend="torch")
        if missing:
            R = torch.where(Y.isnan(), torch.zeros_like(R), R)
    else:
        R = X.sub_(Y)  # X - Y = -D
        if mode == "hard":
            R.masked_fill_(R.abs() > zeta, 0)  # -D 1{|D| <= zeta}
        else:
            R.clamp_(-zeta, zeta)  # -clamp(D, -zeta, zeta)
        if missing:
            R.masked_fill_(R.isnan(), 0)  # NaN in Y (missing) -> NaN in R -> no residual
    return (R.reshape(P * I, J) @ UN).reshape(P, I, -1), torch.matmul(Uprev.t(), R)


def residual_contract(
    Y: torch.Tensor,
    H: torch.Tensor,
    UN: torch.Tensor,
    Uprev: torch.Tensor,
    zeta: float | torch.Tensor,
    mode: str = "hard",
    backend: str | None = None,
    missing: bool = False,
    contract_precision: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(PN, Q)`` of the thresholded residual (see the module docstring).

    Args:
        Y: ``(P, I, J)``; H: ``(P, I, r_N)``; UN: ``(J, r_N)``; Uprev: ``(I, r_{N-1})``; all one dtype/device.
        zeta: threshold ``>= 0`` (a float, or a one-element tensor on the device: read by the kernel at run
            time, so a captured CUDA graph can be replayed with a new threshold); mode: ``"hard"`` or ``"soft"``; backend: see :mod:`tensorkernels`.
        missing: treat NaN entries of ``Y`` as missing (their residual is 0; tensor completion). Without it the
            result for a NaN in ``Y`` is unspecified.
        contract_precision: Triton on a GPU with fp32 inputs only: precision of the two contractions of ``R``
            (``"tf32x3"`` default, ``"tf32"``, ``"bf16"``; see ``tensorkernels._triton_rpca.CONTRACT_PRECISION``).
    Returns:
        ``PN`` of shape ``(P, I, r_N)`` and ``Q`` of shape ``(P, r_{N-1}, J)``.
    """
    _check(Y, H, UN, Uprev, mode)
    if not isinstance(zeta, torch.Tensor):
        zeta = float(zeta)
        if zeta < 0:
            raise ValueError(f"zeta must be >= 0, got {zeta}")
    if resolve_backend(backend, Y, H, UN, Uprev) == "triton":
        from ._triton_rpca import triton_residual_contract

        return triton_residual_contract(Y, H, UN, Uprev, zeta, mode, missing=missing,
                                        contract_precision=contract_precision)
    return residual_contract_torch(Y, H, UN, Uprev, zeta, mode, missing=missing)
