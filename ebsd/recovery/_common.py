"""Small symmetry helpers shared by the recovery modules (batched, differentiable, on any device)."""
from __future__ import annotations

import torch

from ..orientation import get_symmetry, misorientation_angle, quat_conjugate, quat_multiply


def symmetry_operators(symmetry: str, like: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` proper rotations of the Laue class ``symmetry``, on ``like``'s device and dtype."""
    return get_symmetry(symmetry).operators_as(like)


def _sym_dots(q1: torch.Tensor, q2: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """``<q1, s q2>`` for every operator ``s``: ``(..., N)``. Uses ``<p, s q> = <conj(s), q conj(p)>``, so
    one quaternion product per pair and a ``(4, N)`` matmul instead of ``N`` products."""
    q1, q2 = torch.broadcast_tensors(q1, q2)
    r = quat_multiply(q2, quat_conjugate(q1))
    return r @ quat_conjugate(ops).T


def cos_half_misorientation(q1: torch.Tensor, q2: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """``cos(theta / 2)`` of the misorientation angle ``theta`` between ``q1`` and ``q2`` (broadcast
    ``(..., 4)``), i.e. ``max_s |<q1, s q2>|``. Differentiable; ``q1`` need not be exactly unit."""
    return _sym_dots(q1, q2, ops).abs().amax(-1)


def misorientation_deg(q1: torch.Tensor, q2: torch.Tensor, symmetry: str) -> torch.Tensor:
    """Misorientation angle in degrees (broadcast ``(..., 4)``), via :func:`ebsd.orientation.misorientation_angle`."""
    return torch.rad2deg(misorientation_angle(q1, q2, symmetry))


def runs(indices) -> list[tuple[int, int]]:
    """Sorted unique ints -> inclusive runs ``[(z0, z1), ...]`` of consecutive values."""
    idx = sorted(set(int(i) for i in indices))
    out: list[tuple[int, int]] = []
    for i in idx:
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def gap_neighbours(run: tuple[int, int], n_slices: int, missing: set[int]) -> tuple[int | None, int | None]:
    """The known slices just below and just above the inclusive run ``(z0, z1)`` (None at a volume edge)."""
    z0, z1 = run
    lo = z0 - 1 if z0 - 1 >= 0 and (z0 - 1) not in missing else None
    hi = z1 + 1 if z1 + 1 < n_slices and (z1 + 1) not in missing else None
    return lo, hi


def gap_position(z: int, lo: int | None, hi: int | None) -> float:
    """Where slice ``z`` sits between ``lo`` (0) and ``hi`` (1); 0 or 1 when a side is missing."""
    if lo is None:
        return 1.0
    if hi is None:
        return 0.0
    return (z - lo) / (hi - lo)


def check_missing(vol, missing) -> list[int]:
    """Validate a list of slice indices against ``vol`` (negative indices count from the end)."""
    from ..errors import EBSDValueError

    Z = vol.shape[0]
    if isinstance(missing, (int,)) or (hasattr(missing, "ndim") and getattr(missing, "ndim") == 0):
        missing = [int(missing)]
    out = set()
    for given in missing:
        try:
            m = int(given)
        except (TypeError, ValueError):
            raise EBSDValueError(f"missing slices must be integers, got {given!r}") from None
        if m < 0:
            m += Z
        if not 0 <= m < Z:
            raise EBSDValueError(f"missing slice {given} is outside the volume's 0..{Z - 1}")
        out.add(m)
    if len(out) >= Z:
        raise EBSDValueError(f"all {Z} slices are marked missing; at least one known slice is needed")
    return sorted(out)


def filled_volume(vol, filled: dict[int, torch.Tensor], method: str):
    """A copy of ``vol`` with slices ``filled[z]`` (``(Y, X, 4)``) written in and marked valid; CI and IQ
    of those slices are the mean of the nearest known slices; ``metadata["recovered_slices"]`` lists them."""
    new = vol.copy()
    missing = set(filled)
    known = [z for z in range(vol.shape[0]) if z not in missing]
    for z, q in filled.items():
        new.quaternions[z] = q.to(new.quaternions)
        new.valid[z] = True
        lo = max((k for k in known if k < z), default=None)
        hi = min((k for k in known if k > z), default=None)
        nb = [k for k in (lo, hi) if k is not None]
        new.confidence[z] = torch.stack([vol.confidence[k] for k in nb]).mean(0)
        new.image_quality[z] = torch.stack([vol.image_quality[k] for k in nb]).mean(0)
        new.phases[z] = vol.phases[nb[0]]
    prev = list(new.metadata.get("recovered_slices", []))
    new.metadata["recovered_slices"] = sorted(set(prev) | missing)
    new.metadata["recovery_method"] = method
    return new
