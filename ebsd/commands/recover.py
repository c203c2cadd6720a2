"""``ebsdtk recover INPUT (--missing 12,13 | --auto) --out OUT.dream3d``: recover missing or bad slices."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "recover", help="recover missing or bad slices of a 3-D volume (method chosen by a self-check)",
        description="Read INPUT (a folder of .ang slices, a .dream3d or an EDAX/H5EBSD .h5), recover the given "
        "slices (--missing) or the ones that look bad (--auto), and write the result (.dream3d, or a folder of "
        ".ang). By default (--method auto) a self-check hides known sections of INPUT, recovers them with each "
        "method (blend of the measured neighbours, the transformer, slerp, nearest), uses the one with the lowest "
        "error, and prints the expected error on this volume. The output metadata lists the recovered slices "
        "under 'recovered_slices'.")
    p.add_argument("input", help="volume to read (.ang folder, .dream3d, .h5)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--missing", help="comma-separated slice indices (z, from 0), e.g. 12,13 or 12-14")
    which.add_argument("--auto", action="store_true", help="find bad slices (low CI/IQ, orientation jumps)")
    p.add_argument("--out", required=True, help="output path (.dream3d, or a folder for .ang slices)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--model", default="default", help="checkpoint directory or model.safetensors (default: bundled)")
    p.add_argument("--method", default="auto", choices=["auto", "blend", "network-blend", "network", "slerp", "nearest"],
                   help="recovery method (default auto: chosen by the self-check)")
    p.add_argument("--self-check", type=int, default=8, metavar="N",
                   help="known runs to hide for the self-check (0: none; auto then uses blend)")
    p.add_argument("--adapt-seconds", type=float, default=None,
                   help="test-time adaptation of the network on INPUT (default: 5 s on CUDA, 0 on CPU)")
    p.add_argument("--no-project", action="store_true", help="network method: skip the projection step")
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
    from ..recovery.api import expected_error_line

    new, details = recover_missing_slices(
        vol, missing, model=args.model, project=not args.no_project, device=args.device,
        batch_size=args.batch_size, progress=progress, method=args.method, self_check=args.self_check,
        adapt_seconds=args.adapt_seconds, return_details=True)
    new = new.to("cpu")
    check = details.get("self_check")
    if check:
        print("self-check (hidden known sections, misorientation to the measured ones):")
        for name, row in check["table"].items():
            mark = "*" if name == check["method"] else " "
            print(f" {mark} {name:<38} mean {row['mean_deg']:6.2f} deg  median {row['median_deg']:5.2f} deg  "
                  f"within 5 deg {100 * row['within5']:5.1f}%")
        if check.get("adaptation"):
            a = check["adaptation"]
            print(f"   adaptation: {a['steps']} steps in {a['seconds']} s, helped: {a.get('helped')}")
    if missing:
        print(f"method used: {details['method']}")
        print(expected_error_line(check))
    save_volume(new, out, overwrite=args.overwrite, progress=progress)
    print(f"recovered slices {new.metadata['recovered_slices']} -> {out}")
    return 0
