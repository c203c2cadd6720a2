"""A folder (or glob, or list) of ``.ang`` slices stacked along z, and the writer of such a folder.

Slices are sorted in natural order (``S2`` before ``S10``). Every slice must have the same grid (rows,
columns, steps) and the same phases (ids and symmetry). The z spacing comes from the ``z_spacing`` argument,
else from the folder's ``ebsdtk.json`` (written by :func:`write_ang_folder`), else it is assumed equal to
``dx`` with a warning.

Memory: the output tensors are preallocated once; each slice is parsed, converted and copied in, so the peak
is the volume plus one slice's temporaries.
"""
from __future__ import annotations

import glob as _glob
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import EBSDFormatError
from ..volume import EBSDVolume, Phase
from ._common import check_z_spacing, assemble_volume, metadata_to_json, natural_key, progress_bar
from .ang import parse_ang, write_ang

__all__ = ["read_ang_stack", "write_ang_folder", "list_ang_files", "SIDECAR"]

SIDECAR = "ebsdtk.json"


def list_ang_files(path, pattern: str | None = None) -> list[Path]:
    """The slice files of a folder (``pattern``, default ``*.ang``), a glob string, or a list of paths,
    in natural sort order."""
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
    else:
        p = Path(path)
        if p.is_dir():
            pat = pattern or "*.ang"
            files = [q for q in p.glob(pat) if q.is_file()]
            if pattern is None:
                files += [q for q in p.glob("*.ANG") if q.is_file() and q not in files]
        else:
            files = [Path(q) for q in _glob.glob(str(path)) if Path(q).is_file()]
    files = sorted(set(files), key=lambda q: natural_key(q.name) + natural_key(str(q.parent)))
    return files


def _same_phases(a: dict[int, Phase], b: dict[int, Phase]) -> bool:
    return set(a) == set(b) and all(a[k].symmetry == b[k].symmetry for k in a)


