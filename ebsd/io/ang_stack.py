"""A folder (or glob, or list) of ``.ang`` or ``.ctf`` slices stacked along z, and the writer of a folder of
``.ang`` slices.

Slices are sorted in natural order (``S2`` before ``S10``); extensions are matched in any case (``.ANG``,
``.Ctf``). A folder holding both ``.ang`` and ``.ctf`` files needs ``pattern=``. Every slice must have the same
grid (rows, columns, steps) and the same phases (ids and symmetry); the first slice that differs is named in
the :class:`EBSDFormatError`. Each slice is read by :func:`ebsd.io.ang.parse_ang` / :func:`ebsd.io.ctf.parse_ctf`
with their handling of real files' flaws (stale header grids, truncated last rows -> ``measured`` False). The z spacing comes from the ``z_spacing`` argument,
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

__all__ = ["read_ang_stack", "read_slice_stack", "write_ang_folder", "list_ang_files", "list_slice_files",
           "SIDECAR"]

_SUFFIXES = {".ang": "ang", ".ctf": "ctf"}


def _parser(kind: str):
    if kind == "ctf":
        from .ctf import parse_ctf

        return parse_ctf
    return parse_ang


def list_slice_files(path, pattern: str | None = None, kind: str | None = None) -> tuple[list[Path], str]:
    """The slice files (natural order) and their kind (``"ang"`` or ``"ctf"``) of a folder, glob or list.

    In a folder without ``pattern``, files whose extension is ``.ang``/``.ctf`` in any case are taken (``kind``
    picks one when both are present, else :class:`EBSDFormatError`)."""
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
    else:
        p = Path(path)
        if p.is_dir():
            if pattern:
                files = [q for q in p.glob(pattern) if q.is_file()]
            else:
                files = [q for q in p.iterdir() if q.is_file() and q.suffix.lower() in _SUFFIXES
                         and (kind is None or _SUFFIXES[q.suffix.lower()] == kind)]
        else:
            files = [Path(q) for q in _glob.glob(str(path)) if Path(q).is_file()]
    files = sorted(set(files), key=lambda q: natural_key(q.name) + natural_key(str(q.parent)))
    kinds = {_SUFFIXES.get(q.suffix.lower(), "ang") for q in files}
    if kind is None:
        if len(kinds) > 1:
            n = {k: sum(_SUFFIXES.get(q.suffix.lower(), "ang") == k for q in files) for k in sorted(kinds)}
            raise EBSDFormatError(f"{path}: holds both .ang and .ctf slices ({n}); pass pattern='*.ang' or "
                                  "pattern='*.ctf' to pick one stack")
        kind = kinds.pop() if kinds else "ang"
    return files, kind

SIDECAR = "ebsdtk.json"


def list_ang_files(path, pattern: str | None = None) -> list[Path]:
    """The ``.ang`` slice files of a folder (``pattern``, default: extension ``.ang`` in any case), a glob
    string, or a list of paths, in natural sort order."""
    return list_slice_files(path, pattern, kind="ang")[0]


def _parse_quiet(parse, f, hex_to_square, z, caught):
    """Parse one slice, collecting its warnings (re-emitted once per kind by :func:`_report`)."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        s = parse(f, hex_to_square=hex_to_square)
    for w in rec:
        if issubclass(w.category, UserWarning):
            caught.append((z, str(w.message)))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return s


def _kind(msg: str) -> str:
    for key in ("trusting the coordinates", "truncated", "Error 5", "have no data", "cut off"):
        if key in msg:
            return key
    return msg


