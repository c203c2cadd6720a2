"""Scores of recovered slices against a known truth (benchmark and tuning share them).

* mean misorientation (deg) and fraction within 5 deg: :func:`misorientation_stats`;
* grain-boundary F1 of a recovered slice: :func:`boundary_counts` per slice, summed, then :func:`f1`.
  Predicted boundaries are in-plane neighbour pairs (right and lower neighbour) misoriented by more than
  ``threshold`` deg; true ones are pairs of different truth grain ids. A boundary pixel counts as matched
  when the other map has one within ``tol`` pixels (0: the same pixel).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import misorientation_deg


def pair_boundaries(ids_or_q: torch.Tensor, symmetry: str | None = None, threshold: float = 5.0) -> torch.Tensor:
    """``(Y, X)`` bool: the voxel differs from its right or lower neighbour. ``ids_or_q``: ``(Y, X)`` grain
    ids (``symmetry=None``) or ``(Y, X, 4)`` quaternions (misorientation > ``threshold`` deg)."""
    Y, X = ids_or_q.shape[:2]
    b = torch.zeros(Y, X, dtype=torch.bool, device=ids_or_q.device)
    if symmetry is None:
        b[:, :-1] |= ids_or_q[:, :-1] != ids_or_q[:, 1:]
        b[:-1] |= ids_or_q[:-1] != ids_or_q[1:]
    else:
        q = ids_or_q
        b[:, :-1] |= misorientation_deg(q[:, :-1], q[:, 1:], symmetry) > threshold
        b[:-1] |= misorientation_deg(q[:-1], q[1:], symmetry) > threshold
    return b


def _dilate(b: torch.Tensor, r: int) -> torch.Tensor:
    if r <= 0:
        return b
    return F.max_pool2d(b[None, None].float(), 2 * r + 1, 1, r)[0, 0] > 0


def boundary_counts(pred_q: torch.Tensor, truth_ids: torch.Tensor, symmetry: str, tol: int = 0,
                    threshold: float = 5.0) -> tuple[int, int, int, int]:
    """``(matched predicted, predicted, matched true, true)`` boundary pixels of one slice: ``pred_q``
    ``(Y, X, 4)`` quaternions, ``truth_ids`` ``(Y, X)`` integer grain ids."""
    pb = pair_boundaries(pred_q.cpu(), symmetry, threshold)
    tb = pair_boundaries(truth_ids.cpu())
    return (int((pb & _dilate(tb, tol)).sum()), int(pb.sum()), int((tb & _dilate(pb, tol)).sum()), int(tb.sum()))


def f1(counts) -> float:
    """Boundary F1 from summed :func:`boundary_counts` ``(matched pred, pred, matched true, true)``."""
    p = counts[0] / max(1, counts[1])
    r = counts[2] / max(1, counts[3])
    return 2 * p * r / max(1e-12, p + r)


def misorientation_stats(pred: torch.Tensor, clean: torch.Tensor, symmetry: str) -> dict:
    """``{"err_sum", "n", "within5"}`` over all voxels of ``pred``/``clean`` ``(..., 4)`` (deg)."""
    err = misorientation_deg(pred.cpu(), clean.cpu(), symmetry)
    return {"err_sum": float(err.sum()), "n": err.numel(), "within5": int((err <= 5).sum())}
