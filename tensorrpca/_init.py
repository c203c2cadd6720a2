"""Spectral initialisation pieces: truncated HOSVD and data-derived thresholds.

Theory (Dong-Tong-Ma-Chi) wants ``zeta_0`` at or just above ``max|X*|`` and ``zeta_1`` at the level of the
entrywise error of the initial estimate, ``max|X* - X_0|``. Neither is known; both are estimated here from
robust statistics that survive a large fraction of gross corruption:

* ``zeta_0``: walk down from ``max|Y|`` to the fixed point ``z = 1.25 max|HOSVD_r(Y 1{|Y| <= z})|``
  (at most 12 rounds, stop when a round lowers ``z`` by less than 5%). Gross corruption far above the
  low-rank part is clipped away round by round; while ``z > max|X*|`` every true entry stays in, the rank-r
  fit keeps the spikes of ``X*`` and the next ``z`` stays above them, so the walk does not cross below
  ``max|X*|``. That direction matters: a ``zeta_0`` below ``max|X*|`` is fatal for spiky ``X*`` (high
  ``kappa`` or high order: entries of a dominant rank-1 term are products of Gaussians, with max/RMS of 10
  to 40), because the clipped spikes are then treated as corruption for good, while a ``zeta_0`` somewhat
  above ``max|X*|`` costs little on tensors. A multiple of the median of ``|Y|`` (or a clip at a few MAD)
  cannot see those spikes, and corruption moves the median.
* ``zeta_1``: ``4 * sigma_E`` where ``sigma_E`` is a MAD scale of the residual ``E = Y - X_0`` of the
  spectral initialisation: on clean entries ``E = X* - X_0`` (what the threshold must let through), on
  corrupted ones it is large, and the median ignores those.

With a hint ``sparsity = alpha`` (expected corrupted fraction) the median in ``zeta_1`` becomes the quantile
at level ``(1 - alpha) / 2``, the median of the clean part, which keeps the scale unbiased for large ``alpha``.
"""
from __future__ import annotations

from typing import Sequence

import torch

from tensorkernels import multi_mode_product, threshold_residual, unfold

_SAMPLE = 1 << 20  # entries used for the robust quantiles (exact below this size)
_MAD = 1.482602218505602  # 1 / Phi^{-1}(3/4): MAD -> standard deviation for Gaussian data
ZETA0_MULT = 1.25
ZETA0_ROUNDS = 12
ZETA1_MULT = 4.0


def _sample(T: torch.Tensor) -> torch.Tensor:
    flat = T.reshape(-1)
    n = flat.numel()
    if n <= _SAMPLE:
        return flat
    gen = torch.Generator().manual_seed(12345)  # fixed: results are reproducible
    idx = torch.randint(0, n, (_SAMPLE,), generator=gen).to(flat.device)
    return flat[idx]


def _quantile(x: torch.Tensor, q: float) -> float:
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    k = max(1, min(x.numel(), int(round(q * x.numel()))))
    return float(torch.kthvalue(x.cpu(), k).values)


def robust_scale(T: torch.Tensor, center: bool = True, sparsity: float | None = None) -> tuple[float, float]:
    """``(center, sigma)``: the median and a MAD-based standard deviation of the entries of ``T``.

    ``sparsity`` (fraction of gross outliers) moves the quantile to the clean part's median.
    """
    x = _sample(T)
    med = _quantile(x, 0.5) if center else 0.0
    a = (x - med).abs()
    s = _quantile(a, 0.5 * (1.0 - (sparsity or 0.0))) * _MAD
    return med, s


def hosvd(T: torch.Tensor, ranks: Sequence[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Sequentially truncated HOSVD: orthonormal ``U_i`` (``I_i x r_i``) and the core.

    Each factor comes from the eigenvectors of the smaller Gram matrix of the current unfolding
    (``M M^T`` or ``M^T M``), eigen-solved in float64; the tensor is projected after each mode, so only the
    first Gram matrix touches the full tensor.
    """
    cur = T
    factors: list[torch.Tensor | None] = [None] * T.ndim
    order = sorted(range(T.ndim), key=lambda m: ranks[m] / T.shape[m])  # biggest shrink first
    for m in order:
        M = unfold(cur, m)
        r = ranks[m]
        if M.shape[0] <= M.shape[1]:
            gram = (M @ M.t()).double()
            _, vecs = torch.linalg.eigh(gram)
            U = vecs[:, -r:].flip(-1).to(T.dtype)
        else:
            gram = (M.t() @ M).double()
            vals, vecs = torch.linalg.eigh(gram)
            V = vecs[:, -r:].flip(-1)
            s = vals[-r:].flip(-1).clamp_min(0).sqrt()
            U = (M.double() @ V) / torch.where(s > 0, s, torch.ones_like(s))
            U, _ = torch.linalg.qr(U)  # re-orthonormalise (exact when s > 0)
            U = U.to(T.dtype)
        factors[m] = U
        cur = multi_mode_product(cur, [U], modes=[m], transpose=True)
    return factors, cur  # type: ignore[return-value]


def default_zeta0(Y: torch.Tensor, ranks: Sequence[int]) -> float:
    """Estimate of a threshold just above ``max|X*|`` (see the module docstring)."""
    z = float(Y.abs().max())
    if z <= 0:
        return 0.0
    # 1) clip level: walk down from max|Y| to the fixed point z = c max|HOSVD_r(Y 1{|Y| <= z})|. From above,
    #    every true spike of X* stays in while z > max|X*|, so the fit keeps it and z never drops below it.
    for _ in range(ZETA0_ROUNDS):
        factors, core = hosvd(threshold_residual(Y, None, z, out="residual").neg_(), ranks)
        X = multi_mode_product(core, factors)
        z_new = min(z, ZETA0_MULT * float(X.abs().max()))
        done = z_new >= 0.95 * z
        z = z_new
        if done:
            break
    return z


def default_zeta1(Y: torch.Tensor, X0: torch.Tensor, sparsity: float | None = None) -> float:
    """``4 * sigma`` of the clean part of ``Y - X_0`` (see the module docstring)."""
    _, s = robust_scale(Y - X0, center=False, sparsity=sparsity)
    return ZETA1_MULT * s
