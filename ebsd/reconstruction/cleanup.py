"""Clean-up filters of a 3-D EBSD reconstruction, each after a DREAM.3D filter, multi-phase aware.

All take an :class:`~ebsd.volume.EBSDVolume` and return a new one (the input is never modified); those that
work on grains also take and return the grain labels (``(Z, Y, X)`` int64, ``-1`` = no grain, as
:func:`~ebsd.orientation.segment_grains` gives them). Neighbours are the 6 face neighbours; voxels that were
not measured (``vol.measured`` False, e.g. uncovered by alignment) are never filled and never copied from.
"""
from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import torch

from ..errors import EBSDValueError
from ..volume import EBSDVolume

__all__ = ["mark_bad", "neighbor_orientation_correlation", "fill_bad_data", "remove_small_grains"]

_OFFSETS = ((-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1))


def _check(vol):
    if not isinstance(vol, EBSDVolume):
        raise EBSDValueError(f"expected an EBSDVolume, got {type(vol).__name__}")


def _check_labels(vol, labels) -> torch.Tensor:
    was_np = isinstance(labels, np.ndarray)
    lab = torch.from_numpy(np.ascontiguousarray(labels)) if was_np else labels
    if not isinstance(lab, torch.Tensor) or tuple(lab.shape) != tuple(vol.shape):
        raise EBSDValueError(f"labels must be a (Z, Y, X) = {vol.shape} integer array, got "
                             f"{getattr(lab, 'shape', type(lab).__name__)}")
    return lab.to(device=vol.device, dtype=torch.int64)


