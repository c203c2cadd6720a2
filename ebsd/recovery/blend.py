"""Candidate blending: recover a missing section from the *measured* orientations of its neighbours.

Real grains are not flat: orientation drifts by a degree or two between neighbouring voxels inside a grain,
and a grain-mean answer costs that much everywhere. Here every recovered voxel carries measured data. For a
voxel ``(y, x)`` of a missing section at gap position ``t`` (0 = the known section below, 1 = above) the
candidates are the voxel below, ``q_lo(y, x)``, the voxel above, ``q_hi(y, x)``, and their
symmetry-aware slerp. Which one is decided by the *topology* of the two known sections:

1. The two known sections are segmented together (a 2-section volume, so a grain that runs through both
   gets one label; each phase with its own symmetry; different phases never share a grain).
2. For each of the two candidate grains (the label below and the label above at ``(y, x)``) the signed
   in-plane distance to that grain's boundary is measured in both sections (positive inside, negative
   outside, in voxels, capped at ``radius + 1``) and interpolated linearly in ``t``: shape-based
   interpolation of each grain between the sections (Raya & Udupa's method applied to grains). The grain
   with the larger interpolated distance wins, so boundaries move smoothly between sections and an isolated
   misindexed voxel (a one-voxel "grain" that the other section does not continue) loses.
3. The voxel takes the orientation of the winner *measured at* ``(y, x)``: the slerp of both when the same
   grain runs through both sections there (keeping the intragranular gradient), else the one section's own
   voxel. Phase, CI and IQ come with it (see :func:`blend_sources`).

An optional ``guess`` (the network's raw prediction) adds a cost ``guess_weight * misorientation / 10 deg``
to each candidate, so the network can overrule the geometry where it is confident.
Voxels with no valid candidate at ``(y, x)`` take the result of the nearest in-plane voxel that has one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..orientation import segment_grains
from ._common import misorientation_deg, symmetry_operators
from .projection import _align


@dataclass
class BlendResult:
    """``quaternions (G, Y, X, 4)``; ``source (G, Y, X)`` int8: 0 = copied from below, 1 = from above,
    2 = slerp of both, -1 = nothing there (filled from the nearest in-plane result)."""

    quaternions: torch.Tensor
    source: torch.Tensor


def joint_labels(q: torch.Tensor, valid: torch.Tensor, phases: torch.Tensor | None, symmetries: dict[int, str],
                 threshold_deg: float) -> torch.Tensor:
    """Grain labels ``(S, Y, X)`` (``-1`` invalid) of a stack of ``S`` sections ``q (S, Y, X, 4)``,
    connected across sections; each phase id segmented with its own symmetry (``phases=None``: one phase,
    the first of ``symmetries``)."""
    if phases is None or len(symmetries) <= 1:
        sym = next(iter(symmetries.values())) if symmetries else "m-3m"
        lab, _ = segment_grains(q, sym, threshold_deg, valid=valid)
        return lab
    out = torch.full(valid.shape, -1, dtype=torch.long, device=q.device)
    offset = 0
    for pid in torch.unique(phases[valid]).tolist():
        sym = symmetries.get(int(pid))
        if sym is None:
            continue
        m = valid & (phases == pid)
        lab, n = segment_grains(q, sym, threshold_deg, valid=m)
        out = torch.where(lab >= 0, lab + offset, out)
        offset += n
    return out


def _offsets(radius: int) -> list[tuple[float, int, int]]:
    """In-plane offsets within ``radius`` (excluding 0), sorted by length: ``[(length, dy, dx), ...]``."""
    offs = [((dy * dy + dx * dx) ** 0.5, dy, dx) for dy in range(-radius, radius + 1)
            for dx in range(-radius, radius + 1) if 0 < dy * dy + dx * dx <= radius * radius]
    return sorted(offs)


def _shift(lab: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[..., y, x] = lab[..., y + dy, x + dx]``, ``-2`` outside the image."""
    Y, X = lab.shape[-2:]
    out = torch.full_like(lab, -2)
    ys, yd = (slice(0, Y - dy), slice(dy, Y)) if dy >= 0 else (slice(-dy, Y), slice(0, Y + dy))
    xs, xd = (slice(0, X - dx), slice(dx, X)) if dx >= 0 else (slice(-dx, X), slice(0, X + dx))
    if ys.stop > ys.start and xs.stop > xs.start:
        out[..., ys, xs] = lab[..., yd, xd]
    return out


