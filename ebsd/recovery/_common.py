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
    if isinstance(missing, str):  # "12,13" or "12-14,20", as the CLI takes it
        import re

        parts, text = [], missing
        for part in (t.strip() for t in text.split(",")):
            if not part:
                continue
            m = re.fullmatch(r"(-?\d+)\s*-\s*(\d+)", part) if not part.startswith("-") else None
            if m:
                parts.extend(range(int(m[1]), int(m[2]) + 1))
            else:
                try:
                    parts.append(int(part))
                except ValueError:
                    raise EBSDValueError(f"missing={text!r}: cannot read {part!r}; give slice indices as a list "
                                         "of ints or a string like '12,13' or '12-14'") from None
        missing = parts
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


def _source_map(vol, z: int, lo: int | None, hi: int | None) -> torch.Tensor:
    """``(Y, X)`` int8 source of each voxel of recovered slice ``z`` when the method gives none: the nearer
    known slice (0 = ``lo``, 1 = ``hi``; below on ties) where it is indexed there, else the other one."""
    Y, X = vol.shape[1:]
    src = torch.full((Y, X), -1, dtype=torch.int8, device=vol.device)
    sides = [(0, lo), (1, hi)]
    if lo is not None and hi is not None and (z - lo) > (hi - z):
        sides = sides[::-1]
    for code, k in reversed(sides):  # the preferred side is written last
        if k is not None:
            src[vol.valid[k]] = code
    return src


def source_fields(vol, lo: int | None, hi: int | None, src: torch.Tensor):
    """Phase id, CI, IQ ``(Y, X)`` each and ``ok`` ``(Y, X)`` bool of recovered voxels whose orientation came
    from ``src`` (0: the voxel below, slice ``lo``; 1: above, ``hi``; 2: both (CI/IQ averaged, phase of
    ``lo``); -1: none, take the nearest in-plane voxel that has a source). ``ok`` (valid) is the source
    voxels' own validity (a baseline that copied an unindexed voxel gives an unindexed voxel), and for -1 it
    is False only where no voxel of the slice has a source (both neighbours entirely unindexed)."""
    from .blend import _fill_from_neighbours

    Y, X = src.shape
    dev = vol.device
    feats = torch.zeros(Y, X, 3, device=dev)
    for code, k in ((0, lo), (1, hi)):
        if k is None:
            continue
        f = torch.stack([vol.phases[k].float(), vol.confidence[k], vol.image_quality[k]], -1)
        feats = torch.where((src.to(dev) == code)[..., None], f, feats)
    both = (src.to(dev) == 2)
    if bool(both.any()) and lo is not None and hi is not None:
        fb = torch.stack([vol.phases[lo].float(), (vol.confidence[lo] + vol.confidence[hi]) / 2,
                          (vol.image_quality[lo] + vol.image_quality[hi]) / 2], -1)
        feats = torch.where(both[..., None], fb, feats)
    s = src.to(dev)
    have = s >= 0
    if not bool(have.all()):
        feats = _fill_from_neighbours(feats, have)
    # valid where the source voxel(s) are indexed; a voxel filled from in-plane neighbours is valid if any
    # voxel of the slice had a source
    ok = torch.full((Y, X), bool(have.any()), dtype=torch.bool, device=dev)
    if lo is not None:
        ok = torch.where(s == 0, vol.valid[lo], ok)
    if hi is not None:
        ok = torch.where(s == 1, vol.valid[hi], ok)
    if lo is not None and hi is not None:
        ok = torch.where(s == 2, vol.valid[lo] & vol.valid[hi], ok)
    return feats[..., 0].round().to(torch.int32), feats[..., 1], feats[..., 2], ok


def filled_volume(vol, filled: dict[int, torch.Tensor], method: str, sources: dict[int, torch.Tensor] | None = None):
    """A copy of ``vol`` with slices ``filled[z]`` (``(Y, X, 4)``) written in.

    Every recovered voxel is ``valid`` and not ``measured`` (its orientation is inferred), and carries the
    phase id, CI and IQ of the measured voxel its orientation came from: ``sources[z]`` ``(Y, X)`` int8
    (0: the known slice below, 1: above, 2: both, -1: none; see :func:`source_fields`), or, without
    ``sources``, the nearer known neighbour at the same ``(y, x)`` where that one is indexed, else the
    other. So phase, CI, IQ and the valid flag agree (a voxel next to an unindexed slice gets the phase of
    the grain it continues, never phase 0). ``metadata["recovered_slices"]`` lists the slices and
    ``metadata["recovery_method"]`` names the method."""
    new = vol.copy()
    missing = set(filled)
    known = [z for z in range(vol.shape[0]) if z not in missing]
    for z, q in filled.items():
        lo = max((k for k in known if k < z), default=None)
        hi = min((k for k in known if k > z), default=None)
        src = sources.get(z) if sources else None
        if src is None:
            src = _source_map(vol, z, lo, hi)
        ph, ci, iq, ok = source_fields(vol, lo, hi, src)
        new.quaternions[z] = q.to(new.quaternions)
        new.phases[z] = torch.where(ok, ph, torch.zeros_like(ph))
        new.confidence[z] = ci
        new.image_quality[z] = iq
        new.valid[z] = ok
        new.measured[z] = False
    prev = list(new.metadata.get("recovered_slices", []))
    new.metadata["recovered_slices"] = sorted(set(prev) | missing)
    new.metadata["recovery_method"] = method
    return new
