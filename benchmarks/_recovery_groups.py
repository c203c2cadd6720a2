"""Realistic-synthetic and real-map groups of ``benchmarks/slice_recovery.py``.

Protocol (as on real serial sections): every ``every``-th section is removed and recovered; each method's
result is compared with the *measured* section (noise, gradients and misindexing included, as on real data),
over voxels indexed in the measured section. Methods side by side in one process: copy the section below,
symmetry-aware slerp, our first-wave method (transformer + projection, grain means), the blend, the
network-blend, and ``auto`` (the self-check's choice), whose own estimate of its error is printed next to
the measured error. The per-voxel oracle (better of the two neighbours) shows the room left.

* realistic synthetic: :func:`ebsd.synthetic.synthetic_volume` + :func:`ebsd.recovery.realism.add_realism`
  (gradients, misindexing), sections ``z_ratio`` in-plane steps apart (2 by default), held-out seeds;
* real maps: each real 2-D map in ``../shared/data`` becomes a stack of 1-voxel-thick sections, its rows
  (and, separately, its columns) as sections: a stand-in for real 3-D with real gradients, noise and
  misindexing (in-plane context is 1-D here, so it is harder than a real stack).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ebsd import EBSDVolume
from ebsd.recovery import recover_missing_slices
from ebsd.recovery._common import misorientation_deg

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def realistic_volume(seed: int, shape=(36, 64, 64), grain_size=8.0, z_ratio=2.0, gradient_deg=0.4,
                     misindexed=0.03, noise_deg=0.5, symmetry="m-3m") -> EBSDVolume:
    from ebsd.recovery.realism import add_realism
    from ebsd.synthetic import synthetic_volume

    vol, truth = synthetic_volume(shape, grain_size, symmetry, seed, elongation=(1.0 / z_ratio, 1.0, 1.0),
                                  noise_deg=noise_deg, unindexed_fraction=0.01, twins=0.3 if symmetry == "m-3m" else 0.0,
                                  spacing=(z_ratio, 1.0, 1.0), return_truth=True)
    q, _, _ = add_realism(vol.quaternions, truth.clean_quaternions, vol.valid, symmetry, seed + 7,
                          gradient_deg=gradient_deg, misindexed=misindexed, z_ratio=z_ratio)
    vol.quaternions = q
    return vol


def real_map_stacks() -> dict[str, EBSDVolume]:
    """Real 2-D maps as stacks of 1-voxel-thick sections (rows, and columns), if the files are there."""
    import warnings

    from ebsd.io import load_volume

    out = {}
    for rel in ("ang/DC06_2uniax.ang", "ctf/twins.ctf"):
        p = SHARED / rel
        if not p.is_file():
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                v = load_volume(p)
        except Exception as exc:  # a reader this checkout lacks: say so, go on
            print(f"real-map group: {rel} skipped ({type(exc).__name__}: {exc})")
            continue
        for axis, name in ((0, "rows"), (1, "columns")):
            q, valid, ph, ci, iq = v.quaternions[0], v.valid[0], v.phases[0], v.confidence[0], v.image_quality[0]
            if axis == 1:
                q, valid, ph, ci, iq = q.transpose(0, 1), valid.T, ph.T, ci.T, iq.T
            out[f"{p.name} {name}"] = EBSDVolume(
                quaternions=q[:, None].contiguous(), valid=valid[:, None].contiguous(),
                phases=ph[:, None].contiguous(), confidence=ci[:, None].contiguous(),
                image_quality=iq[:, None].contiguous(), phase_info=v.phase_info,
                spacing=(v.spacing[1], v.spacing[1], v.spacing[2]))
    return out


def _errors(pred: torch.Tensor, vol: EBSDVolume, missing: list[int]) -> torch.Tensor:
    errs = []
    for i, z in enumerate(missing):
        m = vol.valid[z]
        errs.append(misorientation_deg(pred[i][m].cpu(), vol.quaternions[z][m].cpu(), vol.symmetry).reshape(-1))
    return torch.cat(errs)


def run_volume(vol: EBSDVolume, every: int = 6, model="default", device=None, adapt_seconds=None) -> dict:
    """Every method on ``vol`` with every ``every``-th section (from 3) removed; the measured sections are
    the truth. Returns ``{method: {mean_deg, median_deg, within5, time_s}}`` plus the self-check estimate."""
    Z = vol.shape[0]
    missing = list(range(3, Z - 1, every))
    rows: dict = {}
    hidden = vol.copy()
    for z in missing:  # the truth stays in ``vol``; nothing of it reaches the methods
        hidden.quaternions[z] = torch.tensor([1.0, 0, 0, 0])
        hidden.valid[z] = False
    lo = torch.stack([vol.quaternions[z - 1] for z in missing])
    hi = torch.stack([vol.quaternions[z + 1] for z in missing])
    e_lo, e_hi = _errors(lo, vol, missing), _errors(hi, vol, missing)
    rows["copy below"] = {"e": e_lo, "time_s": 0.0}
    rows["oracle (better neighbour per voxel)"] = {"e": torch.minimum(e_lo, e_hi), "time_s": 0.0}
    details = None
    for label, kw in (("slerp", dict(method="slerp")), ("transformer+projection (first wave)", dict(method="network")),
                      ("blend", dict(method="blend")), ("network-blend", dict(method="network-blend")),
                      ("auto (self-check)", dict(method="auto", adapt_seconds=adapt_seconds))):
        if label != "auto (self-check)" and "network" in kw.get("method", "") and len(vol.phase_info) > 1:
            continue
        t0 = time.perf_counter()
        out = recover_missing_slices(hidden, missing, model=model, device=device, progress=False,
                                     return_details=label.startswith("auto"), self_check=8 if label.startswith("auto") else 0, **kw)
        dt = time.perf_counter() - t0
        if label.startswith("auto"):
            out, details = out
        rows[label] = {"e": _errors(out.quaternions[missing], vol, missing), "time_s": dt}
    res = {}
    for k, r in rows.items():
        e = r["e"]
        res[k] = {"mean_deg": float(e.mean()), "median_deg": float(e.median()),
                  "within5": float((e <= 5).float().mean()), "time_s": round(r["time_s"], 2)}
    sc = details["self_check"] if details else None
    res["_self_check"] = None if sc is None else {
        "method": sc["method"], "estimate_mean_deg": sc["mean_deg"], "estimate_within5": sc["within5"],
        "n_sections": sc["n_sections"], "adaptation": sc.get("adaptation"),
        "table": {k: v["mean_deg"] for k, v in sc["table"].items()}}
    res["_spacing"] = details["spacing"] if details else None
    res["_missing"] = missing
    return res


def print_group(title: str, results: dict[str, dict]) -> None:
    from _harness import Table

    for name, res in results.items():
        t = Table(f"{title}: {name}", ["method", "mean deg", "median deg", "within 5 deg", "vs slerp", "time s"])
        base = res["slerp"]["mean_deg"]
        for k, r in res.items():
            if k.startswith("_"):
                continue
            t.add([k, f"{r['mean_deg']:.2f}", f"{r['median_deg']:.2f}", f"{100 * r['within5']:.0f}%",
                   f"{r['mean_deg'] / base:.2f}x" if base > 0 else "-", f"{r['time_s']:.1f}"])
        t.print()
        sc = res.get("_self_check")
        if sc:
            true = res["auto (self-check)"]["mean_deg"]
            ratio = sc["estimate_mean_deg"] / true if true > 0 else math.nan
            print(f"  self-check chose {sc['method']!r}: estimated {sc['estimate_mean_deg']:.2f} deg on "
                  f"{sc['n_sections']} hidden known sections, measured {true:.2f} deg (estimate/true {ratio:.2f}); "
                  f"spacing dz/dx given {res['_spacing']['given_ratio']:.2f}, estimated "
                  f"{res['_spacing']['estimated_ratio'] or float('nan'):.2f}")
            if sc.get("adaptation"):
                print(f"  adaptation: {sc['adaptation']}")
