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

With missing entries (NaN in ``Y``) the fit is made to the rescaled observed tensor and the scale of ``E`` is
taken on observed entries; ``zeta_1`` is then doubled (``MISSING_ZETA1_MULT``).

With a hint ``sparsity = alpha`` (expected corrupted fraction) the median in ``zeta_1`` becomes the quantile
at level ``(1 - alpha) / 2``, the median of the clean part, which keeps the scale unbiased for large ``alpha``.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch

from tensorkernels import multi_mode_product, threshold_residual, unfold

_SAMPLE = 1 << 20  # entries used for the robust quantiles (exact below this size)
_MAD = 1.482602218505602  # 1 / Phi^{-1}(3/4): MAD -> standard deviation for Gaussian data
ZETA0_MULT = 1.25
ZETA0_ROUNDS = 12
ZETA1_MULT = 4.0
#: extra factor on the data-derived ``zeta_1`` when entries are missing (``rpca(..., mask=)``). The spectral
#: estimate from the rescaled observed tensor errs with heavier tails than the MAD scale sees, and a first
#: threshold below that error locks correct entries out as outliers for good. 60x70x80, ranks (3,4,5), 10 %
#: corruption, kappa 1-20, 30 % / 50 % missing, 8 cases: recovered in 3 of 8 with factor 1, 7 of 8 with 2.
MISSING_ZETA1_MULT = 2.0


