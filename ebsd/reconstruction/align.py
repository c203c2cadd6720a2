"""Section alignment of serial-sectioned volumes (DREAM.3D's "Align Sections" filters), on torch.

Convention
    A shift ``(dy, dx)`` applied to a section moves its content by ``+dy`` rows and ``+dx`` columns:
    ``out[z, y, x] = in[z, y - dy, x - dx]`` (:func:`apply_shifts`). :func:`align_sections` returns the
    shifts that align the stack to section 0 (``shifts[0] = (0, 0)``), so for a stack whose section ``z`` was
    acquired with its content displaced by ``d_z`` (stage drift), ``shifts[z] = d_0 - d_z`` and
    ``apply_shifts(apply_shifts(vol, d), align_sections(...).shifts)`` puts every section back where it was
    (up to a shift of the whole stack). Voxels uncovered by a shift are marked not measured (and not valid).

Methods (``method=``)
    ``"misorientation"`` (DREAM.3D *Align Sections (Misorientation)*): for every candidate relative shift
        ``r`` with ``|r_y|, |r_x| <= max_shift``, the fraction of voxel pairs (section ``k-1`` at ``(y, x)``,
        section ``k`` shifted by ``r``), both good, that disagree: different phases, or a misorientation
        (with that phase's symmetry) above ``tolerance_deg``. The shift of least disagreement wins. Done as a
        batched search over all shifts at once: the symmetry equivalents ``S_i q`` of the sampled reference
        voxels are computed once, and each pair's test is ``max_i |<S_i q_a, q_b>| >= cos(tol / 2)``
        (one batched matrix product per chunk of shifts; same device as the volume). A coarse pass on
        ``samples[0]`` voxels scores every shift; a fine pass on ``samples[1]`` voxels re-scores the best
        candidates (and the 4 neighbours of the coarse best, for the sub-pixel fit). DREAM.3D instead walks
        downhill from shift 0, which can stop in a local minimum; the exhaustive search cannot.
    ``"grain"`` (feature based, in the spirit of DREAM.3D *Align Sections (Feature)*): each section's grain
        boundary network (in-plane neighbours misoriented by more than ``tolerance_deg``, or of another
        phase) is matched; the cost is ``1 - Dice`` of the two boundary maps over sampled voxels.
    ``"phase-correlation"``: FFT phase correlation (torch.fft) of a scalar map (``image="iq"``, ``"ci"``
        or ``"mask"``), unindexed voxels set to the section mean, with a Hann window; the cross-power
        spectrum is whitened by ``|R|^0.5`` (full whitening, ``|R|``, is swamped by speckle noise); the cost
        of a shift is minus the correlation there. Fast, but it sees only the scalar map, not orientations.

Reference (``reference=``)
    ``"previous"``: section ``k`` is aligned to section ``k - 1`` (to the last good section before it when
        ``k - 1`` was found damaged). ``"mean"``: the cost of a shift is averaged over the last ``window``
        (default 3) good aligned sections, which damps the random-walk error of a chain of pairwise fits.

Damaged sections and outliers
    Every pair ``(k-1, k)`` is first fitted on its own. A pair is *poor* when its best disagreement is far
    above the stack's typical value (``median + max(0.05, 6 MAD)``) or its cost curve is flat (contrast, the
    median cost minus the best, under a quarter of the median contrast), or it has too few good voxels.
    A section whose pairs to both neighbours are poor (or that has almost no good voxels) is *damaged*: it
    is never used as a reference, the next section is aligned straight to the last good one (searching
    ``max_shift`` per skipped section: the jump is *bridged*), and the damaged section itself is placed by a
    second fit at a looser tolerance (``loose_deg``, default ``3 x tolerance_deg``) when that fit is sharp,
    otherwise by linear interpolation of its good neighbours' shifts. ``result.outliers`` lists the damaged
    sections, ``result.bridged`` the sections aligned across a gap; one damaged section never drags the
    sections after it.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..errors import EBSDValueError
from ..volume import EBSDVolume

__all__ = ["align_sections", "apply_shifts", "AlignmentResult", "random_drift"]

METHODS = ("misorientation", "grain", "phase-correlation")


@dataclass
class AlignmentResult:
    """What :func:`align_sections` found.

    Attributes:
        volume: the aligned :class:`EBSDVolume` (voxels uncovered by a shift: not measured, not valid).
        shifts: ``(Z, 2)`` int64 numpy ``(dy, dx)`` applied to each section (``shifts[0] = (0, 0)``).
        scores: ``(Z,)`` float64: the cost at the chosen shift relative to the reference (misorientation:
            fraction of good voxel pairs that disagree; grain: 1 - Dice; phase correlation: minus the peak);
            ``nan`` for section 0 and for sections placed by interpolation.
        relative: ``(Z, 2)`` int64, the pairwise best shift of section ``k`` onto ``k - 1`` (first pass).
        contrast: ``(Z,)`` float64, median minus best cost of that pairwise fit (how sharp it was).
        subpixel: ``(Z, 2)`` float64 shifts refined by a parabola through the fine costs (``nan`` where
            the neighbours were not scored); reported, not applied.
        outliers: damaged sections (see the module docstring), sorted.
        bridged: sections aligned across one or more damaged sections, sorted.
        interpolated: damaged sections placed by interpolation (their loose fit was not sharp).
        method, reference, params: what was run.
    """

    volume: EBSDVolume
    shifts: np.ndarray
    scores: np.ndarray
    relative: np.ndarray
    contrast: np.ndarray
    subpixel: np.ndarray
    outliers: list[int] = field(default_factory=list)
    bridged: list[int] = field(default_factory=list)
    interpolated: list[int] = field(default_factory=list)
    method: str = "misorientation"
    reference: str = "previous"
    params: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        mx = int(np.abs(self.shifts).max()) if len(self.shifts) else 0
        return (f"aligned {len(self.shifts)} sections ({self.method}, reference {self.reference}): "
                f"largest shift {mx} px; damaged sections {self.outliers or 'none'}"
                + (f"; bridged {self.bridged}" if self.bridged else ""))


# ------------------------------------------------------------------------------------------- shifting
def _as_shift_array(shifts, Z: int) -> np.ndarray:
    s = np.asarray(shifts.cpu() if isinstance(shifts, torch.Tensor) else shifts)
    if s.shape != (Z, 2):
        raise EBSDValueError(f"shifts must have shape (Z, 2) = ({Z}, 2), got {s.shape}")
    if not np.all(np.isfinite(s)) or not np.allclose(s, np.round(s)):
        raise EBSDValueError("shifts must be whole numbers of voxels (dy, dx)")
    return np.round(s).astype(np.int64)


def apply_shifts(vol: EBSDVolume, shifts) -> EBSDVolume:
    """Shift every section of ``vol`` by whole voxels: ``out[z, y, x] = vol[z, y - dy_z, x - dx_z]``.

    Args:
        vol: the volume (not modified).
        shifts: ``(Z, 2)`` integers ``(dy, dx)`` per section (numpy, torch or a list).

    Returns:
        A new :class:`EBSDVolume` of the same shape; voxels with no source (uncovered) get the identity
        quaternion, phase 0, CI 0, IQ 0 and are marked not measured and not valid.
        ``metadata["alignment_shifts"]`` accumulates the applied shifts.
    """
    Z, Y, X = vol.shape
    s = _as_shift_array(shifts, Z)
    q = torch.zeros_like(vol.quaternions)
    q[..., 0] = 1.0
    ph = torch.zeros_like(vol.phases)
    ci = torch.zeros_like(vol.confidence)
    iq = torch.zeros_like(vol.image_quality)
    va = torch.zeros_like(vol.valid)
    me = torch.zeros_like(vol.measured)
    for z in range(Z):
        dy, dx = int(s[z, 0]), int(s[z, 1])
        if abs(dy) >= Y or abs(dx) >= X:
            continue
        dst = (slice(max(dy, 0), Y + min(dy, 0)), slice(max(dx, 0), X + min(dx, 0)))
        src = (slice(max(-dy, 0), Y + min(-dy, 0)), slice(max(-dx, 0), X + min(-dx, 0)))
        q[z][dst] = vol.quaternions[z][src]
        ph[z][dst] = vol.phases[z][src]
        ci[z][dst] = vol.confidence[z][src]
        iq[z][dst] = vol.image_quality[z][src]
        va[z][dst] = vol.valid[z][src]
        me[z][dst] = vol.measured[z][src]
    md = dict(vol.metadata)
    prev = np.asarray(md.get("alignment_shifts", np.zeros((Z, 2))), dtype=np.int64)
    if prev.shape != (Z, 2):
        prev = np.zeros((Z, 2), np.int64)
    md["alignment_shifts"] = (prev + s).tolist()
    return dataclasses.replace(vol, quaternions=q, phases=ph, confidence=ci, image_quality=iq, valid=va,
                               measured=me, metadata=md, phase_info=dict(vol.phase_info))


def random_drift(n_sections: int, max_shift: int = 8, step: float = 1.0, jumps: int = 1, jump_size: int = 4,
                 seed: int = 0) -> np.ndarray:
    """A random stage-drift walk: ``(n_sections, 2)`` int64 cumulative displacements, row 0 = ``(0, 0)``.

    Each section moves by a random step (each axis ``-1/0/+1`` with probability ``step / 2`` each way) from
    the previous one, plus ``jumps`` sudden jumps of ``jump_size`` voxels in a random direction; the walk
    is reflected to stay within ``|d| <= max_shift`` per axis (so a fit searching ``max_shift`` can find it).
    """
    rng = np.random.default_rng(seed)
    d = np.zeros((n_sections, 2), np.int64)
    jump_at = set(rng.choice(np.arange(1, n_sections), size=min(jumps, max(0, n_sections - 1)), replace=False).tolist()) \
        if n_sections > 1 and jumps > 0 else set()
    for z in range(1, n_sections):
        inc = np.where(rng.random(2) < step, rng.choice([-1, 1], 2), 0)
        if z in jump_at:
            inc = inc + rng.choice([-1, 1], 2) * np.array([jump_size, rng.integers(0, jump_size + 1)])[rng.permutation(2)]
        nxt = d[z - 1] + inc
        nxt = np.where(nxt > max_shift, 2 * max_shift - nxt, nxt)
        nxt = np.where(nxt < -max_shift, -2 * max_shift - nxt, nxt)
        d[z] = np.clip(nxt, -max_shift, max_shift)
    return d


# ---------------------------------------------------------------------------------------- cost engines
def _window(radius: int, device) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1, device=device)
    return torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2)


def _padded(t: torch.Tensor, m: int, fill) -> torch.Tensor:
    """``t`` (Y, X, ...) padded by ``m`` on both in-plane sides with ``fill``."""
    Y, X = t.shape[:2]
    out = torch.full((Y + 2 * m, X + 2 * m) + tuple(t.shape[2:]), fill, dtype=t.dtype, device=t.device)
    out[m:m + Y, m:m + X] = t
    return out


class _Engine:
    """Pairwise costs ``(T, S)`` of a moving section against a reference section for candidate shifts."""

    n_tol = 1

    def prepare(self, vol: EBSDVolume, good: torch.Tensor) -> None:
        self.vol, self.good = vol, good

    def good_count(self, z: int) -> int:
        return int(self.good[z].sum())


_SENTINEL = -(2**31) + 1  # phase code of a voxel that is not good (never equals a real phase id)


class _MisorientationEngine(_Engine):
    """Disagreement fraction at each tolerance of ``tols_deg`` (one row each).

    The moving section's orientations are reduced to the fundamental zone once (:attr:`qfz`). For a
    reference orientation ``a`` only the equivalents ``S_i a`` whose half-angle is within ``tol`` of the
    smallest one can be closer than ``tol`` to an orientation in the fundamental zone (triangle inequality),
    so the test ``max_i |<S_i a, b>| >= cos(tol / 2)`` runs over those few (at most 4 of the 24 cubic ones at
    5 degrees) instead of all: exact, and about 6x fewer products."""

    n_tol = 2

    def __init__(self, tols_deg, chunk: int = 1 << 23):
        self.tols = [float(t) for t in tols_deg]
        self.cos = [math.cos(math.radians(t) / 2) for t in self.tols]
        self.chunk = chunk

    def prepare(self, vol, good):
        from ..orientation import get_symmetry, reduce_to_fundamental_zone

        super().prepare(vol, good)
        self.ops = {int(k): get_symmetry(p.symmetry).operators_as(vol.quaternions) for k, p in vol.phase_info.items()}
        q = vol.quaternions.clone()
        for pid, p in vol.phase_info.items():
            for z in range(vol.shape[0]):
                m = (vol.phases[z] == int(pid)) & good[z]
                if bool(m.any()):
                    q[z][m] = reduce_to_fundamental_zone(q[z][m], p.symmetry)
        self.qfz = q
        self.code = torch.where(good, vol.phases, torch.full_like(vol.phases, _SENTINEL))

    def _equivalents(self, qa, pa, tol_half):
        """``(P, K, 4)``: the few equivalents of each reference orientation that matter (padded by repeats)."""
        P = qa.shape[0]
        nmax = max([o.shape[0] for o in self.ops.values()] + [1])
        E = qa[:, None, :].expand(P, nmax, 4).clone()
        for pid, ops in self.ops.items():
            m = pa == pid
            if bool(m.any()):
                a, b, c, d = ops.unbind(-1)  # left multiplication S q as one matrix product
                L = torch.stack([torch.stack([a, -b, -c, -d], -1), torch.stack([b, a, -d, c], -1),
                                 torch.stack([c, d, a, -b], -1), torch.stack([d, -c, b, a], -1)], -2)  # (N, 4, 4)
                n = ops.shape[0]
                E[m, :n] = (qa[m] @ L.permute(2, 0, 1).reshape(4, n * 4)).reshape(-1, n, 4)
        w = E[..., 0].abs().clamp(max=1.0)
        h = torch.acos(w)
        keep = h <= h.min(1, keepdim=True).values + tol_half + 1e-4
        K = max(1, int(keep.sum(1).max()))
        w = torch.where(keep, w, torch.full_like(w, -1.0))
        top = torch.topk(w, K, dim=1)
        Ek = torch.gather(E, 1, top.indices[..., None].expand(P, K, 4))
        first = Ek[:, :1].expand_as(Ek)
        return torch.where((top.values < 0)[..., None], first, Ek)  # unused slots repeat the best one

    def costs(self, ref, mov, shifts, samples, gen, rows=None):
        vol = self.vol
        X = vol.shape[2]
        rows = list(range(len(self.tols))) if rows is None else rows
        pos = torch.nonzero(self.good[ref].reshape(-1)).squeeze(1)
        if pos.numel() == 0 or self.good_count(mov) == 0:
            return None
        if pos.numel() > samples:
            pick = torch.randperm(pos.numel(), generator=gen)[:samples].to(pos.device)
            pos = pos[pick]
        P = pos.numel()
        y, x = pos // X, pos % X
        qa = self.qfz[ref].reshape(-1, 4)[pos]
        pa = self.code[ref].reshape(-1)[pos]
        E = self._equivalents(qa, pa, max(math.radians(self.tols[t]) / 2 for t in rows))
        K = E.shape[1]
        m = int(shifts.abs().max()) if shifts.numel() else 0
        Wp = X + 2 * m
        qb = _padded(self.qfz[mov], m, 0.0).reshape(-1, 4)
        pb = _padded(self.code[mov], m, _SENTINEL).reshape(-1)
        S = shifts.shape[0]
        out = torch.ones(len(self.tols), S, dtype=torch.float64, device=qa.device)
        cnt = torch.zeros(S, dtype=torch.float64, device=qa.device)
        step = max(1, self.chunk // max(1, P * K))
        Et = E.transpose(1, 2)  # (P, 4, K)
        for s0 in range(0, S, step):
            sh = shifts[s0:s0 + step]
            idx = (y[:, None] - sh[None, :, 0] + m) * Wp + (x[:, None] - sh[None, :, 1] + m)  # (P, Sc)
            code = pb[idx]
            both = code == pa[:, None]
            d = torch.bmm(qb[idx], Et).abs().amax(2)  # (P, Sc): max_i |<S_i q_a, q_b>|
            n = (code != _SENTINEL).sum(0).double()
            cnt[s0:s0 + step] = n
            for t in rows:
                agree = (both & (d >= self.cos[t])).sum(0).double()
                out[t, s0:s0 + step] = (n - agree) / n.clamp_min(1)
        out[:, cnt < max(16, 0.02 * P)] = 1.0  # too little overlap: no evidence
        return out[rows]


class _GrainEngine(_Engine):
    """1 - Dice of the in-plane grain-boundary maps."""

    def __init__(self, tolerance_deg: float):
        self.tol = tolerance_deg

    def prepare(self, vol, good):
        from ..orientation import misorientation_angle

        super().prepare(vol, good)
        Z, Y, X = vol.shape
        b = torch.zeros((Z, Y, X), dtype=torch.bool, device=vol.device)
        thr = math.radians(self.tol)
        for z in range(Z):
            q, ph, g = vol.quaternions[z], vol.phases[z], good[z]
            for sa, sb in (((slice(0, Y - 1), slice(None)), (slice(1, Y), slice(None))),
                           ((slice(None), slice(0, X - 1)), (slice(None), slice(1, X)))):
                diff = ph[sa] != ph[sb]
                same = ~diff & g[sa] & g[sb]
                ang = torch.zeros(diff.shape, device=vol.device)
                for pid, p in vol.phase_info.items():
                    mm = same & (ph[sa] == int(pid))
                    if bool(mm.any()):
                        ang[mm] = misorientation_angle(q[sa][mm], q[sb][mm], p.symmetry).float()
                e = (diff | (ang > thr)) & g[sa] & g[sb]
                b[z][sa] |= e
                b[z][sb] |= e
        self.bnd = b

    def costs(self, ref, mov, shifts, samples, gen, rows=None):
        X = self.vol.shape[2]
        pos = torch.nonzero(self.good[ref].reshape(-1)).squeeze(1)
        if pos.numel() == 0 or self.good_count(mov) == 0:
            return None
        if pos.numel() > samples:
            pos = pos[torch.randperm(pos.numel(), generator=gen)[:samples].to(pos.device)]
        y, x = pos // X, pos % X
        ba = self.bnd[ref].reshape(-1)[pos]
        m = int(shifts.abs().max()) if shifts.numel() else 0
        Wp = X + 2 * m
        bb = _padded(self.bnd[mov], m, False).reshape(-1)
        gb = _padded(self.good[mov], m, False).reshape(-1)
        idx = (y[None] - shifts[:, :1] + m) * Wp + (x[None] - shifts[:, 1:] + m)
        g = gb[idx]
        b2 = bb[idx] & g
        b1 = ba[None] & g
        inter = (b1 & b2).sum(1).double()
        tot = (b1.sum(1) + b2.sum(1)).double()
        out = 1.0 - 2.0 * inter / tot.clamp_min(1)
        out[g.sum(1) < max(16, 0.02 * pos.numel())] = 1.0
        return out[None]


class _PhaseCorrelationEngine(_Engine):
    """Minus the phase-correlation surface of a scalar map."""

    def __init__(self, image: str = "iq"):
        if image not in ("iq", "ci", "mask"):
            raise EBSDValueError(f"image must be 'iq', 'ci' or 'mask' for phase correlation, got {image!r}")
        self.image = image

    def prepare(self, vol, good):
        super().prepare(vol, good)
        self._cache: dict[int, torch.Tensor] = {}
        Y, X = vol.shape[1:]
        wy = torch.hann_window(Y, periodic=False, dtype=torch.float64, device=vol.device) if Y > 1 else \
            torch.ones(1, dtype=torch.float64, device=vol.device)
        wx = torch.hann_window(X, periodic=False, dtype=torch.float64, device=vol.device) if X > 1 else \
            torch.ones(1, dtype=torch.float64, device=vol.device)
        self.win = wy[:, None] * wx[None]

    def _spectrum(self, z):
        if z not in self._cache:
            g = self.good[z]
            src = {"iq": self.vol.image_quality, "ci": self.vol.confidence}.get(self.image)
            img = g.double() if src is None else src[z].double()
            mean = img[g].mean() if bool(g.any()) else img.mean()
            img = torch.where(g, img, mean) - mean
            sd = img.std()
            img = img / sd if float(sd) > 0 else img
            if len(self._cache) > 4:
                self._cache.pop(next(iter(self._cache)))
            self._cache[z] = torch.fft.rfft2(img * self.win)
        return self._cache[z]

    def costs(self, ref, mov, shifts, samples, gen, rows=None):
        if self.good_count(ref) == 0 or self.good_count(mov) == 0:
            return None
        Y, X = self.vol.shape[1:]
        A, B = self._spectrum(ref), self._spectrum(mov)
        R = A * B.conj()
        R = R / R.abs().clamp_min(1e-12).sqrt()  # partially whitened: robust to speckle, sharp peak
        c = torch.fft.irfft2(R, s=(Y, X))  # c[r] = sum_y a(y) b(y - r)
        return -c[shifts[:, 0] % Y, shifts[:, 1] % X][None].double()


# ---------------------------------------------------------------------------------------------- search
def _fit(engine, ref_list, mov, centre, radius, samples, gen, rows=None):
    """Best absolute shift of section ``mov`` given references ``[(z, shift_z), ...]``.

    Candidates are ``centre + window(radius)``; the cost of a candidate ``s`` is the mean over references of
    the pairwise cost at relative shift ``s - shift_z``. Coarse pass on ``samples[0]`` voxels over all
    candidates, fine pass on ``samples[1]`` voxels over the best ``n_fine`` and the coarse best's 4
    neighbours. Returns a dict (``None`` when no reference has data)."""
    dev = engine.vol.device
    cand = _window(radius, dev) + torch.as_tensor(centre, device=dev)

    def total(shifts, n):
        acc, k = None, 0
        for z, sz in ref_list:
            c = engine.costs(z, mov, shifts - torch.as_tensor(sz, device=dev), n, gen, rows)
            if c is None:
                continue
            acc = c if acc is None else acc + c
            k += 1
        return None if acc is None else acc / k

    coarse = total(cand, samples[0])
    if coarse is None:
        return None
    out = {}
    for t in range(coarse.shape[0]):
        c = coarse[t]
        order = torch.argsort(c)
        b = cand[order[0]]
        nb = b + torch.tensor([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]], device=dev)
        pick = torch.cat([cand[order[:8]], nb])
        pick = torch.unique(pick, dim=0)
        fine = total(pick, samples[1])[t]
        j = int(torch.argmin(fine))
        best = pick[j]
        sub = [float("nan"), float("nan")]
        for ax in (0, 1):
            e = torch.zeros(2, dtype=best.dtype, device=dev)
            e[ax] = 1
            ip = ((pick == best + e).all(1)).nonzero()
            im = ((pick == best - e).all(1)).nonzero()
            if ip.numel() and im.numel():
                cp, c0, cm = float(fine[ip[0, 0]]), float(fine[j]), float(fine[im[0, 0]])
                den = cp - 2 * c0 + cm
                off = 0.5 * (cm - cp) / den if den > 0 else 0.0
                sub[ax] = float(best[ax]) + float(np.clip(off, -0.5, 0.5))
        med = float(c.median())
        out[t] = {"shift": best.cpu().numpy().astype(np.int64), "score": float(fine[j]),
                  "contrast": med - float(c.min()), "subpixel": np.array(sub)}
    return out


def _poor(scores: np.ndarray, contrast: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pairs whose fit is far worse than the stack's typical fit (robust statistics over ``mask``)."""
    bad = ~mask.copy()
    ok = mask & np.isfinite(scores)
    if ok.sum() >= 3:
        med = np.median(scores[ok])
        mad = 1.4826 * np.median(np.abs(scores[ok] - med))
        bad |= mask & (scores > med + max(0.05, 6 * mad))
        cmed = np.median(contrast[ok])
        bad |= mask & (contrast < 0.25 * cmed)
    return bad


