"""``ebsdtk enhance``: PL/EBSD multimodal diffusion (EBSD super-resolution, PL denoising, grain boundaries).

Inputs and outputs are ``.npy`` files: EBSD as ``(h, w, 4)`` quaternions (NaN = not measured), PL as
``(n_angles, H, W)`` intensities in ``[0, 1]`` at the polariser angles of the checkpoint. Needs the
``diffusion`` extra (``pip install "ebsd-tensor-toolkit[diffusion]"``).
"""
from __future__ import annotations

# This subcommand lives in `diffusion`, not in `ebsd.commands`, because `ebsd` never imports `diffusion` (the
# package graph runs one way). `ebsdtk` finds it through the `ebsdtk.commands` entry point declared in
# pyproject.toml (enhance = "diffusion.cli"); `python -m diffusion enhance ...` runs it without that lookup.

import argparse
import sys
from pathlib import Path

NAME = "enhance"  # the ebsdtk subcommand this module registers


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "enhance", help="PL/EBSD diffusion: super-resolve EBSD, denoise PL, predict grain boundaries",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="task", metavar="TASK", required=True)

    def common(q):
        q.add_argument("-o", "--output", required=True, help="output .npy")
        q.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the bundled one)")
        q.add_argument("--n-samples", type=int, default=4, help="parallel posterior samples (default 4)")
        q.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
        q.add_argument("--overwrite", action="store_true", help="replace an existing output file")
        q.set_defaults(func=run)

    s = sub.add_parser("super-resolve", help="low-resolution EBSD + PL -> full-resolution EBSD (quaternions)")
    s.add_argument("ebsd", help="(h, w, 4) low-resolution quaternions .npy")
    s.add_argument("pl", help="(n_angles, scale*h, scale*w) PL stack .npy")
    s.add_argument("--scale", type=int, default=4)
    s.add_argument("--max-shift", type=float, default=2.0, help="misregistration search, pixels (0: off)")
    s.add_argument("--max-rotation", type=float, default=2.0, help="misregistration search, degrees (0: off)")
    common(s)
    d = sub.add_parser("denoise-pl", help="noisy PL (+ sparse EBSD) -> denoised PL")
    d.add_argument("pl", help="(n_angles, H, W) noisy PL stack .npy")
    d.add_argument("--ebsd-sparse", default=None, help="(H, W, 4) quaternions .npy, NaN where not measured")
    common(d)
    b = sub.add_parser("boundaries", help="PL (+ low-res EBSD) -> boolean grain-boundary map")
    b.add_argument("pl", help="(n_angles, H, W) PL stack .npy")
    b.add_argument("--ebsd", default=None, help="(h, w, 4) low-resolution quaternions .npy")
    b.add_argument("--scale", type=int, default=4)
    b.add_argument("--threshold", type=float, default=None,
                   help="degrees: misorientation with --ebsd (default 5), c-axis angle for --criterion caxis (15)")
    b.add_argument("--criterion", choices=("pl-edges", "caxis"), default="pl-edges",
                   help="PL only: Sobel+Otsu on the posterior-mean PL (default) or the sampled EBSD's c-axes")
    common(b)


def run(args) -> int:
    import numpy as np
    import torch

    from diffusion import DiffusionError, MultimodalDiffusion

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        print(f"ebsdtk enhance: error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = MultimodalDiffusion.load(args.checkpoint, device=device)
        kw = dict(n_samples=args.n_samples, steps=args.steps, seed=args.seed)
        if args.task == "super-resolve":
            res = model.super_resolve(np.load(args.ebsd), np.load(args.pl), scale=args.scale,
                                      max_shift=args.max_shift, max_rotation=args.max_rotation, **kw)
            result = res.quaternions
            print(f"registration {res.registration}; scores {[round(float(s), 3) for s in res.scores]}; "
                  f"{res.seconds:.1f} s")
        elif args.task == "denoise-pl":
            sparse = np.load(args.ebsd_sparse) if args.ebsd_sparse else None
            result = model.denoise_pl(np.load(args.pl), ebsd_sparse=sparse, **kw)
        else:
            lr = np.load(args.ebsd) if args.ebsd else None
            result = model.grain_boundaries(np.load(args.pl), ebsd_low_res=lr, scale=args.scale,
                                            threshold_deg=args.threshold, criterion=args.criterion, **kw)
    except (DiffusionError, OSError, ValueError) as exc:
        print(f"ebsdtk enhance: error: {exc}", file=sys.stderr)
        return 2
    from ebsd.io._atomic import atomic_file

    with atomic_file(out, overwrite=args.overwrite) as tmp:  # also checked before the work started
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(result))
    print(f"wrote {out} {tuple(np.asarray(result).shape)}")
    return 0