def _report(caught, files) -> None:
    """One warning per kind of decision: the first slice's message, plus how many other slices got the same."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for z, msg in caught:
        groups.setdefault(_kind(msg), []).append((z, msg))
    for items in groups.values():
        z0, msg = items[0]
        if len(items) > 1:
            others = [files[z].name for z, _ in items[1:]]
            msg += (f" [the same was decided for {len(others)} more slice(s) of this stack: "
                    f"{', '.join(others[:5])}{' ...' if len(others) > 5 else ''}]")
        warnings.warn(msg, stacklevel=4)


def _same_phases(a: dict[int, Phase], b: dict[int, Phase]) -> bool:
    return set(a) == set(b) and all(a[k].symmetry == b[k].symmetry for k in a)


def read_ang_stack(path, z_spacing: float | None = None, pattern: str | None = None, progress: bool = False,
                   hex_to_square: bool = False) -> EBSDVolume:
    """Stack ``.ang`` slices into an :class:`EBSDVolume` ``(Z, Y, X)`` (see :func:`read_slice_stack`)."""
    return read_slice_stack(path, z_spacing, pattern, progress, hex_to_square, kind="ang")


def read_slice_stack(
    path,
    z_spacing: float | None = None,
    pattern: str | None = None,
    progress: bool = False,
    hex_to_square: bool = False,
    kind: str | None = None,
) -> EBSDVolume:
    """Stack ``.ang`` or ``.ctf`` slices (a folder, glob or list) into an :class:`EBSDVolume` ``(Z, Y, X)``.

    ``kind`` (``"ang"``/``"ctf"``) restricts a folder to one kind; by default it follows the files found.
    A slice whose scan was truncated keeps its unwritten points as ``measured`` False.
    """
    files, kind = list_slice_files(path, pattern, kind)
    if not files:
        raise EBSDFormatError(f"{path}: no .{kind or 'ang'} files found" + (f" matching {pattern!r}" if pattern else ""))
    parse = _parser(kind)
    side: dict = {}
    if not isinstance(path, (list, tuple)) and Path(path).is_dir() and (Path(path) / SIDECAR).is_file():
        try:
            side = json.loads((Path(path) / SIDECAR).read_text())
            if not isinstance(side, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise EBSDFormatError(f"{Path(path) / SIDECAR}: unreadable sidecar ({exc}); delete or fix it") from None
    caught: list[tuple[int, str]] = []
    first = _parse_quiet(parse, files[0], hex_to_square, 0, caught)
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
    measured = torch.ones((Z, Y, X), dtype=torch.bool)
    mapped: dict[int, np.ndarray] = {}
    odd = "slice {z} of {Z} ({f}) is the first whose {what} differs from slice 0 ({f0}): {a} vs {b}; all slices " \
          "of a stack need the same grid, step and phases (remove or fix that slice, or pass the others as a list)"
    with progress_bar(Z, f"reading .{kind} slices", progress) as bar:
        for z, f in enumerate(files):
            s = first if z == 0 else _parse_quiet(parse, f, hex_to_square, z, caught)
            if s.shape != (Y, X):
                raise EBSDFormatError(f"{f}: " + odd.format(z=z, Z=Z, f=f.name, f0=files[0].name, what="grid",
                                                            a=f"{s.shape[0]} x {s.shape[1]}", b=f"{Y} x {X}"))
            if not (math.isclose(s.dx, first.dx, rel_tol=1e-5) and math.isclose(s.dy, first.dy, rel_tol=1e-5)):
                raise EBSDFormatError(f"{f}: " + odd.format(z=z, Z=Z, f=f.name, f0=files[0].name, what="step",
                                                            a=f"({s.dy}, {s.dx}) um", b=f"({first.dy}, {first.dx}) um"))
            if not _same_phases(s.phase_info, first.phase_info):
                raise EBSDFormatError(f"{f}: " + odd.format(
                    z=z, Z=Z, f=f.name, f0=files[0].name, what="phase list",
                    a={k: (v.name, v.symmetry) for k, v in s.phase_info.items()},
                    b={k: (v.name, v.symmetry) for k, v in first.phase_info.items()}))
            if s.measured is not None:
                measured[z] = torch.from_numpy(s.measured)
            quats[z] = s.quaternions
            phases[z] = torch.from_numpy(s.phases)
            ci[z] = torch.from_numpy(s.confidence)
            iq[z] = torch.from_numpy(s.image_quality)
            valid[z] = torch.from_numpy(s.valid)
            if s.phase0_mapped is not None:
                mapped[z] = s.phase0_mapped
            bar.update(1)
    _report(caught, files)
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
    metadata.update({"source": str(path), "format": f"{kind}_stack", "slice_files": [str(f) for f in files],
                     "scan_unit_in_file": first.scan_unit})
    if kind == "ang":
        metadata.update({"ang_header": first.header, "ang_columns": first.n_columns})
    else:
        metadata.update({"ctf_header": first.header, **first.extra})
    um = side.get("unmeasured")
    if isinstance(um, dict):  # voxels our writer marked as never measured (an .ang cannot say so itself)
        for k, runs in um.items():
            try:
                z = int(k)
                if not 0 <= z < Z:
                    continue
                flat = measured[z].view(-1)
                for a, b in runs:
                    a, b = int(a), int(b)
                    if 0 <= a and b > 0 and a + b <= flat.numel():
                        flat[a:a + b] = False
            except (TypeError, ValueError):
                continue
        # (not "valid &= measured": an unmeasured voxel was written with CI = -1 unless valid (recovered))
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
        measured=measured,
    )


def write_ang_folder(vol: EBSDVolume, path, overwrite: bool = False, prefix: str = "slice_",
                     progress: bool = False) -> Path:
    """Write one ``.ang`` per z slice into the folder ``path`` (``slice_0000.ang``, ... zero-padded), plus
    ``ebsdtk.json`` (z spacing, origin, phases, metadata, and the runs of voxels never measured) so that
    :func:`read_ang_stack` restores them. In the ``.ang`` files themselves a voxel never measured is written as
    not indexed (CI = -1); only the sidecar keeps the difference, so other software sees it as not indexed.

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
        meta = {k: v for k, v in (vol.metadata or {}).items() if k not in ("ang_header", "slice_files", "ctf_header")}
        unmeasured = {}
        for z in range(Z):
            m = ~vol.measured[z].cpu().numpy().ravel()
            if m.any():
                d = np.diff(np.concatenate([[0], m.astype(np.int8), [0]]))
                starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
                unmeasured[str(z)] = [[int(a), int(b - a)] for a, b in zip(starts, ends)]
        side = {
            "format": "ebsdtk ang folder", "version": 1, "n_slices": Z,
            "spacing": list(vol.spacing), "origin": list(vol.origin),
            "phases": {str(k): {"name": p.name, "symmetry": p.symmetry, "lattice": list(p.lattice)}
                       for k, p in vol.phase_info.items()},
            "metadata": json.loads(metadata_to_json(meta)),
        }
        if unmeasured:
            side["unmeasured"] = unmeasured  # {z: [[first flat index, run length], ...]}
        (tmp / SIDECAR).write_text(json.dumps(side, indent=1))
    return Path(path)
