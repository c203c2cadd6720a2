"""``ebsdtk info PATH``: shape, spacing, phases (name, symmetry, lattice), fraction indexed of a volume.

Exit code 0 on success, 2 (via :mod:`ebsd.cli`) with a one-line message when the file is missing or broken.
"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "info", help="describe an EBSD volume (shape, spacing, phases, symmetry, fraction indexed)",
        description="Read PATH (an .ang or Oxford .ctf file, a folder or glob of .ang/.ctf slices, a .dream3d, an "
        "EDAX OIM .h5, a DREAM.3D .h5ebsd, an Oxford .h5oina, a Bruker ESPRIT or EMsoft .h5) and print its shape (Z, Y, X), voxel spacing (dz, dy, dx) in micrometres, origin, "
        "phases with their Laue class and lattice constants, and the fraction of indexed voxels. "
        "A broken file exits with code 2 and says what is wrong.")
    p.add_argument("path", help="volume to describe")
    p.add_argument("--z-spacing", type=float, default=None, help="slice spacing in um (stacks of .ang)")
    p.add_argument("--scan", default=None, help="EDAX OIM .h5, .h5oina, Bruker .h5: scan/slice name or index")
    p.add_argument("--hex-to-square", action="store_true",
                   help=".ang/.ctf on a hexagonal grid: resample onto a square grid (nearest neighbour)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    p.set_defaults(func=_run)


def describe(vol) -> dict:
    """The facts ``ebsdtk info`` prints, as a dict."""
    import torch

    Z, Y, X = vol.shape
    counts = {}
    if vol.phases.numel():
        ids, n = torch.unique(vol.phases[vol.valid], return_counts=True)
        counts = {int(i): int(c) for i, c in zip(ids.tolist(), n.tolist())}
    per_slice = vol.valid.float().mean(dim=(1, 2)).tolist() if vol.valid.numel() else []
    return {
        "source": str(vol.metadata.get("source", "")),
        "format": str(vol.metadata.get("format", "")),
        "shape": [Z, Y, X],
        "voxels": Z * Y * X,
        "spacing_um": list(vol.spacing),
        "origin_um": list(vol.origin),
        "phases": [
            {"id": int(k), "name": p.name, "symmetry": p.symmetry, "lattice": list(p.lattice),
             "indexed_voxels": counts.get(int(k), 0)}
            for k, p in sorted(vol.phase_info.items())
        ],
        "fraction_indexed": vol.fraction_indexed,
        "not_measured_voxels": int((~vol.measured).sum()) if vol.measured.numel() else 0,
        "empty_slices": [z for z, f in enumerate(per_slice) if f == 0.0],
        "recovered_slices": vol.metadata.get("recovered_slices"),
    }


def _run(args) -> int:
    import json

    from ..io import load_volume

    scan = args.scan
    if scan is not None and scan.lstrip("-").isdigit():
        scan = int(scan)
    vol = load_volume(args.path, z_spacing=args.z_spacing, scan=scan,
                      hex_to_square=bool(getattr(args, "hex_to_square", False)))
    d = describe(vol)
    if args.json:
        print(json.dumps(d, indent=1))
        return 0
    Z, Y, X = d["shape"]
    dz, dy, dx = d["spacing_um"]
    lines = [
        f"file:             {args.path}  ({d['format']})",
        f"shape (Z, Y, X):  {Z} x {Y} x {X}  ({d['voxels']:,} voxels)",
        f"spacing (dz, dy, dx): {dz:g} x {dy:g} x {dx:g} um",
        f"origin (z, y, x): {', '.join(f'{v:g}' for v in d['origin_um'])} um",
        f"phases:           {len(d['phases'])}",
    ]
    for p in d["phases"]:
        a, b, c, al, be, ga = p["lattice"]
        lines.append(
            f"  {p['id']:>3}  {p['name']:<24} symmetry {p['symmetry']:<6} "
            f"lattice {a:g} {b:g} {c:g} A, {al:g} {be:g} {ga:g} deg  ({p['indexed_voxels']:,} indexed voxels)"
        )
    lines.append(f"fraction indexed: {d['fraction_indexed']:.1%}")
    if d["not_measured_voxels"]:
        lines.append(f"not measured:     {d['not_measured_voxels']:,} voxels (never written: truncated scan, outside "
                     "the scanned area or a missing section)")
    if d["empty_slices"]:
        s = d["empty_slices"]
        lines.append(f"unindexed slices: {s[:20]}{' ...' if len(s) > 20 else ''}")
    if d["recovered_slices"]:
        lines.append(f"recovered slices: {d['recovered_slices']}")
    print("\n".join(lines))
    return 0