def signed_distance(lab: torch.Tensor, cand: torch.Tensor, radius: int) -> torch.Tensor:
    """Signed in-plane distance (voxels) of each ``(y, x)`` to the region ``lab == cand[..., y, x]`` of one
    section: ``+d`` inside (``d`` = distance to the nearest voxel with another valid label), ``-d`` outside
    (distance to the nearest voxel of the label), capped at ``radius + 1``. ``lab (Y, X)`` (``-1``:
    invalid, neither inside nor a boundary), ``cand (..., Y, X)`` (``-1``: no candidate, result 0). An
    invalid voxel counts as outside, one voxel nearer: ``1 - d_out``."""
    cap = float(radius + 1)
    c = cand
    d_out = torch.full(c.shape, cap, dtype=torch.float32, device=lab.device)
    d_in = d_out.clone()
    for dist, dy, dx in _offsets(radius):  # ascending length: the first hit is the nearest
        sh = _shift(lab, dy, dx)
        eq = sh == c
        d_out = torch.where(eq & (d_out >= cap), torch.full_like(d_out, dist), d_out)
        d_in = torch.where(~eq & (sh >= 0) & (d_in >= cap), torch.full_like(d_in, dist), d_in)
    sd = torch.where(lab == c, d_in, torch.where(lab < 0, 1.0 - d_out, -d_out))
    return torch.where(c >= 0, sd, torch.zeros_like(sd))


def _fill_from_neighbours(q: torch.Tensor, have: torch.Tensor, max_iter: int = 64) -> torch.Tensor:
    """Copy into voxels without a result (``~have``) the result of an in-plane neighbour, growing outwards."""
    q, have = q.clone(), have.clone()
    for _ in range(max_iter):
        if bool(have.all()) or not bool(have.any()):
            break
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            src_q = torch.roll(q, (dy, dx), (0, 1))
            src_h = torch.roll(have, (dy, dx), (0, 1))
            Y, X = have.shape  # no wrap-around
            if dy == 1:
                src_h[0] = False
            if dy == -1:
                src_h[Y - 1] = False
            if dx == 1:
                src_h[:, 0] = False
            if dx == -1:
                src_h[:, X - 1] = False
            take = ~have & src_h
            q = torch.where(take[..., None], src_q, q)
            have = have | take
    return q


