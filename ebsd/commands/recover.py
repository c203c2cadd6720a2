"""``ebsdtk recover INPUT (--missing 12,13 | --auto) --out OUT.dream3d``: recover missing or bad slices."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "recover", help="recover missing or bad slices of a 3-D volume (transformer + projection)",
        description="Read INPUT (a folder of .ang slices, a .dream3d or an EDAX/H5EBSD .h5), recover the given "
        "slices (--missing) or the ones that look bad (--auto) with the slice-recovery transformer and the "
        "projection step, and write the result (.dream3d, or a folder of .ang). The output metadata lists the "
        "recovered slices under 'recovered_slices'.")
    p.add_argument("input", help="volume to read (.ang folder, .dream3d, .h5)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--missing", help="comma-separated slice indices (z, from 0), e.g. 12,13 or 12-14")
    which.add_argument("--auto", action="store_true", help="find bad slices (low CI/IQ, orientation jumps)")
    p.add_argument("--out", required=True, help="output path (.dream3d, or a folder for .ang slices)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--model", default="default", help="checkpoint directory or model.safetensors (default: bundled)")
    p.add_argument("--no-project", action="store_true", help="skip the projection step (raw network output)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", type=int, default=16, help="tiles per forward pass")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def parse_slices(text: str) -> list[int]:
    """``"12,13"`` or ``"12-14,20"`` -> ``[12, 13, 14, 20]``."""
    import re

    from ..errors import EBSDValueError

    out: list[int] = []
    for part in (t.strip() for t in text.split(",")):
        if not part:
            continue
        try:
            m = re.fullmatch(r"(\d+)-(\d+)", part)
            out.extend(range(int(m[1]), int(m[2]) + 1) if m else [int(part)])
        except ValueError:
            raise EBSDValueError(f"--missing: cannot read {part!r}; give slice indices like 12,13 or 12-14") from None
    if not out:
        raise EBSDValueError("--missing is empty; give slice indices like 12,13")
    return sorted(set(out))


def _run(args) -> int:
    from pathlib import Path

    from ..errors import EBSDFileExistsError
    from ..io import load_volume, save_volume
    from ..recovery import find_bad_slices, recover_missing_slices

    progress = not args.quiet
    out = Path(args.out)
    if out.exists() and not args.overwrite:  # fail before the work, not after
        raise EBSDFileExistsError(f"{out} exists; pass --overwrite to replace it")
    vol = load_volume(args.input, progress=progress)
    print(f"read {args.input}: {vol}")
    if args.auto:
        missing = find_bad_slices(vol)
        print(f"bad slices found: {missing if missing else 'none'}")
    else:
        missing = parse_slices(args.missing)
    if args.device:
        vol = vol.to(args.device)
    new = recover_missing_slices(vol, missing, model=args.model, project=not args.no_project, device=args.device,
                                 batch_size=args.batch_size, progress=progress)
    new = new.to("cpu")
    save_volume(new, out, overwrite=args.overwrite, progress=progress)
    print(f"recovered slices {new.metadata['recovered_slices']} -> {out}")
    return 0
