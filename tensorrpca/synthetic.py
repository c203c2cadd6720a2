"""Seeded synthetic tensor RPCA problems: ``Y = X* + S*``.

``X*`` has exact Tucker ranks ``ranks`` and condition number ``kappa`` (ratio of the largest to the smallest
nonzero singular value over all mode unfoldings: the core is built so every unfolding has singular values
spaced geometrically from 1 to ``1/kappa``); ``S*`` has a fraction ``alpha`` of nonzeros at uniformly random
positions, values uniform in ``[-m, m]`` with ``m = magnitude * mean(|X*|)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .errors import RPCAInputError


@dataclass
class SyntheticProblem:
    """``Y = low_rank + sparse``; ``factors``/``core`` are the Tucker representation of ``low_rank``."""

    Y: torch.Tensor
    low_rank: torch.Tensor
    sparse: torch.Tensor
    core: torch.Tensor
    factors: list[torch.Tensor]
    kappa: float
    alpha: float

    def __iter__(self):  # Y, X, S = synthetic_rpca(...)
        return iter((self.Y, self.low_rank, self.sparse))


def _orthonormal(n: int, r: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64))
    return q


def _core_with_condition(ranks: Sequence[int], kappa: float, gen: torch.Generator) -> torch.Tensor:
    """A core whose every mode unfolding has singular values geomspace(1, 1/kappa).

    Built as an all-orthogonal core: start from a random tensor and alternate, for each mode, replacing the
    unfolding's singular values by the target ones (a few sweeps reach the targets to ~1e-12 for the small
    cores used here; the exact target is met on the last mode and close on the others).
    """
    G = torch.randn(*ranks, generator=gen, dtype=torch.float64)
    N = len(ranks)
    for _ in range(60):
        for n in range(N):
            M = G.movedim(n, 0).reshape(ranks[n], -1)
            u, _, vh = torch.linalg.svd(M, full_matrices=False)
            s = torch.logspace(0, -np.log10(kappa), ranks[n], dtype=torch.float64) if ranks[n] > 1 else torch.ones(1, dtype=torch.float64)
            # keep the Frobenius norm of every unfolding equal: sum s^2 must agree across modes
            s = s / s.norm()
            M = (u * s) @ vh
            G = M.reshape([ranks[n]] + [ranks[k] for k in range(N) if k != n]).movedim(0, n)
    return G


def synthetic_rpca(
    shape: Sequence[int],
    ranks: Sequence[int],
    kappa: float = 1.0,
    alpha: float = 0.1,
    magnitude: float = 10.0,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> SyntheticProblem:
    """Generate a tensor RPCA problem.

    Args:
        shape: ``(I_1, ..., I_N)``, ``N >= 2``.
        ranks: Tucker ranks ``(r_1, ..., r_N)``, ``1 <= r_i <= I_i``; each ``r_i <= prod of the other r``.
        kappa: condition number of ``X*`` (>= 1).
        alpha: fraction of corrupted entries, in ``[0, 1)``.
        magnitude: corruption values are uniform in ``[-m, m]``, ``m = magnitude * mean(|X*|)``.
        seed / generator: randomness (``generator`` wins when given).
        dtype, device: of the returned tensors (built in float64 on ``device``, then cast).

    Returns:
        :class:`SyntheticProblem` (unpacks as ``Y, X, S``). ``X*`` is scaled to unit RMS entry
        (``||X*||_F / sqrt(numel) = 1``).
    """
    shape = [int(s) for s in shape]
    ranks = [int(r) for r in ranks]
    if len(shape) < 2 or len(ranks) != len(shape):
        raise RPCAInputError(f"need an order >= 2 shape and one rank per mode; got shape {shape}, ranks {ranks}")
    for i, (n, r) in enumerate(zip(shape, ranks)):
        if not 1 <= r <= n:
            raise RPCAInputError(f"rank {r} of mode {i} must be in [1, {n}]")
        others = int(np.prod([ranks[k] for k in range(len(ranks)) if k != i]))
        if r > others:
            raise RPCAInputError(f"rank {r} of mode {i} exceeds the product of the other ranks ({others})")
    if kappa < 1:
        raise RPCAInputError(f"kappa must be >= 1, got {kappa}")
    if not 0 <= alpha < 1:
        raise RPCAInputError(f"alpha must be in [0, 1), got {alpha}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0 if seed is None else int(seed))

    # small pieces on the CPU generator; the full-size tensors are built in float64 on ``device``
    core = _core_with_condition(ranks, float(kappa), gen)
    factors = [_orthonormal(n, r, gen) for n, r in zip(shape, ranks)]
    dev_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    core, factors = core.to(device), [U.to(device) for U in factors]
    X = core
    for m, U in enumerate(factors):
        X = torch.tensordot(U, X.movedim(m, 0), dims=([1], [0])).movedim(0, m)
    scale = (X.numel() ** 0.5) / X.norm()
    X = X * scale
    core = core * scale

    numel = X.numel()
    n_bad = int(round(alpha * numel))
    S = torch.zeros(numel, dtype=torch.float64, device=X.device)
    if n_bad:
        dgen = torch.Generator(device=X.device).manual_seed(dev_seed)
        idx = torch.randperm(numel, generator=dgen, device=X.device)[:n_bad]
        m = float(magnitude) * X.abs().mean().item()
        S[idx] = (torch.rand(n_bad, generator=dgen, dtype=torch.float64, device=X.device) * 2 - 1) * m
    S = S.reshape(shape)
    Y = X + S
    cast = lambda t: t.to(dtype=dtype, device=device).contiguous()  # noqa: E731
    return SyntheticProblem(
        Y=cast(Y), low_rank=cast(X), sparse=cast(S), core=cast(core), factors=[cast(U) for U in factors],
        kappa=float(kappa), alpha=float(alpha),
    )
