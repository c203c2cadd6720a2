"""Mode products and chained Tucker products.

Conventions (the same as tensorly's): the mode-``n`` unfolding of ``T`` (shape ``(I_1, ..., I_N)``) is
``M_n(T) = T.movedim(n, 0).reshape(I_n, -1)``; the mode-``n`` product ``T x_n M`` with ``M`` of shape
``(J, I_n)`` replaces dimension ``n`` by ``J``: ``M_n(T x_n M) = M @ M_n(T)``.

``multi_mode_product`` applies several mode products in the order that needs the fewest flops
(exhaustive over orders for up to 6 modes, greedy beyond), which matters a lot when the products
shrink a large tensor (``R x_1 U_1^T ... x_N U_N^T``) or expand a small core.
"""
from __future__ import annotations

import itertools
import os
from typing import Sequence

import torch

from ._dispatch import resolve_backend


def unfold(T: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-``mode`` unfolding, shape ``(I_mode, prod of the other dims)``."""
    return T.movedim(mode, 0).reshape(T.shape[mode], -1)


def fold(M: torch.Tensor, mode: int, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`unfold` for a tensor of the given full ``shape``."""
    shape = list(shape)
    moved = [shape[mode]] + shape[:mode] + shape[mode + 1 :]
    return M.reshape(moved).movedim(0, mode)


def _mode_product_torch(T: torch.Tensor, M: torch.Tensor, mode: int) -> torch.Tensor:
    shape = T.shape
    A = 1
    for s in shape[:mode]:
        A *= s
    B = 1
    for s in shape[mode + 1 :]:
        B *= s
    if B == 1:
        # last mode: one GEMM (A, I) @ (I, J). matmul(M, T3) would broadcast M into A batched GEMVs, which
        # made tucker_to_tensor of a 512^3 tensor take 5.8 ms on an H100 instead of a fraction of one.
        return (T.reshape(A, shape[mode]) @ M.t()).reshape(*shape[:mode], M.shape[0], *shape[mode + 1 :])
    T3 = T.reshape(A, shape[mode], B)
    out = torch.matmul(M, T3)  # (A, J, B), batched over A without copies
    return out.reshape(*shape[:mode], M.shape[0], *shape[mode + 1 :])


def mode_product(
    T: torch.Tensor, M: torch.Tensor, mode: int, transpose: bool = False, backend: str | None = None
) -> torch.Tensor:
    """``T x_mode M`` (or ``T x_mode M^T`` when ``transpose``).

    Args:
        T: tensor of any order ``N >= 1``.
        M: matrix of shape ``(J, I_mode)`` (``(I_mode, J)`` when ``transpose``).
        mode: the mode, ``0 <= mode < N`` (negative values count from the end).
    Returns:
        Tensor with dimension ``mode`` replaced by ``J``.
    """
    if mode < 0:
        mode += T.ndim
    if not 0 <= mode < T.ndim:
        raise ValueError(f"mode {mode} out of range for a tensor of order {T.ndim}")
    if M.ndim != 2:
        raise ValueError(f"M must be a matrix, got shape {tuple(M.shape)}")
    Mm = M.t() if transpose else M
    if Mm.shape[1] != T.shape[mode]:
        raise ValueError(
            f"matrix of shape {tuple(Mm.shape)} cannot multiply mode {mode} of size {T.shape[mode]}"
        )
    if T.dtype != Mm.dtype:
        raise ValueError(f"dtype mismatch: tensor {T.dtype}, matrix {Mm.dtype}")
    last = all(s == 1 for s in T.shape[mode + 1 :])
    forced = (backend or os.environ.get("EBSDTK_KERNEL_BACKEND", "auto")).lower() == "triton"
    if resolve_backend(backend, T, Mm) == "triton" and (forced or not last):
        # On the last mode no permute copy is needed and the product is one plain GEMM, where cuBLAS beats
        # our tile (measured on an H100: tucker_to_tensor 512^3 fp32, 13.6 ms Triton vs 5.7 ms torch);
        # "auto" keeps cuBLAS there, an explicit backend="triton" still runs the kernel.
        from ._triton_tucker import triton_mode_product

        return triton_mode_product(T.contiguous(), Mm, mode)
    return _mode_product_torch(T.contiguous(), Mm, mode)


def _best_order(shape: Sequence[int], new_sizes: dict[int, int]) -> list[int]:
    """Order of the mode products with the fewest multiply-adds."""
    modes = list(new_sizes)

    def cost(order):
        cur = list(shape)
        total = 0
        for m in order:
            n = 1
            for s in cur:
                n *= s
            total += n * new_sizes[m]  # (numel / I_m) * I_m * J
            cur[m] = new_sizes[m]
        return total

    if len(modes) <= 6:
        return list(min(itertools.permutations(modes), key=cost))
    order, cur = [], list(shape)
    remaining = set(modes)
    while remaining:  # greedy: largest shrink ratio first
        m = min(remaining, key=lambda k: new_sizes[k] / cur[k])
        order.append(m)
        cur[m] = new_sizes[m]
        remaining.remove(m)
    return order


def multi_mode_product(
    T: torch.Tensor,
    matrices: Sequence[torch.Tensor | None],
    modes: Sequence[int] | None = None,
    transpose: bool = False,
    skip: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """``T x_{m1} M1 x_{m2} M2 ...`` in the cheapest order.

    Args:
        T: tensor of order ``N``.
        matrices: one matrix per entry of ``modes`` (``None`` entries are skipped).
        modes: the modes; default ``range(len(matrices))``.
        transpose: multiply by the transposes (``R x_1 U_1^T ...`` with ``U_i`` of shape ``(I_i, r_i)``).
        skip: a mode to leave out (as in the gradient of a Tucker factor).
    """
    if modes is None:
        modes = list(range(len(matrices)))
    if len(modes) != len(matrices):
        raise ValueError("matrices and modes must have the same length")
    pairs = {}
    for m, M in zip(modes, matrices):
        if M is None or m == skip:
            continue
        m = m + T.ndim if m < 0 else m
        pairs[m] = M
    new_sizes = {m: (M.shape[1] if transpose else M.shape[0]) for m, M in pairs.items()}
    out = T
    for m in _best_order(T.shape, new_sizes):
        out = mode_product(out, pairs[m], m, transpose=transpose, backend=backend)
    return out


def tucker_to_tensor(
    core: torch.Tensor, factors: Sequence[torch.Tensor], backend: str | None = None
) -> torch.Tensor:
    """Full tensor ``core x_1 U_1 ... x_N U_N`` with ``U_i`` of shape ``(I_i, r_i)``."""
    if len(factors) != core.ndim:
        raise ValueError(f"need {core.ndim} factors for a core of order {core.ndim}, got {len(factors)}")
    return multi_mode_product(core, list(factors), backend=backend)