def read_ang_stack(
    path,
    z_spacing: float | None = None,
    pattern: str | None = None,
    progress: bool = False,
    hex_to_square: bool = False,
) -> EBSDVolume:
    """Stack ``.ang`` slices into an :class:`EBSDVolume` ``(Z, Y, X)``."""
    files = list_ang_files(path, pattern)
    if not files:
        raise EBSDFormatError(f"{path}: no .ang files found" + (f" matching {pattern!r}" if pattern else ""))
    side: dict = {}
    if not isinstance(path, (list, tuple)) and Path(path).is_dir() and (Path(path) / SIDECAR).is_file():
        try:
            side = json.loads((Path(path) / SIDECAR).read_text())
            if not isinstance(side, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise EBSDFormatError(f"{Path(path) / SIDECAR}: unreadable sidecar ({exc}); delete or fix it") from None
    first = parse_ang(files[0], hex_to_square=hex_to_square)
    Y, X = first.shape
    Z = len(files)
    if z_spacing is not None:
        dz = check_z_spacing(z_spacing)
    elif "spacing" in side:
        try:
            dz = float(side["spacing"][0])
            if not (math.isfinite(dz) and dz > 0):
                raise ValueError
        except (TypeError, ValueError, IndexError, KeyError):
            raise EBSDFormatError(f"{Path(path) / SIDECAR}: 'spacing' is not three positive numbers") from None
    else:
        dz = first.dx
        if Z > 1:
            warnings.warn(
                f"{path}: no z spacing given; assuming dz = dx = {dz} um (pass z_spacing=...)", stacklevel=2
            )
    quats = torch.empty((Z, Y, X, 4), dtype=torch.float32)
    phases = torch.empty((Z, Y, X), dtype=torch.int32)
    ci = torch.empty((Z, Y, X), dtype=torch.float32)
    iq = torch.empty((Z, Y, X), dtype=torch.float32)
    valid = torch.empty((Z, Y, X), dtype=torch.bool)
    mapped: dict[int, np.ndarray] = {}
    with progress_bar(Z, "reading .ang slices", progress) as bar:
        for z, f in enumerate(files):
            s = first if z == 0 else parse_ang(f, hex_to_square=hex_to_square)
            if s.shape != (Y, X):
                raise EBSDFormatError(
                    f"{f}: grid {s.shape[0]} x {s.shape[1]} differs from {files[0].name} ({Y} x {X}); "
                    "all slices of a stack need the same grid"
                )
            if not (math.isclose(s.dx, first.dx, rel_tol=1e-5) and math.isclose(s.dy, first.dy, rel_tol=1e-5)):
                raise EBSDFormatError(
                    f"{f}: step ({s.dy}, {s.dx}) um differs from {files[0].name} ({first.dy}, {first.dx}) um"
                )
            if not _same_phases(s.phase_info, first.phase_info):
                raise EBSDFormatError(
                    f"{f}: phases {s.phase_info} differ from those of {files[0].name} ({first.phase_info})"
                )
            quats[z] = s.quaternions
            phases[z] = torch.from_numpy(s.phases)
            ci[z] = torch.from_numpy(s.confidence)
            iq[z] = torch.from_numpy(s.image_quality)
            valid[z] = torch.from_numpy(s.valid)
            if s.phase0_mapped is not None:
                mapped[z] = s.phase0_mapped
            bar.update(1)
    if mapped and len(mapped) < Z:
        # some slices use the phase id itself, so in this stack phase 0 means "not indexed" everywhere
        for z, m in mapped.items():
            mt = torch.from_numpy(m)
            phases[z][mt] = 0
            valid[z][mt] = False
    origin = (0.0, first.y0, first.x0)
    if "origin" in side:
        try:
            origin = (float(side["origin"][0]), first.y0, first.x0)
        except (TypeError, ValueError, IndexError):
            pass
    metadata = dict(side.get("metadata", {})) if isinstance(side.get("metadata", {}), dict) else {}
    metadata.update({
        "source": str(path), "format": "ang_stack", "slice_files": [str(f) for f in files],
        "ang_header": first.header, "ang_columns": first.n_columns, "scan_unit_in_file": first.scan_unit,
    })
    phase_info = first.phase_info
    if isinstance(side.get("phases"), dict):  # names exactly as saved (the .ang header may have trimmed them)
        for k, v in side["phases"].items():
            try:
                pid = int(k)
                if pid in phase_info and phase_info[pid].symmetry == v.get("symmetry"):
                    phase_info[pid] = Phase(name=str(v["name"]), symmetry=phase_info[pid].symmetry,
                                            lattice=tuple(float(t) for t in v["lattice"]))
            except (TypeError, ValueError, KeyError, AttributeError):
                continue
    return assemble_volume(
        quaternions=quats, phases=phases, confidence=ci, image_quality=iq,
        spacing=(dz, first.dy, first.dx), origin=origin, phase_info=phase_info, valid=valid, metadata=metadata,
    )


def write_ang_folder(vol: EBSDVolume, path, overwrite: bool = False, prefix: str = "slice_",
                     progress: bool = False) -> Path:
    """Write one ``.ang`` per z slice into the folder ``path`` (``slice_0000.ang``, ... zero-padded), plus
    ``ebsdtk.json`` (z spacing, origin, phases and metadata) so that :func:`read_ang_stack` restores them.

    The folder is filled under a temporary name and renamed into place; an existing ``path`` is only
    replaced with ``overwrite=True``.
    """
    from ._atomic import atomic_dir

    Z = vol.shape[0]
    width = max(4, len(str(Z - 1)))
    with atomic_dir(path, overwrite=overwrite) as tmp:
        with progress_bar(Z, "writing .ang slices", progress) as bar:
            for z in range(Z):
                write_ang(vol, tmp / f"{prefix}{z:0{width}d}.ang", z=z)
                bar.update(1)
        meta = {k: v for k, v in (vol.metadata or {}).items() if k not in ("ang_header", "slice_files")}
        side = {
            "format": "ebsdtk ang folder", "version": 1, "n_slices": Z,
            "spacing": list(vol.spacing), "origin": list(vol.origin),
            "phases": {str(k): {"name": p.name, "symmetry": p.symmetry, "lattice": list(p.lattice)}
                       for k, p in vol.phase_info.items()},
            "metadata": json.loads(metadata_to_json(meta)),
        }
        (tmp / SIDECAR).write_text(json.dumps(side, indent=1))
    return Path(path)
