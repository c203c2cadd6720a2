"""Reconstruction pipeline: section alignment accuracy and time, and the clean-up's effect.

Part 1 (alignment): a synthetic volume (default 64 x 512 x 512, m-3m, mean grain size 20 voxels, 1 deg noise,
2 % unindexed, 5 % low-CI speckle that stays marked valid, one damaged section) acquired with a random drift
walk (|shift| <= 8 voxels per axis, 2 jumps). Each method is timed once (the volume is big) and scored by the
fraction of the 64 section shifts found exactly, and whether the damaged section was reported.
  ours       ebsd.reconstruction.align_sections (misorientation, previous; also grain and phase-correlation)
  peer-numpy a plain per-pair brute-force search in numpy: every shift in [-8, 8]^2, the exact misorientation
             test with all 24 cubic operators on the same number of sampled voxels as our fine pass (65536),
             sections chained pairwise (DREAM.3D's criterion, no outlier handling)
  peer-skimage skimage.registration.phase_cross_correlation of the IQ maps, chained pairwise
Part 1b: the same volume with one garbage section that the file still marks valid (failed indexing: random
orientations, CI 0.05, noise IQ): exact shifts of the other sections, and whether the section was reported.
Part 2 (clean-up): a synthetic volume (default 32 x 128 x 128) with 5 % and 15 % misindexed voxels (random
orientation, low CI, marked valid). Before/after: fraction of voxels more than 5 deg from the true orientation
(voxels left invalid count as wrong) and the mean misorientation of the valid ones; chain = mark_bad(0.1),
neighbor_orientation_correlation(level 2), segment, fill_bad_data, remove_small_grains(10).

    python benchmarks/reconstruction.py --device cpu                     # full size (slow on 2 cores)
    python benchmarks/reconstruction.py --device cpu --shape 16 128 128 --clean-shape 16 64 64
    python benchmarks/reconstruction.py --device cuda                    # H100
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import Table, results_dir  # noqa: E402


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def numpy_bruteforce(vol, max_shift: int, samples: int = 65536, seed: int = 0) -> np.ndarray:
    """Pairwise exhaustive search in numpy (the peer): shifts (Z, 2) relative to section 0."""
    from ebsd.orientation import get_symmetry

    ops = get_symmetry(vol.symmetry).operators_as(torch.zeros(1, dtype=torch.float64)).numpy()  # (N, 4)
    q = vol.quaternions.cpu().numpy().astype(np.float64)
    good = (vol.valid & vol.measured).cpu().numpy()
    Z, Y, X = good.shape
    m = max_shift
    cth = math.cos(math.radians(5.0) / 2)
    rng = np.random.default_rng(seed)
    rel = np.zeros((Z, 2), np.int64)

    def qmul(a, b):
        a0, a1, a2, a3 = np.moveaxis(a, -1, 0)
        b0, b1, b2, b3 = np.moveaxis(b, -1, 0)
        return np.stack([a0 * b0 - a1 * b1 - a2 * b2 - a3 * b3, a0 * b1 + a1 * b0 + a2 * b3 - a3 * b2,
                         a0 * b2 - a1 * b3 + a2 * b0 + a3 * b1, a0 * b3 + a1 * b2 - a2 * b1 + a3 * b0], -1)

    for k in range(1, Z):
        ys, xs = np.nonzero(good[k - 1, m:Y - m, m:X - m])
        ys, xs = ys + m, xs + m
        if len(ys) == 0:
            continue
        if len(ys) > samples:
            pick = rng.choice(len(ys), samples, replace=False)
            ys, xs = ys[pick], xs[pick]
        E = qmul(ops[None], q[k - 1, ys, xs][:, None])  # (P, N, 4)
        best, best_s = np.inf, (0, 0)
        for dy in range(-m, m + 1):
            for dx in range(-m, m + 1):
                qb = q[k, ys - dy, xs - dx]
                gb = good[k, ys - dy, xs - dx]
                d = np.abs(np.einsum("pnc,pc->pn", E, qb)).max(1)
                n = gb.sum()
                cost = (gb & (d < cth)).sum() / max(n, 1)
                if cost < best:
                    best, best_s = cost, (dy, dx)
        rel[k] = best_s
    return np.cumsum(rel, 0)


def skimage_chain(vol, max_shift: int) -> np.ndarray:
    from skimage.registration import phase_cross_correlation

    iq = vol.image_quality.cpu().numpy().astype(np.float64)
    Z = iq.shape[0]
    rel = np.zeros((Z, 2), np.int64)
    for k in range(1, Z):
        s, _, _ = phase_cross_correlation(iq[k - 1], iq[k], normalization=None)
        # phase_cross_correlation returns the shift that registers the moving image onto the reference
        rel[k] = np.clip(np.round(s).astype(np.int64), -max_shift, max_shift)
    return np.cumsum(rel, 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--shape", type=int, nargs=3, default=[64, 512, 512])
    p.add_argument("--clean-shape", type=int, nargs=3, default=[32, 128, 128])
    p.add_argument("--grain-size", type=float, default=20.0)
    p.add_argument("--max-shift", type=int, default=8)
    p.add_argument("--skip-numpy", action="store_true", help="leave out the (slow) numpy brute-force peer")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tag", default=None, help="suffix of the JSON file (default: the device)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from ebsd.reconstruction import (align_sections, fill_bad_data, mark_bad, neighbor_orientation_correlation,
                                     random_drift, remove_small_grains)
    from ebsd.orientation import misorientation_angle, segment_grains
    from ebsd.synthetic import synthetic_volume

    dev = torch.device(args.device)
    Z, Y, X = args.shape
    m = args.max_shift
    d = random_drift(Z, max_shift=m, jumps=2, seed=5)
    damaged = Z // 3
    t0 = time.perf_counter()
    vol = synthetic_volume((Z, Y, X), mean_grain_size=args.grain_size, seed=1, noise_deg=1.0, unindexed_fraction=0.02,
                           speckle_fraction=0.05, damaged_slices=[damaged], drift=d)
    print(f"synthetic {Z}x{Y}x{X}: {time.perf_counter() - t0:.1f} s; drift max |d| = {np.abs(d).max()}")
    expected = d[0] - d
    vol_d = vol.to(dev)
    tab = Table(f"section alignment, {Z}x{Y}x{X}, drift walk |d|<={m}, 5% speckle, damaged section {damaged} "
                f"({args.device})", ["method", "exact shifts", "damaged reported", "time (s)"])
    runs = [("ours misorientation (previous)", dict(method="misorientation")),
            ("ours misorientation (mean of 3)", dict(method="misorientation", reference="mean")),
            ("ours grain boundaries", dict(method="grain")),
            ("ours phase correlation (IQ)", dict(method="phase-correlation"))]
    for name, kw in runs:
        _sync()
        t0 = time.perf_counter()
        r = align_sections(vol_d, max_shift=m, progress=False, **kw)
        _sync()
        dt = time.perf_counter() - t0
        tab.add([name, float((r.shifts == expected).all(1).mean()), damaged in r.outliers, dt])
        print(tab.rows[-1], flush=True)
    if not args.skip_numpy:
        t0 = time.perf_counter()
        s = numpy_bruteforce(vol, m)
        dt = time.perf_counter() - t0
        tab.add(["peer: numpy brute force (pairwise, 65536 px)", float((s == expected).all(1).mean()), False, dt])
        print(tab.rows[-1], flush=True)
    t0 = time.perf_counter()
    s = skimage_chain(vol, m)
    dt = time.perf_counter() - t0
    tab.add(["peer: skimage phase_cross_correlation (IQ)", float((s == expected).all(1).mean()), False, dt])
    tab.print()
    del vol_d

    # ---- part 1b: a garbage section the file still marks valid (failed indexing: random orientations,
    # CI 0.05): a pairwise chain is dragged by it; ours must find it, bridge it and keep the rest exact
    g = min(Z - 2, 2 * Z // 3)
    bad = vol.copy()
    rng = np.random.default_rng(9)
    from ebsd.synthetic import random_quaternions

    bad.quaternions[g] = torch.from_numpy(random_quaternions(Y * X, rng).reshape(Y, X, 4)).float()
    bad.confidence[g] = 0.05
    bad.image_quality[g] = torch.from_numpy(rng.uniform(0, 3000, (Y, X))).float()
    others = np.array([z for z in range(Z) if z != g])
    tab1b = Table(f"garbage section {g} (random orientations, still marked valid), else as above ({args.device})",
                  ["method", "exact shifts (other sections)", "garbage section reported", "time (s)"])
    bad_d = bad.to(dev)
    _sync()
    t0 = time.perf_counter()
    r = align_sections(bad_d, max_shift=m, progress=False)
    _sync()
    tab1b.add(["ours misorientation (previous)", float((r.shifts[others] == expected[others]).all(1).mean()),
               g in r.outliers, time.perf_counter() - t0])
    del bad_d
    if not args.skip_numpy:
        t0 = time.perf_counter()
        s = numpy_bruteforce(bad, m)
        tab1b.add(["peer: numpy brute force", float((s[others] == expected[others]).all(1).mean()), False,
                   time.perf_counter() - t0])
    t0 = time.perf_counter()
    s = skimage_chain(bad, m)
    tab1b.add(["peer: skimage phase_cross_correlation (IQ)", float((s[others] == expected[others]).all(1).mean()),
               False, time.perf_counter() - t0])
    tab1b.print()

    # ---- clean-up effect
    Zc, Yc, Xc = args.clean_shape
    tab2 = Table(f"clean-up effect, {Zc}x{Yc}x{Xc}, grain size 12 ({args.device})",
                 ["misindexed", "stage", "voxels > 5 deg from truth", "mean misorientation of valid (deg)", "time (s)"])
    for frac in (0.05, 0.15):
        v, tr = synthetic_volume((Zc, Yc, Xc), mean_grain_size=12, seed=3, noise_deg=0.5, speckle_fraction=frac,
                                 return_truth=True)
        v = v.to(dev)
        clean = tr.clean_quaternions.to(dev)

        def score(vv):
            ang = torch.rad2deg(misorientation_angle(vv.quaternions, clean, "m-3m"))
            wrong = (ang > 5) | ~vv.valid
            return float(wrong.float().mean()), float(ang[vv.valid].mean())

        tab2.add([frac, "raw (file's valid mask)", *score(v), 0.0])
        _sync()
        t0 = time.perf_counter()
        v1 = mark_bad(v, ci_min=0.1)
        v2 = neighbor_orientation_correlation(v1, min_confidence=0.1, tolerance_deg=5, level=2)
        lab, _ = segment_grains(v2, threshold_deg=5)
        v3, lab = fill_bad_data(v2, lab, min_defect_size=1000)
        v4, lab, n = remove_small_grains(v3, lab, min_voxels=10)
        _sync()
        dt = time.perf_counter() - t0
        tab2.add([frac, "mark_bad only", *score(v1), 0.0])
        tab2.add([frac, "+ NOC", *score(v2), 0.0])
        tab2.add([frac, "+ segment, fill, min size (full chain)", *score(v4), dt])
    tab2.print()
    tag = args.tag or args.device
    out = results_dir() / f"reconstruction_{tag}.json"
    tab.write_json(out, extra={"cleanup": tab2.as_records(), "cleanup_title": tab2.title,
                               "garbage_section": tab1b.as_records(), "garbage_title": tab1b.title,
                               "drift": d.tolist(), "damaged": damaged})
    print(f"\n{tab.markdown()}\n\n{tab1b.markdown()}\n\n{tab2.markdown()}\n\nJSON: {out}")


if __name__ == "__main__":
    main()