@functools.lru_cache(maxsize=8)
def _sample_index(n: int, device: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(12345)  # fixed: results are reproducible
    return torch.randint(0, n, (_SAMPLE,), generator=gen).to(device)


def _sample(T: torch.Tensor) -> torch.Tensor:
    flat = T.reshape(-1)
    n = flat.numel()
    if n <= _SAMPLE:
        return flat
    return flat[_sample_index(n, str(flat.device))]


def _quantile(x: torch.Tensor, q: float) -> float:
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    k = max(1, min(x.numel(), int(round(q * x.numel()))))
    # on the tensor's own device (copying 2^20 entries to the host and selecting there cost ~10 ms per call at
    # 512^3). On CUDA a full radix sort is the faster exact order statistic: torch.kthvalue took 5.3 ms for
    # 2^20 entries on an H100, where the sort takes well under 1 ms; the same value either way.
    if x.is_cuda:
        return float(torch.sort(x.reshape(-1)).values[k - 1])
    return float(torch.kthvalue(x, k).values)


def robust_scale(T: torch.Tensor, center: bool = True, sparsity: float | None = None) -> tuple[float, float]:
    """``(center, sigma)``: the median and a MAD-based standard deviation of the entries of ``T``.

    ``sparsity`` (fraction of gross outliers) moves the quantile to the clean part's median.
    """
    x = _sample(T)
    if x.isnan().any():  # missing entries (NaN in rpca's working copy) carry no information: drop them
        x = x[~x.isnan()]
        if x.numel() == 0:
            return 0.0, 0.0
    med = _quantile(x, 0.5) if center else 0.0
    a = (x - med).abs()
    s = _quantile(a, 0.5 * (1.0 - (sparsity or 0.0))) * _MAD
    return med, s


#: unfoldings with at least this many entries get their factor from a randomized range finder (below: the exact
#: Gram eigendecomposition). 512^3 float32: the Gram of a 512 x 262144 unfolding is 137 GFLOP; the range finder
#: reads the unfolding 2 + 2 * RANGE_POWER times in thin GEMMs (k = r + RANGE_OVERSAMPLE columns).
RANDOMIZED_MIN_ENTRIES = 1 << 22
#: the same on CUDA, where the Gram path's float64 eigendecomposition is slow for a few hundred rows (H100: 5 ms
#: for 512 x 512, the second mode of a 512^3 HOSVD at rank 10, whose unfolding has only 2.6M entries)
RANDOMIZED_MIN_ENTRIES_CUDA = 1 << 18
RANGE_OVERSAMPLE = 10
RANGE_POWER = 3
#: on CUDA, QR and symmetric eigendecompositions of at most this many entries run on the host: each cuSOLVER call
#: costs 0.16-0.3 ms of latency (H100: QR of 512 x 20, eigh of 20 x 20), the host round trip a few tens of us
HOST_LINALG_MAX_ENTRIES = 1 << 16


def _on_host(A: torch.Tensor) -> bool:
    return A.is_cuda and A.numel() <= HOST_LINALG_MAX_ENTRIES


def _qr_q(A: torch.Tensor) -> torch.Tensor:
    """``Q`` of the reduced QR of ``A`` (tiny CUDA inputs on the host: same factorisation, less latency)."""
    if _on_host(A):
        return torch.linalg.qr(A.cpu())[0].to(A.device)
    return torch.linalg.qr(A)[0]


def _eigh(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` (tiny CUDA inputs on the host)."""
    if _on_host(A):
        vals, vecs = torch.linalg.eigh(A.cpu())
        return vals.to(A.device), vecs.to(A.device)
    return torch.linalg.eigh(A)


def _gram_factor(M: torch.Tensor, r: int, dtype) -> torch.Tensor:
    """Top-``r`` left singular vectors of ``M`` from the smaller Gram matrix, eigen-solved in float64."""
    if M.shape[0] <= M.shape[1]:
        gram = (M @ M.t()).double()
        _, vecs = _eigh(gram)
        return vecs[:, -r:].flip(-1).to(dtype)
    gram = (M.t() @ M).double()
    vals, vecs = _eigh(gram)
    V = vecs[:, -r:].flip(-1)
    s = vals[-r:].flip(-1).clamp_min(0).sqrt()
    U = (M.double() @ V) / torch.where(s > 0, s, torch.ones_like(s))
    U = _qr_q(U)  # re-orthonormalise (exact when s > 0)
    return U.to(dtype)


def _randomized_factor(M: torch.Tensor, r: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, U^T M)``: top-``r`` left singular vectors of ``M`` (``I x J``) by a randomized range finder
    (Halko, Martinsson, Tropp 2011: Gaussian sketch of ``k = r + RANGE_OVERSAMPLE`` columns, ``RANGE_POWER``
    power iterations with re-orthonormalisation, then the exact SVD of ``Q^T M``), and the projection, which
    comes out of the last pass for free. Exact when ``M`` has rank <= k; every pass over ``M`` is a thin GEMM."""
    k = min(r + RANGE_OVERSAMPLE, min(M.shape))
    gen = torch.Generator(device=M.device).manual_seed(seed)
    omega = torch.randn(M.shape[1], k, generator=gen, device=M.device, dtype=M.dtype)
    Q = _qr_q(M @ omega)
    for _ in range(RANGE_POWER):
        Q = _qr_q(M @ (M.t() @ Q))
    B = Q.t() @ M  # (k, J)
    _, vecs = _eigh((B @ B.t()).double())
    V = vecs[:, -r:].flip(-1).to(M.dtype)  # (k, r)
    return Q @ V, V.t() @ B


def hosvd(T: torch.Tensor, ranks: Sequence[int], randomized: bool | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Sequentially truncated HOSVD: orthonormal ``U_i`` (``I_i x r_i``) and the core.

    Each factor comes from the eigenvectors of the smaller Gram matrix of the current unfolding
    (``M M^T`` or ``M^T M``), eigen-solved in float64; the tensor is projected after each mode, so only the
    first Gram matrix touches the full tensor. Unfoldings of at least ``RANDOMIZED_MIN_ENTRIES`` entries
    (``RANDOMIZED_MIN_ENTRIES_CUDA`` on a GPU) whose rank is well below both sides use a randomized range finder
    instead (``randomized``: ``None`` decides by that size, ``True``/``False`` force it).
    """
    cur = T
    factors: list[torch.Tensor | None] = [None] * T.ndim
    order = sorted(range(T.ndim), key=lambda m: ranks[m] / T.shape[m])  # biggest shrink first
    for m in order:
        M = unfold(cur, m)
        r = ranks[m]
        use_rand = randomized
        if use_rand is None:
            # the lower CUDA bar is for speed; a differentiable init (the unfolded network) keeps the exact Gram
            # factors it had before, as on the CPU
            big = RANDOMIZED_MIN_ENTRIES_CUDA if (M.is_cuda and not M.requires_grad) else RANDOMIZED_MIN_ENTRIES
            use_rand = M.numel() >= big and 4 * (r + RANGE_OVERSAMPLE) <= min(M.shape)
        if use_rand and r < min(M.shape):
            U, P = _randomized_factor(M, r, seed=m)
            factors[m] = U
            shape = list(cur.shape)
            shape[m] = r
            moved = [r] + shape[:m] + shape[m + 1:]
            cur = P.reshape(moved).movedim(0, m)
            continue
        U = _gram_factor(M, r, T.dtype)
        factors[m] = U
        cur = multi_mode_product(cur, [U], modes=[m], transpose=True)
    return factors, cur.contiguous()  # type: ignore[return-value]


def default_zeta0(Y: torch.Tensor, ranks: Sequence[int], scale: float = 1.0, zmax: float | None = None) -> float:
    """Estimate of a threshold just above ``max|X*|`` (see the module docstring).

    ``scale``: the fit is made to ``scale * T_z(Y)`` (``1/p`` for a tensor with missing entries set to 0,
    ``p`` the observed fraction: the rescaled observed tensor of tensor completion), while the clip level ``z``
    applies to the entries of ``Y`` themselves. ``zmax``: ``max|Y|`` when the caller has it (saves a pass)."""
    z = float(torch.linalg.vector_norm(Y, ord=float("inf"))) if zmax is None else float(zmax)
    if z <= 0:
        return 0.0
    # 1) clip level: walk down from max|Y| to the fixed point z = c max|HOSVD_r(Y 1{|Y| <= z})|. From above,
    #    every true spike of X* stays in while z > max|X*|, so the fit keeps it and z never drops below it.
    for i in range(ZETA0_ROUNDS):
        if i == 0 and scale == 1.0:
            D = Y  # the clip at max|Y| keeps every entry
        else:
            D = threshold_residual(Y, None, z, out="kept")
            if scale != 1.0:
                D.mul_(scale)
        factors, core = hosvd(D, ranks)
        del D
        X = multi_mode_product(core, factors)
        z_new = min(z, ZETA0_MULT * float(torch.linalg.vector_norm(X, ord=float("inf"))))  # no |X| temporary
        del X
        done = z_new >= 0.95 * z
        z = z_new
        if done:
            break
    return z


def default_zeta1(Y: torch.Tensor, X0: torch.Tensor, sparsity: float | None = None) -> float:
    """``4 * sigma`` of the clean part of ``Y - X_0`` (see the module docstring). NaN entries of ``Y``
    (missing) are left out. Large tensors: the same ``2^20`` sampled entries of both, no full-size difference."""
    if Y.numel() > _SAMPLE:
        D = _sample(Y) - _sample(X0)
    else:
        D = Y - X0
    _, s = robust_scale(D, center=False, sparsity=sparsity)
    return ZETA1_MULT * s
