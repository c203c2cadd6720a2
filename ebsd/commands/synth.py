"""``ebsdtk synth OUT``: write a seeded synthetic EBSD volume (:func:`ebsd.synthetic.synthetic_volume`).

``OUT.dream3d`` writes a DREAM.3D file; any other path writes a folder of ``.ang`` slices (as
:func:`ebsd.io.save_volume`). Exit code 0 on success, 2 with a one-line message on a bad argument or an
existing output without ``--overwrite``.
"""
from __future__ import annotations

import argparse


def _ints(text: str, n: int | None, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip() != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if n is not None and len(vals) not in ((n,) if n != 3 else (2, 3)):
        raise argparse.ArgumentTypeError(f"{what}: expected {n} comma-separated integers, got {text!r}")
    return vals


def _floats(text: str, n: int, what: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: expected {n} comma-separated numbers, got {text!r}") from None
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n:
        raise argparse.ArgumentTypeError(f"{what}: expected {n} comma-separated numbers, got {text!r}")
    return vals


def register(sub) -> None:
    p = sub.add_parser(
        "synth", help="write a synthetic EBSD volume (grains, twins, texture, acquisition noise)",
        description="Generate a seeded synthetic 3-D EBSD volume (power-diagram grains with a lognormal size "
        "distribution, optional fcc annealing twins, orientation noise, unindexed points and missing slices) "
        "and write it to OUT: a .dream3d file, or any other path as a folder of .ang slices. "
        "The same arguments and seed always give the same volume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", metavar="OUT", help="output path (.dream3d, or a folder for .ang slices)")
    p.add_argument("--shape", type=lambda s: _ints(s, 3, "--shape"), default=(64, 64, 64),
                   help="Z,Y,X voxels (Y,X for one section)")
    p.add_argument("--grain-size", type=float, default=12.0, help="mean equivalent-sphere diameter, voxels")
    p.add_argument("--size-spread", type=float, default=0.3, help="std of log(grain diameter), 0.15..0.57")
    p.add_argument("--elongation", type=lambda s: _floats(s, 3, "--elongation"), default=(1.0, 1.0, 1.0),
                   help="grain stretch along z,y,x")
    p.add_argument("--symmetry", default="m-3m", help="Laue class: m-3m, 6/mmm, 4/mmm, -3m, mmm, ...")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--twins", action="store_true", help="fcc annealing twins (Sigma-3 lamellae, m-3m only)")
    p.add_argument("--texture", default=None,
                   help="cube:SPREAD, goss:SPREAD or fiber:H,K,L:SPREAD (degrees); default random")
    p.add_argument("--noise-deg", type=float, default=0.0, help="mean orientation noise per voxel, degrees")
    p.add_argument("--unindexed", type=float, default=0.0, help="fraction of unindexed (low-CI) voxels")
    p.add_argument("--missing", type=lambda s: _ints(s, None, "--missing"), default=(),
                   help="comma-separated z indices of missing slices")
    p.add_argument("--spacing", type=lambda s: _floats(s, 3, "--spacing"), default=(1.0, 1.0, 1.0),
                   help="voxel size dz,dy,dx in micrometres")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_run)


def _parse_texture(text: str | None):
    from ..errors import EBSDValueError

    if text is None or text.lower() in ("random", "none"):
        return None
    parts = text.split(":")
    kind = parts[0].lower()
    try:
        if kind in ("cube", "goss"):
            return (kind, float(parts[1]) if len(parts) > 1 else 5.0)
        if kind == "fiber":
            hkl = tuple(float(v) for v in parts[1].split(","))
            return ("fiber", hkl, float(parts[2]) if len(parts) > 2 else 5.0)
    except (IndexError, ValueError):
        pass
    raise EBSDValueError(f"--texture {text!r}: use cube:SPREAD, goss:SPREAD or fiber:H,K,L:SPREAD (degrees)")


def _run(args) -> int:
    import time
    from pathlib import Path

    from ..errors import EBSDFileExistsError
    from ..io import save_volume
    from ..synthetic import synthetic_volume

    out = Path(args.out)
    if out.exists() and not args.overwrite:  # fail before spending time on the volume
        raise EBSDFileExistsError(f"{out} exists; pass --overwrite to replace it")
    t0 = time.perf_counter()
    vol = synthetic_volume(
        args.shape, args.grain_size, args.symmetry, args.seed,
        size_spread=args.size_spread, elongation=args.elongation, twins=args.twins,
        texture=_parse_texture(args.texture), noise_deg=args.noise_deg, unindexed_fraction=args.unindexed,
        missing_slices=args.missing, spacing=args.spacing,
    )
    t1 = time.perf_counter()
    written = save_volume(vol, out, overwrite=args.overwrite)
    print(f"wrote {written}: {vol!r} [generated in {t1 - t0:.2f} s, written in {time.perf_counter() - t1:.2f} s]")
    return 0