def blend_sections(q_lo: torch.Tensor, v_lo: torch.Tensor, q_hi: torch.Tensor, v_hi: torch.Tensor,
                   positions, symmetries: dict[int, str], phases_lo: torch.Tensor | None = None,
                   phases_hi: torch.Tensor | None = None, threshold_deg: float = 5.0, radius: int = 4,
                   guess: torch.Tensor | None = None, guess_weight: float = 0.0, outer_lo=None, outer_hi=None,
                   outer_weight: float = 0.5) -> BlendResult:
    """Recover the sections at gap positions ``positions`` (``G`` floats in ``(0, 1)``) between the known
    sections ``q_lo``/``q_hi`` (``(Y, X, 4)``, validity ``(Y, X)`` bool, optional phase ids ``(Y, X)``).

    ``symmetries``: ``{phase id: Laue class}``; ``threshold_deg``: grain segmentation threshold (deg);
    ``radius``: search radius of the signed distances (voxels; boundaries that move further between the
    known sections are treated as ``radius + 1`` away); ``guess``: optional ``(G, Y, X, 4)`` network
    prediction and its ``guess_weight`` (see the module docstring). ``outer_lo``/``outer_hi``: optional
    ``(q, valid, phases)`` of the known sections one further below / above; their signed distances join the
    interpolation with weight ``outer_weight`` (relative to the adjacent section on the same side), which
    follows a boundary's trend over four sections and breaks ties between two. Returns a
    :class:`BlendResult`.
    """
    dev = q_lo.device
    pos = [float(t) for t in positions]
    G = len(pos)
    secs = [(q_lo, v_lo, phases_lo), (q_hi, v_hi, phases_hi)]
    use_lo1 = outer_lo is not None and outer_weight > 0
    use_hi1 = outer_hi is not None and outer_weight > 0
    if use_lo1:
        secs.insert(0, tuple(outer_lo))
    if use_hi1:
        secs.append(tuple(outer_hi))
    i_lo = 1 if use_lo1 else 0
    i_hi = i_lo + 1
    qs = torch.stack([s_[0] for s_ in secs])
    vs = torch.stack([s_[1] for s_ in secs]).bool()
    phs = None if phases_lo is None else torch.stack([s_[2] for s_ in secs])
    lab = joint_labels(qs, vs, phs, symmetries, threshold_deg)
    c_lo, c_hi = lab[i_lo], lab[i_hi]
    ph2 = None if phases_lo is None else phs[[i_lo, i_hi]]
    same = (c_lo >= 0) & (c_lo == c_hi)
    both = torch.stack([c_lo, c_hi])
    sds = [signed_distance(lab[i], both, radius) for i in range(len(secs))]  # each (2, Y, X): lo / hi label
    w = float(outer_weight)
    below = (sds[i_lo] + w * sds[0]) / (1 + w) if use_lo1 else sds[i_lo]
    above = (sds[i_hi] + w * sds[-1]) / (1 + w) if use_hi1 else sds[i_hi]
    sd = {"lo": (below[0], above[0]), "hi": (below[1], above[1])}
    sym0 = next(iter(symmetries.values()))
    single = ph2 is None or len(symmetries) <= 1
    # slerp is used only where both voxels are one grain (hence one phase): align there only
    q_hi_al = q_hi.clone()
    for pid, sym in ([(None, sym0)] if single else list(symmetries.items())):
        m = same if pid is None else same & (phases_lo == pid)
        if bool(m.any()):
            q_hi_al[m] = _align(q_hi[m], q_lo[m], symmetry_operators(sym, q_lo))
    dot = (q_lo * q_hi_al).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    outs, srcs = [], []
    for g, t in enumerate(pos):
        s_lo = (1 - t) * sd["lo"][0] + t * sd["lo"][1]
        s_hi = (1 - t) * sd["hi"][0] + t * sd["hi"][1]
        if guess is not None and guess_weight > 0:
            gq = guess[g]
            s_lo = s_lo - guess_weight * misorientation_deg(gq, q_lo, sym0) / 10.0
            s_hi = s_hi - guess_weight * misorientation_deg(gq, q_hi, sym0) / 10.0
        pick_lo = (c_lo >= 0) & ((c_hi < 0) | (s_lo > s_hi) | ((s_lo == s_hi) & (t <= 0.5)))
        pick_hi = (c_hi >= 0) & ~pick_lo
        small = so < 1e-6
        w0 = torch.where(small, torch.full_like(so, 1 - t), torch.sin((1 - t) * omega) / so.clamp_min(1e-12))
        w1 = torch.where(small, torch.full_like(so, t), torch.sin(t * omega) / so.clamp_min(1e-12))
        sl = w0 * q_lo + w1 * q_hi_al
        sl = sl / sl.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        src = torch.full(c_lo.shape, -1, dtype=torch.int8, device=dev)
        src[pick_lo] = 0
        src[pick_hi] = 1
        src[same] = 2
        q = torch.where((src == 0)[..., None], q_lo, q_hi)
        q = torch.where((src == 2)[..., None], sl, q)
        have = src >= 0
        if not bool(have.all()):
            q = _fill_from_neighbours(q, have)
        outs.append(q)
        srcs.append(src)
    return BlendResult(torch.stack(outs), torch.stack(srcs))
