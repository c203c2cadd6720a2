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
from .tucker import multi_mode_product


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


def residual_gradients(
    Y: torch.Tensor,
    core: torch.Tensor,
    factors: "list[torch.Tensor]",
    zeta: float | torch.Tensor,
    mode: str = "hard",
    backend: str | None = None,
    missing: bool = False,
    contract_precision: str | None = None,
) -> list[torch.Tensor]:
    """``T_i = R x_{j != i} U_j^T`` for every mode ``i``: the thresholded residual contracted with every
    factor but one (the tensors the ScaledGD gradients are made of), for ``X = G x_1 U_1 ... x_N U_N``.

    Args:
        Y: ``(I_1, ..., I_N)``, ``N >= 2``; core: ``(r_1, ..., r_N)``; factors: ``U_i`` of shape ``(I_i, r_i)``;
            one dtype and device. zeta, mode, backend, missing, contract_precision: as
            :func:`residual_contract`.
    Returns:
        ``T_i`` of shape ``(r_1, ..., I_i, ..., r_N)`` (``I_i`` at mode ``i``, ranks elsewhere), ``i = 1..N``.

    On Triton the fused pass lays its partial sums out in one buffer, so that one contraction over the leading
    modes (a single GEMM for order 3) gives ``T_{N-1}`` and ``T_N`` together, followed by small sums of their
    partials; ``T_i``, ``i < N - 1``, come from ``V = PN x_{N-1} U_{N-1}^T`` (``PN``: its summed partials). The
    torch path contracts :func:`residual_contract_torch`'s ``(PN, Q)`` with the factors (the same values). Empty
    tensors and zero ranks give zero tensors of the stated shapes.
    """
    N = Y.ndim
    factors = list(factors)
    if N < 2 or core.ndim != N or len(factors) != N:
        raise ValueError(f"need a tensor of order >= 2 with a core and a factor per mode; got Y {tuple(Y.shape)}, "
                         f"core {tuple(core.shape)}, {len(factors)} factors")
    if any(U.shape != (Y.shape[i], core.shape[i]) for i, U in enumerate(factors)):
        raise ValueError(f"factor shapes {[tuple(U.shape) for U in factors]} do not fit Y {tuple(Y.shape)} and "
                         f"core {tuple(core.shape)}")
    if len({t.dtype for t in (Y, core, *factors)}) != 1 or len({t.device for t in (Y, core, *factors)}) != 1:
        raise ValueError("Y, core and factors must share one dtype and device; got dtypes "
                         f"{sorted({str(t.dtype) for t in (Y, core, *factors)})} and devices "
                         f"{sorted({str(t.device) for t in (Y, core, *factors)})}")
    if mode not in ("hard", "soft"):
        raise ValueError(f"mode must be 'hard' or 'soft', got {mode!r}")
    if not isinstance(zeta, torch.Tensor) and float(zeta) < 0:
        raise ValueError(f"zeta must be >= 0, got {zeta}")
    if Y.numel() == 0 or core.numel() == 0:  # nothing to contract: every T_i is zero
        return [Y.new_zeros(tuple(Y.shape[j] if j == i else core.shape[j] for j in range(N))) for i in range(N)]
    if resolve_backend(backend, Y, core, *factors) != "triton":
        UP, UN = factors[-2], factors[-1]
        Y3 = Y.reshape(-1, Y.shape[-2], Y.shape[-1])
        P, I, J = Y3.shape
        H = multi_mode_product(core, factors[:-1], modes=list(range(N - 1)), backend=backend)
        PN, Q = residual_contract_torch(Y3, H.reshape(P, I, -1), UN, UP, zeta, mode, missing=missing)
        return gradients_from_contractions(PN.reshape(*Y.shape[:-1], UN.shape[1]),
                                           Q.reshape(*Y.shape[:-2], UP.shape[1], J), factors)
    return _triton_residual_gradients(Y, core, factors, zeta, mode, missing, contract_precision)


def gradients_from_contractions(PN: torch.Tensor, Q: torch.Tensor, factors) -> list[torch.Tensor]:
    """``T_i = R x_{j != i} U_j^T`` for every mode from the two contractions of the residual pass,
    ``PN = R x_N U_N^T`` ``(I_1..I_{N-1}, r_N)`` and ``Q = R x_{N-1} U_{N-1}^T`` ``(I_1..I_{N-2}, r_{N-1}, I_N)``
    (torch ops: differentiable)."""
    N = len(factors)
    T = []
    for i in range(N - 1):
        T.append(multi_mode_product(PN, [factors[j] for j in range(N - 1) if j != i],
                                    modes=[j for j in range(N - 1) if j != i], transpose=True, backend="torch"))
    T.append(multi_mode_product(Q, list(factors[:N - 2]), modes=list(range(N - 2)), transpose=True,
                                backend="torch"))
    return T


def _triton_residual_gradients(Y, core, factors, zeta, mode, missing, contract_precision):
    from ._triton_rpca import triton_residual_parts

    N = Y.ndim
    lead, lead_modes = factors[:-2], list(range(N - 2))
    UP, UN = factors[-2], factors[-1]
    rP, rN = UP.shape[1], UN.shape[1]
    Y3 = Y.reshape(-1, Y.shape[-2], Y.shape[-1])
    P, I, J = Y3.shape
    H = multi_mode_product(core, factors[:-1], modes=list(range(N - 1))).reshape(P, I, rN)
    Z, nJ, nC = triton_residual_parts(Y3, H, UN, UP, zeta, mode, missing=missing,
                                      contract_precision=contract_precision)
    lead_in, lead_r = tuple(Y.shape[:-2]), tuple(core.shape[:-2])
    # one contraction of Z over the leading modes gives T_{N-1} and T_N (their partials) together
    TZ = multi_mode_product(Z.reshape(*lead_in, Z.shape[1]), lead, modes=lead_modes, transpose=True,
                            backend="torch").reshape(-1, Z.shape[1])
    n_pn = nJ * I * rN
    T_prev = TZ[:, :n_pn].reshape(-1, nJ, I * rN)
    T_prev = T_prev[:, 0] if nJ == 1 else T_prev.sum(1)
    T_last = TZ[:, n_pn:].reshape(-1, nC, rP * J)
    T_last = T_last[:, 0] if nC == 1 else T_last.sum(1)
    T = []
    if N > 2:  # T_i, i < N - 1, from V = PN x_{N-1} U_{N-1}^T (PN: the sum of its J-block partials)
        PN = Z[:, :n_pn].reshape(P, nJ, I, rN)
        PN = PN[:, 0] if nJ == 1 else PN.sum(1)
        V = torch.matmul(UP.t(), PN).reshape(*lead_in, rP, rN)
        for i in range(N - 2):
            T.append(multi_mode_product(V, [lead[j] for j in range(N - 2) if j != i],
                                        modes=[j for j in range(N - 2) if j != i], transpose=True,
                                        backend="torch"))
    T.append(T_prev.reshape(*lead_r, I, rN))
    T.append(T_last.reshape(*lead_r, rP, J))
    return T