def _neighbour_index(shape, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 6)`` flat indices of the face neighbours of voxels ``flat`` and an in-bounds mask."""
    Z, Y, X = shape
    z, y, x = flat // (Y * X), (flat // X) % Y, flat % X
    nb, ok = [], []
    for dz, dy, dx in _OFFSETS:
        zz, yy, xx = z + dz, y + dy, x + dx
        inb = (zz >= 0) & (zz < Z) & (yy >= 0) & (yy < Y) & (xx >= 0) & (xx < X)
        nb.append(torch.where(inb, (zz * Y + yy) * X + xx, torch.zeros_like(flat)))
        ok.append(inb)
    return torch.stack(nb, 1), torch.stack(ok, 1)


def _copy_voxels(vol: EBSDVolume, dst: torch.Tensor, src: torch.Tensor) -> EBSDVolume:
    """In place: voxels ``dst`` (flat) of ``vol`` take every attribute of voxels ``src`` (never among ``dst``)."""
    for name in ("phases", "confidence", "image_quality", "valid", "measured"):
        t = getattr(vol, name).reshape(-1)
        t[dst] = t[src]
    q = vol.quaternions.reshape(-1, 4)
    q[dst] = q[src]
    return vol


def _pair_agree(qa, qb, pa, pb, phase_info, tol_rad) -> torch.Tensor:
    """Same phase and misorientation below ``tol_rad`` (any leading shape)."""
    from ..orientation import misorientation_angle

    out = torch.zeros(pa.shape, dtype=torch.bool, device=qa.device)
    for pid, ph in phase_info.items():
        m = (pa == int(pid)) & (pb == int(pid))
        if bool(m.any()):
            out[m] = misorientation_angle(qa[m], qb[m], ph.symmetry) < tol_rad
    return out


# -------------------------------------------------------------------------------------------- mark_bad
def mark_bad(vol: EBSDVolume, ci_min: float | None = 0.1, iq_min: float | None = None,
             phases: list[int] | None = None) -> EBSDVolume:
    """Mark voxels below a confidence-index or image-quality threshold as not valid.

    DREAM.3D: *Threshold Objects* (``Confidence Index > ci_min``, ``Image Quality > iq_min``) creating the
    ``Mask`` (good voxels) that later filters honour. Here the mask is ``vol.valid``: a voxel stays valid when
    it was valid and ``CI >= ci_min`` and ``IQ >= iq_min`` (each test only when given) and, with ``phases``,
    its phase is one of them.

    Args:
        vol: the volume.
        ci_min: confidence-index threshold (0..1), or None.
        iq_min: image-quality threshold (file units), or None.
        phases: phase ids to keep (others become not valid), or None for all.

    Returns:
        A new volume; ``metadata["mark_bad"]`` records the thresholds and the number of voxels newly marked.
    """
    _check(vol)
    keep = vol.valid.clone()
    if ci_min is not None:
        keep &= vol.confidence >= float(ci_min)
    if iq_min is not None:
        keep &= vol.image_quality >= float(iq_min)
    if phases is not None:
        pm = torch.zeros_like(keep)
        for p in phases:
            pm |= vol.phases == int(p)
        keep &= pm
    new = vol.copy()
    n_new = int((vol.valid & ~keep).sum())
    new.valid = keep
    new.metadata["mark_bad"] = {"ci_min": ci_min, "iq_min": iq_min, "phases": phases, "newly_invalid": n_new}
    return new


# -------------------------------------------------------------------- neighbor orientation correlation
def neighbor_orientation_correlation(vol: EBSDVolume, min_confidence: float = 0.1, tolerance_deg: float = 5.0,
                                     level: int = 2, progress: bool = False) -> EBSDVolume:
    """Replace low-confidence voxels by their most similar good neighbour.

    DREAM.3D: *Neighbor Orientation Correlation*. A voxel is *bad* when it is measured but not valid or its
    CI is below ``min_confidence``; its *good* neighbours are the face neighbours that are valid with
    ``CI >= min_confidence``. For ``L = 6, 5, ..., level``: every bad voxel with at least ``L`` good
    neighbours that disagree with it (another phase, or misoriented by more than ``tolerance_deg``) takes
    all attributes (orientation, phase, CI, IQ, valid) of the good neighbour that agrees with the most other
    good neighbours, provided at least ``L - 1`` others agree with it (so ``L`` neighbours share the
    orientation it brings). Ties go to the first neighbour in the order -z, +z, -y, +y, -x, +x. Each level
    is applied to all voxels at once from the state of the previous level.

    Args:
        vol: the volume.
        min_confidence: CI below which a voxel is a candidate (DREAM.3D "Minimum Confidence Index").
        tolerance_deg: misorientation tolerance (DREAM.3D "Misorientation Tolerance").
        level: the lowest number of agreeing neighbours accepted (DREAM.3D "Cleanup Level", 1..6).
        progress: tqdm bar over the levels.

    Returns:
        A new volume; ``metadata["neighbor_orientation_correlation"]["replaced"]`` counts replaced voxels.
    """
    _check(vol)
    if not 1 <= int(level) <= 6:
        raise EBSDValueError(f"level must be 1..6 (agreeing neighbours required), got {level}")
    tol = math.radians(tolerance_deg)
    cur = vol.copy()
    replaced = 0
    from tqdm.auto import tqdm

    for L in tqdm(range(6, int(level) - 1, -1), desc="neighbour orientation correlation", disable=not progress):
        good = cur.valid & (cur.confidence >= min_confidence)
        bad = cur.measured & ~good
        flat = torch.nonzero(bad.reshape(-1)).squeeze(1)
        if flat.numel() == 0:
            break
        nb, inb = _neighbour_index(cur.shape, flat)
        g = good.reshape(-1)[nb] & inb  # (N, 6)
        q = cur.quaternions.reshape(-1, 4)
        ph = cur.phases.reshape(-1)
        qv, pv = q[flat][:, None].expand(-1, 6, -1), ph[flat][:, None].expand(-1, 6)
        qn, pn = q[nb], ph[nb]
        differ = g & ~_pair_agree(qv, qn, pv, pn, cur.phase_info, tol)
        cand = differ.sum(1) >= L
        if not bool(cand.any()):
            continue
        f2, nb2, g2, qn2, pn2 = flat[cand], nb[cand], g[cand], qn[cand], pn[cand]
        sim = torch.zeros(g2.shape, dtype=torch.int64, device=g2.device)
        for j in range(6):
            for k in range(j + 1, 6):
                a = g2[:, j] & g2[:, k] & _pair_agree(qn2[:, j], qn2[:, k], pn2[:, j], pn2[:, k], cur.phase_info, tol)
                sim[:, j] += a
                sim[:, k] += a
        sim = torch.where(g2, sim, torch.full_like(sim, -1))
        best = sim.argmax(1)  # first maximum
        bcount = sim.gather(1, best[:, None]).squeeze(1)
        use = bcount >= L - 1
        if not bool(use.any()):
            continue
        src = nb2.gather(1, best[:, None]).squeeze(1)
        cur = _copy_voxels(cur, f2[use], src[use])
        replaced += int(use.sum())
    cur.metadata["neighbor_orientation_correlation"] = {
        "min_confidence": min_confidence, "tolerance_deg": tolerance_deg, "level": int(level), "replaced": replaced}
    return cur


# ------------------------------------------------------------------------------------------ fill bad data
def _fill(vol: EBSDVolume, labels: torch.Tensor, fill_mask: torch.Tensor, max_iter: int = 10_000):
    """Grow labelled voxels into ``fill_mask`` voxels, one layer per round: each takes the label that is most
    common among its labelled face neighbours (ties: the smallest label) and every attribute of the first
    such neighbour (order -z, +z, -y, +y, -x, +x). Returns ``(vol, labels, n_filled)``."""
    lab = labels.clone()
    cur = vol.copy()
    todo = fill_mask.clone()
    n_filled = 0
    for _ in range(max_iter):
        flat = torch.nonzero(todo.reshape(-1)).squeeze(1)
        if flat.numel() == 0:
            break
        nb, inb = _neighbour_index(vol.shape, flat)
        ln = torch.where(inb, lab.reshape(-1)[nb], torch.full_like(nb, -1))
        ln = torch.where(todo.reshape(-1)[nb] & inb, torch.full_like(ln, -1), ln)  # not from unfilled voxels
        has = ln >= 0
        ready = has.any(1)
        if not bool(ready.any()):
            break
        flat, nb, ln, has = flat[ready], nb[ready], ln[ready], has[ready]
        cnt = ((ln[:, :, None] == ln[:, None, :]) & has[:, :, None] & has[:, None, :]).sum(2)  # (N, 6)
        big = torch.iinfo(torch.int64).max
        key = torch.where(has, -cnt * (1 << 40) + ln, torch.full_like(ln, big))  # most common, then smallest id
        j = key.argmin(1)
        newlab = ln.gather(1, j[:, None]).squeeze(1)
        src = nb.gather(1, j[:, None]).squeeze(1)
        cur = _copy_voxels(cur, flat, src)
        lab.reshape(-1)[flat] = newlab
        todo.reshape(-1)[flat] = False
        n_filled += flat.numel()
    return cur, lab, n_filled


def fill_bad_data(vol: EBSDVolume, labels, min_defect_size: int = 1000, progress: bool = False):
    """Fill small regions of voxels without a grain by growing the neighbouring grains into them.

    DREAM.3D: *Fill Bad Data*. Voxels that are measured but carry no grain (``labels < 0``) form
    face-connected regions; regions of fewer than ``min_defect_size`` voxels are filled layer by layer from
    their border: each voxel takes the grain most common among its labelled face neighbours (ties: the
    smallest grain id) and copies every attribute of such a neighbour (so filled voxels become valid).
    Larger regions (pores, a lost section) are left as they are. Not-measured voxels are never filled.

    Args:
        vol: the volume.
        labels: ``(Z, Y, X)`` grain labels (``-1`` = none), torch or numpy.
        min_defect_size: regions of at least this many voxels are kept (DREAM.3D "Minimum Allowed Defect
            Size").
        progress: unused (one pass over the layers; kept for a uniform signature).

    Returns:
        ``(new_volume, new_labels)``, labels of the same kind (numpy/torch) as given.
    """
    from scipy import ndimage

    _check(vol)
    was_np = isinstance(labels, np.ndarray)
    lab = _check_labels(vol, labels)
    holes = (lab < 0) & vol.measured
    comp, n = ndimage.label(holes.cpu().numpy(), structure=ndimage.generate_binary_structure(3, 1))
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    small = (sizes < int(min_defect_size))
    small[0] = False
    fill = torch.from_numpy(small[comp]).to(vol.device)
    new, lab2, n_filled = _fill(vol, lab, fill)
    new.metadata["fill_bad_data"] = {"min_defect_size": int(min_defect_size), "filled": int(n_filled),
                                     "regions_filled": int(small.sum()), "regions_kept": int(n - small.sum())}
    return new, (lab2.cpu().numpy() if was_np else lab2)


# ------------------------------------------------------------------------------------ remove small grains
def _face_pairs(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique unordered pairs ``(a, b)``, ``a < b``, of different labels (both >= 0) sharing faces, and the
    number of faces they share."""
    pairs = []
    for ax in range(3):
        if lab.shape[ax] < 2:
            continue
        a = np.moveaxis(lab, ax, 0)
        u, v = a[:-1].ravel(), a[1:].ravel()
        m = (u != v) & (u >= 0) & (v >= 0)
        pairs.append(np.stack([np.minimum(u[m], v[m]), np.maximum(u[m], v[m])], 1))
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    p = np.concatenate(pairs)
    if len(p) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    key, cnt = np.unique(p, axis=0, return_counts=True)
    return key[:, 0], key[:, 1], cnt


def _relabel_consecutive(lab: np.ndarray) -> tuple[np.ndarray, int]:
    ids = np.unique(lab[lab >= 0])
    remap = np.full(int(ids.max()) + 1 if len(ids) else 1, -1, np.int64)
    # raster order of first voxel, as segment_grains numbers them
    flat = lab.ravel()
    first = np.full(len(remap), np.iinfo(np.int64).max)
    pos = np.nonzero(flat >= 0)[0]
    np.minimum.at(first, flat[pos], pos)
    order = ids[np.argsort(first[ids], kind="stable")]
    remap[order] = np.arange(len(order))
    out = np.where(lab >= 0, remap[np.maximum(lab, 0)], -1)
    return out, len(order)


def remove_small_grains(vol: EBSDVolume, labels, min_voxels: int, mode: str = "merge", phases=None,
                        progress: bool = False):
    """Remove grains of fewer than ``min_voxels`` voxels.

    ``mode="merge"`` (default): each small grain, smallest first, joins the neighbouring grain it shares the
    most faces with (among neighbours of its own phase when it has any; ties: the smaller grain id); its
    voxels take that grain's label, phase and mean orientation (so the result re-segments to the same
    grains). Merged sizes are updated as it goes, so a cluster of small grains ends in one large neighbour.
    A small grain with no neighbouring grain is left as it is.

    ``mode="coarsen"``: DREAM.3D's *Minimum Size* filter: the small grains' voxels lose their grain and the
    neighbouring grains grow into them layer by layer (each voxel takes the label most common among its
    face neighbours and copies that neighbour's attributes), as :func:`fill_bad_data` does.

    Args:
        vol: the volume.
        labels: ``(Z, Y, X)`` grain labels (``-1`` = none).
        min_voxels: grains with fewer voxels are removed (DREAM.3D "Minimum Allowed Feature Size").
        mode: ``"merge"`` or ``"coarsen"``.
        phases: only grains of these phase ids are removed (DREAM.3D "Apply to Single Phase Only"); None: all.
        progress: tqdm bar over the merges.

    Returns:
        ``(new_volume, new_labels, n_grains)``; labels renumbered ``0..n-1`` in raster order of first voxel.
    """
    from ..orientation import mean_orientation  # noqa: F401 (used through grain_mean_orientations)
    from .stats import grain_mean_orientations

    _check(vol)
    if mode not in ("merge", "coarsen"):
        raise EBSDValueError(f"mode must be 'merge' or 'coarsen', got {mode!r}")
    min_voxels = int(min_voxels)
    was_np = isinstance(labels, np.ndarray)
    lab_t = _check_labels(vol, labels)
    lab = lab_t.cpu().numpy().copy()
    G = int(lab.max()) + 1 if lab.size and lab.max() >= 0 else 0
    sizes = np.bincount(lab[lab >= 0], minlength=G).astype(np.int64)
    ph_np = vol.phases.cpu().numpy()
    gphase = np.full(G, -1, np.int64)
    if G:
        sel = lab >= 0
        gphase[lab[sel]] = ph_np[sel]
    removable = sizes < min_voxels
    removable &= sizes > 0
    if phases is not None:
        removable &= np.isin(gphase, np.asarray(list(phases)))
    if mode == "coarsen":
        kill = torch.from_numpy(removable[np.maximum(lab, 0)] & (lab >= 0)).to(vol.device)
        lab2 = lab_t.clone()
        lab2[kill] = -1
        new, lab3, _ = _fill(vol, lab2, kill)
        out, n = _relabel_consecutive(lab3.cpu().numpy())
        new.metadata["remove_small_grains"] = {"min_voxels": min_voxels, "mode": mode,
                                               "removed": int(removable.sum())}
        return new, (out if was_np else torch.from_numpy(out).to(vol.device)), n

    a, b, cnt = _face_pairs(lab)
    adj: list[dict[int, int]] = [dict() for _ in range(G)]
    for u, v, c in zip(a.tolist(), b.tolist(), cnt.tolist()):
        adj[u][v] = c
        adj[v][u] = c
    parent = np.arange(G)
    order = sorted(np.nonzero(removable)[0].tolist(), key=lambda g: (sizes[g], g))
    import heapq

    heap = [(int(sizes[g]), g) for g in order]
    heapq.heapify(heap)
    merged = 0
    from tqdm.auto import tqdm

    bar = tqdm(total=len(heap), desc="remove small grains", disable=not progress)
    while heap:
        s, g = heapq.heappop(heap)
        bar.update(1)
        if parent[g] != g or sizes[g] != s or sizes[g] >= min_voxels or not adj[g]:
            if parent[g] == g and sizes[g] != s and sizes[g] < min_voxels and adj[g]:
                heapq.heappush(heap, (int(sizes[g]), g))  # grew by an earlier merge: still small, retry
                bar.total += 1
            continue
        same = {t: c for t, c in adj[g].items() if gphase[t] == gphase[g]}
        pool = same or adj[g]
        t = min(pool, key=lambda k: (-pool[k], k))
        parent[g] = t
        sizes[t] += sizes[g]
        sizes[g] = 0
        for nbr, c in adj[g].items():
            if nbr == t:
                continue
            adj[nbr].pop(g, None)
            adj[nbr][t] = adj[nbr].get(t, 0) + c
            adj[t][nbr] = adj[t].get(nbr, 0) + c
        adj[t].pop(g, None)
        adj[g] = {}
        merged += 1
        if removable[t] and sizes[t] < min_voxels:
            heapq.heappush(heap, (int(sizes[t]), t))
            bar.total += 1
    bar.close()
    # resolve chains
    root = parent.copy()
    for _ in range(64):
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    moved = (lab >= 0) & (root[np.maximum(lab, 0)] != lab)
    lab_new = np.where(lab >= 0, root[np.maximum(lab, 0)], -1)
    new = vol.copy()
    if moved.any():
        lt = torch.from_numpy(lab_new).to(vol.device)
        gq = grain_mean_orientations(vol, torch.where(torch.from_numpy(moved).to(vol.device), -1, lt), G)
        mv = torch.from_numpy(moved).to(vol.device)
        tgt = lt[mv]
        new.quaternions[mv] = gq[tgt].to(new.quaternions.dtype)
        new.phases[mv] = torch.from_numpy(gphase).to(vol.device)[tgt].to(new.phases.dtype)
    out, n = _relabel_consecutive(lab_new)
    new.metadata["remove_small_grains"] = {"min_voxels": min_voxels, "mode": mode, "removed": merged}
    return new, (out if was_np else torch.from_numpy(out).to(vol.device)), n
