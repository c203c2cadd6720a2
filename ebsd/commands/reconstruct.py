"""``ebsdtk reconstruct INPUT --out OUT.dream3d``: DREAM.3D's reconstruction chain in one command.

mark bad voxels (CI/IQ thresholds) -> align sections -> [recover missing slices] -> neighbour orientation
correlation -> segment grains -> fill bad data -> remove small grains -> grain statistics -> one .dream3d with
the grain ids (CellData/FeatureIds) and the grain arrays (CellFeatureData: AvgQuats, EquivalentDiameters,
NumElements, Phases, ...), which DREAM.3D and ParaView open.
"""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("reconstruct", help="align, clean and segment a serial-sectioned volume (DREAM.3D-style)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="volume to read (.ang folder, .dream3d, .h5)")
    p.add_argument("--out", required=True, help="output .dream3d")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    add_options(p)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def add_options(p) -> None:
    """The chain's options (shared with ``ebsdtk batch reconstruct``)."""
    g = p.add_argument_group("reconstruction")
    g.add_argument("--align", default="misorientation", choices=["misorientation", "grain", "phase-correlation", "none"],
                   help="section alignment method (default misorientation; none: skip)")
    g.add_argument("--reference", default="previous", choices=["previous", "mean"],
                   help="align each section to the previous one, or to the mean of the last 3 (default previous)")
    g.add_argument("--max-shift", type=int, default=10, help="largest shift between sections, voxels (default 10)")
    g.add_argument("--ci-min", type=float, default=0.1, help="voxels below this CI are bad (default 0.1; <0: off)")
    g.add_argument("--iq-min", type=float, default=None, help="voxels below this IQ are bad (default: off)")
    g.add_argument("--tolerance", type=float, default=5.0,
                   help="misorientation tolerance for alignment, clean-up and segmentation, degrees (default 5)")
    g.add_argument("--noc-level", type=int, default=2,
                   help="neighbour orientation correlation cleanup level 1..6 (default 2; 0: skip)")
    g.add_argument("--min-defect", type=int, default=1000,
                   help="fill bad regions smaller than this many voxels (default 1000; 0: skip)")
    g.add_argument("--min-grain", type=int, default=10, help="remove grains under this many voxels (default 10; 0: skip)")
    g.add_argument("--recover", default="none", choices=["auto", "none"],
                   help="auto: find bad/missing slices after alignment and recover them (default none)")


def steps_from_args(args) -> list:
    """The ``reconstruct`` steps for parsed arguments."""
    tol = float(args.tolerance)
    steps: list = []
    if args.ci_min is not None and args.ci_min >= 0 or args.iq_min is not None:
        steps.append(("mark_bad", {"ci_min": args.ci_min if args.ci_min is not None and args.ci_min >= 0 else None,
                                   "iq_min": args.iq_min}))
    if args.align != "none":
        steps.append(("align", {"method": args.align, "reference": args.reference, "max_shift": args.max_shift,
                                "tolerance_deg": tol}))
    if args.recover == "auto":
        steps.append(("recover", {"missing": "auto"}))
    if args.noc_level:
        steps.append(("neighbor_orientation_correlation", {"min_confidence": max(args.ci_min or 0.0, 0.0),
                                                           "tolerance_deg": tol, "level": args.noc_level}))
    steps.append(("segment", {"threshold_deg": tol}))
    if args.min_defect:
        steps.append(("fill_bad_data", {"min_defect_size": args.min_defect}))
    if args.min_grain:
        steps.append(("remove_small_grains", {"min_voxels": args.min_grain}))
    steps.append("statistics")
    return steps


def _run(args) -> int:
    from pathlib import Path

    from ..errors import EBSDFileExistsError, EBSDValueError
    from ..io import load_volume
    from ..reconstruction import reconstruct

    out = Path(args.out)
    if out.suffix.lower() != ".dream3d":
        raise EBSDValueError(f"--out {out}: the reconstruction is written as a .dream3d file")
    if out.exists() and not args.overwrite:  # fail before the work, not after
        raise EBSDFileExistsError(f"{out} exists; pass --overwrite to replace it")
    progress = not args.quiet
    vol = load_volume(args.input, progress=progress)
    print(f"read {args.input}: {vol}")
    res = reconstruct(vol, steps=steps_from_args(args), progress=progress, device=args.device)
    for e in res.log:
        brief = {k: v for k, v in e.items() if k not in ("options", "shifts")}
        print("  " + ", ".join(f"{k}={v}" for k, v in brief.items()))
    if res.alignment is not None:
        print(res.alignment.summary())
    res.save(out, overwrite=args.overwrite, progress=progress)
    s = res.statistics.summary() if res.statistics is not None else {}
    print(f"{res.n_grains} grains (mean ESD of interior grains {s.get('mean_esd_um', float('nan')):.3g} um) -> {out}")
    return 0