def align_sections(vol: EBSDVolume, method: str = "misorientation", reference: str = "previous",
                   max_shift: int = 10, tolerance_deg: float = 5.0, min_confidence: float | None = None,
                   samples: tuple[int, int] | None = None, window: int = 3, loose_deg: float | None = None,
                   image: str = "iq", max_gap: int = 3, seed: int = 0, progress: bool = True) -> AlignmentResult:
    """Align the sections of a serial-sectioned volume (see the module docstring for the methods).

    Args:
        vol: :class:`EBSDVolume` ``(Z, Y, X)``, z the sectioning axis; any device (the search runs there).
        method: ``"misorientation"`` (default, DREAM.3D's), ``"grain"`` or ``"phase-correlation"``.
        reference: ``"previous"`` or ``"mean"`` (the last ``window`` good sections).
        max_shift: largest shift searched between neighbouring sections, voxels per axis.
        tolerance_deg: misorientation above which two voxels disagree (DREAM.3D default 5 degrees).
        min_confidence: voxels below this CI are ignored (besides invalid / not measured ones); None: only
            the ``valid`` mask (use :func:`~ebsd.reconstruction.mark_bad` first for DREAM.3D's threshold).
        samples: ``(coarse, fine)`` voxels sampled per pair (default ``(4096, 65536)`` on CPU,
            ``(65536, 1 << 20)`` on CUDA; all good voxels when fewer).
        window: references averaged with ``reference="mean"``.
        loose_deg: tolerance of the second fit of damaged sections (default ``3 * tolerance_deg``).
        image: the scalar map of ``"phase-correlation"``: ``"iq"``, ``"ci"`` or ``"mask"``.
        max_gap: longest run of damaged sections bridged; longer runs are chained through (with a warning).
        seed: seed of the voxel sampling (the result is deterministic).
        progress: tqdm bars.

    Returns:
        :class:`AlignmentResult` (``.volume``, ``.shifts``, ``.scores``, ``.outliers``, ...).
    """
    if not isinstance(vol, EBSDVolume):
        raise EBSDValueError(f"align_sections needs an EBSDVolume, got {type(vol).__name__}")
    if method not in METHODS:
        raise EBSDValueError(f"unknown alignment method {method!r}; choose one of {', '.join(METHODS)}")
    if reference not in ("previous", "mean"):
        raise EBSDValueError(f"reference must be 'previous' or 'mean', got {reference!r}")
    max_shift = int(max_shift)
    if max_shift < 0:
        raise EBSDValueError(f"max_shift must be >= 0 voxels, got {max_shift}")
    if not (0 < tolerance_deg < 180):
        raise EBSDValueError(f"tolerance_deg must be in (0, 180) degrees, got {tolerance_deg}")
    Z, Y, X = vol.shape
    if max_shift >= min(Y, X):
        raise EBSDValueError(f"max_shift {max_shift} must be smaller than the section size {Y} x {X}")
    loose = float(loose_deg) if loose_deg is not None else min(3.0 * tolerance_deg, 60.0)
    dev = vol.device
    if samples is None:
        samples = (65536, 1 << 20) if dev.type == "cuda" else (4096, 65536)
    samples = (int(samples[0]), int(samples[1]))
    good = vol.valid & vol.measured
    if min_confidence is not None:
        good = good & (vol.confidence >= float(min_confidence))
    engine = {"misorientation": lambda: _MisorientationEngine((tolerance_deg, loose)),
              "grain": lambda: _GrainEngine(tolerance_deg),
              "phase-correlation": lambda: _PhaseCorrelationEngine(image)}[method]()
    engine.prepare(vol, good)
    gen = torch.Generator().manual_seed(int(seed))
    params = dict(method=method, reference=reference, max_shift=max_shift, tolerance_deg=tolerance_deg,
                  min_confidence=min_confidence, samples=list(samples), window=window, loose_deg=loose,
                  image=image, max_gap=max_gap, seed=seed)

    # ---- pass 1: every pair (k-1, k) on its own (tight tolerance)
    rel = np.zeros((Z, 2), np.int64)
    sc = np.full(Z, np.nan)
    con = np.full(Z, np.nan)
    sub_rel = np.full((Z, 2), np.nan)
    measured_pair = np.zeros(Z, bool)
    from tqdm.auto import tqdm

    for k in tqdm(range(1, Z), desc=f"align ({method})", unit="section", disable=not progress):
        r = _fit(engine, [(k - 1, (0, 0))], k, (0, 0), max_shift, samples, gen, rows=[0])
        if r is None:
            continue
        measured_pair[k] = True
        rel[k], sc[k], con[k], sub_rel[k] = r[0]["shift"], r[0]["score"], r[0]["contrast"], r[0]["subpixel"]

    # ---- damaged sections
    gcount = good.flatten(1).sum(1).cpu().numpy().astype(np.float64)
    pair_mask = measured_pair.copy()
    pair_mask[0] = False
    poor = _poor(sc, con, pair_mask)
    poor[0] = False
    damaged = set()
    gmed = np.median(gcount) if Z else 0
    for k in range(Z):
        if gcount[k] < 0.05 * max(gmed, 1):
            damaged.add(k)
        elif 0 < k < Z - 1 and poor[k] and poor[k + 1]:
            damaged.add(k)
        elif k == Z - 1 and k > 0 and poor[k]:
            damaged.add(k)
        elif k == 0 and Z > 2 and poor[1] and not poor[2]:
            damaged.add(0)
    single = [k for k in range(1, Z) if poor[k] and k not in damaged and (k - 1) not in damaged]
    if single:
        warnings.warn(f"align_sections: the fits of sections {single} onto the section before are poor (flat or "
                      "high-disagreement cost), but neither section looks damaged; their shifts are kept. Check "
                      "them (a jump beyond max_shift, or a real change of the microstructure)", stacklevel=2)

    # ---- pass 2: absolute shifts, damaged sections skipped as references
    shifts = np.zeros((Z, 2), np.int64)
    scores = np.full(Z, np.nan)
    subpix = np.full((Z, 2), np.nan)
    good_secs: list[int] = []
    bridged: list[int] = []
    for k in range(Z):
        if k in damaged:
            continue
        if not good_secs:  # the first good section (0, or the first after damaged ones) anchors the stack
            good_secs.append(k)
            subpix[k] = 0.0
            continue
        last = good_secs[-1]
        gap = k - last
        if reference == "previous" and gap == 1:
            shifts[k] = shifts[last] + rel[k]
            scores[k] = sc[k]
            subpix[k] = shifts[last] + sub_rel[k]
        else:
            # across a gap only the last good section is a reference (older ones have drifted further)
            refs = [last] if reference == "previous" or gap > 1 else good_secs[-int(window):]
            if gap > max_gap + 1:
                warnings.warn(f"align_sections: {gap - 1} damaged sections before section {k} (more than "
                              f"max_gap={max_gap}); searching {max_shift * gap} px across them", stacklevel=2)
            r = _fit(engine, [(z, tuple(shifts[z])) for z in refs], k, tuple(shifts[last]), max_shift * gap,
                     samples, gen, rows=[0])
            if r is None:
                shifts[k] = shifts[last]
            else:
                shifts[k], scores[k], subpix[k] = r[0]["shift"], r[0]["score"], r[0]["subpixel"]
            if gap > 1:
                bridged.append(k)
        good_secs.append(k)
    # damaged sections: a fit at the loose tolerance onto the last good section when it is sharp, else
    # linear interpolation between the good neighbours
    interpolated = []
    ok_pairs = np.array([k for k in range(1, Z) if pair_mask[k] and not poor[k]], dtype=np.int64)
    cmed = float(np.median(con[ok_pairs])) if len(ok_pairs) else float("nan")
    for k in sorted(damaged):
        lo = max([z for z in good_secs if z < k], default=None)
        hi = min([z for z in good_secs if z > k], default=None)
        if lo is not None and engine.n_tol > 1 and np.isfinite(cmed):
            r = _fit(engine, [(lo, tuple(shifts[lo]))], k, tuple(shifts[lo]), max_shift * (k - lo), samples, gen,
                     rows=[1])
            if r is not None and r[0]["contrast"] >= 0.25 * cmed:
                shifts[k], scores[k] = r[0]["shift"], r[0]["score"]
                continue
        if lo is not None and hi is not None:
            w = (k - lo) / (hi - lo)
            shifts[k] = np.round((1 - w) * shifts[lo] + w * shifts[hi]).astype(np.int64)
        elif lo is not None or hi is not None:
            shifts[k] = shifts[lo if lo is not None else hi]
        interpolated.append(k)
    off = shifts[0].copy()  # section 0 is the frame of reference
    shifts = shifts - off
    subpix = subpix - off
    aligned = apply_shifts(vol, shifts)
    aligned.metadata["alignment"] = {"method": method, "reference": reference, "shifts": shifts.tolist(),
                                     "damaged_sections": sorted(damaged), "bridged": bridged}
    return AlignmentResult(volume=aligned, shifts=shifts, scores=scores, relative=rel, contrast=con,
                           subpixel=subpix, outliers=sorted(damaged), bridged=bridged, interpolated=interpolated,
                           method=method, reference=reference, params=params)
