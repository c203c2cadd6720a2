"""EDAX OIM Analysis HDF5 (``.h5``, ``.oh5``): reader.

Layout (EbsdLib ``H5OIMReader``; root attrs `` Manufacturer`` = "EDAX", `` Version``)::

    /<scan>/EBSD/Header/   nColumns, nRows, Step X, Step Y, Grid Type ("SqrGrid"),
                           Phase/<n>/{MaterialName, Formula, Symmetry (TSL code), Lattice Constant a|b|c|alpha|beta|gamma}
    /<scan>/EBSD/Data/     Phi1, Phi, Phi2 (radians), X Position, Y Position, IQ, CI, Phase, (Fit, SEM Signal, ...)

Data arrays hold ``nRows * nColumns`` points in raster order (x fastest). Several scans in one file are
stacked along z (natural order of their names) when their grids agree, or one is picked with ``scan=``
(name or index). Unindexed points (``CI < 0`` or a phase value naming no header phase) get ``valid=False``;
in a single-phase scan phase value 0 means that phase (as in .ang files).

Memory: output tensors are preallocated; each scan is read and converted on its own (one scan's arrays are
the only temporaries).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import EBSDFormatError, EBSDValueError
from ..volume import EBSDVolume, Phase
from ._common import (
    check_z_spacing,
    assemble_volume,
    FormatContext, euler_rows_to_quat, fmt_error, laue_from_tsl, natural_key, progress_bar, resolve_phase0,
)

__all__ = ["read_h5oim", "write_oim_h5", "list_scans"]

OIM_NAMES = {
    "ncols": ("nColumns",), "nrows": ("nRows",), "dx": ("Step X",), "dy": ("Step Y",), "grid": ("Grid Type",),
    "phase_group": ("Phase", "Phases"),
    "phi1": "Phi1", "Phi": "Phi", "phi2": "Phi2", "iq": ("IQ", "Image Quality"), "ci": ("CI", "Confidence Index"),
    "phase": ("Phase", "PhaseData"), "x": ("X Position",), "y": ("Y Position",),
}


# ---------------------------------------------------------------------------------------------- helpers
def scalar(path, g: h5py.Group, names, kind: str = "f", required: bool = True):
    """A header value stored as a scalar or 1-element dataset (number or string)."""
    names = (names,) if isinstance(names, str) else names
    for n in names:
        obj = g.get(n)
        if isinstance(obj, h5py.Dataset):
            v = obj[()]
            if isinstance(v, np.ndarray):
                if v.size == 0:
                    raise fmt_error(path, f"{obj.name} is empty")
                v = v.ravel()[0]
            if kind == "s":
                if isinstance(v, (bytes, np.bytes_)):
                    return bytes(v).decode("utf-8", errors="replace").rstrip("\x00 ").strip()
                return str(v).strip()
            if isinstance(v, (bytes, np.bytes_, str)):
                try:
                    v = float(v.decode() if isinstance(v, (bytes, np.bytes_)) else v)
                except (ValueError, UnicodeDecodeError):
                    raise fmt_error(path, f"{obj.name} = {v!r} is not a number") from None
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise fmt_error(path, f"{obj.name} = {v!r} is not a number") from None
            if not math.isfinite(v):
                raise fmt_error(path, f"{obj.name} = {v} is not finite")
            if kind == "i":
                if v != int(v) or v < 0 or v > 10**8:
                    raise fmt_error(path, f"{obj.name} = {v} is not a non-negative integer")
                return int(v)
            return v
    if required:
        raise fmt_error(path, f"{g.name} has no {' / '.join(names)} dataset")
    return None


def read_phases(path, hdr: h5py.Group, group_names, lattice_style: str) -> dict[int, Phase]:
    info: dict[int, Phase] = {}
    for pid, g in phase_groups(path, hdr, group_names):
        sym_raw = scalar(path, g, ("Symmetry",), "s")
        sym = laue_from_tsl(sym_raw.split()[0] if sym_raw.split() else "")
        if sym is None:
            raise fmt_error(path, f"{g.name}/Symmetry = {sym_raw!r} is not a TSL Laue code (43 m-3m, 62 6/mmm, ...)")
        name = scalar(path, g, ("MaterialName", "Material Name"), "s", required=False) or f"phase {pid}"
        if lattice_style == "oim":
            parts = [scalar(path, g, (f"Lattice Constant {c}",), "f", required=False)
                     for c in ("a", "b", "c", "alpha", "beta", "gamma")]
            lat = tuple(parts) if all(p is not None for p in parts) else (1.0, 1.0, 1.0, 90.0, 90.0, 90.0)
        else:
            ds = g.get("LatticeConstants")
            if isinstance(ds, h5py.Dataset):
                arr = np.asarray(ds[()], dtype=np.float64).ravel()
                if arr.size != 6 or not np.isfinite(arr).all():
                    raise fmt_error(path, f"{ds.name} must hold 6 finite numbers, got {arr.size}")
                lat = tuple(float(v) for v in arr)
            else:
                lat = (1.0, 1.0, 1.0, 90.0, 90.0, 90.0)
        info[pid] = Phase(name=name, symmetry=sym, lattice=lat)
    if not info:
        raise fmt_error(path, f"{hdr.name}: its phase group defines no phase")
    return info


def _data(path, g: h5py.Group, names, n: int, required: bool = True) -> np.ndarray | None:
    names = (names,) if isinstance(names, str) else names
    for nm in names:
        ds = g.get(nm)
        if isinstance(ds, h5py.Dataset):
            if ds.size != n:
                raise fmt_error(path, f"{ds.name} has {ds.size} values, expected nRows x nColumns = {n}")
            if ds.dtype.kind not in "fiu":
                raise fmt_error(path, f"{ds.name} has dtype {ds.dtype}, expected numbers")
            a = np.asarray(ds[()]).reshape(-1)
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise fmt_error(path, f"{ds.name} contains NaN/inf; the file is damaged")
            return a
    if required:
        raise fmt_error(path, f"{g.name} has no {' / '.join(names)} dataset")
    return None


def read_slice_into(path, data: h5py.Group, nrows: int, ncols: int, names: dict, phase_info: dict[int, Phase],
                    z: int, quats, phases, ci, iq, valid) -> np.ndarray | None:
    """Read one Data group (raster order) into row ``z`` of the preallocated output tensors. Returns the mask
    of points whose phase value 0 was read as the single phase (see :func:`resolve_phase0`), or ``None``."""
    n = nrows * ncols
    eul = np.empty((n, 3), dtype=np.float64)
    for j, k in enumerate(("phi1", "Phi", "phi2")):
        eul[:, j] = _data(path, data, names[k], n)
    if np.abs(eul).max(initial=0.0) > 4 * math.pi + 0.01:
        raise fmt_error(path, f"{data.name}: Euler angles exceed 4 pi; expected radians (degrees?)")
    euler_rows_to_quat(eul.reshape(nrows, ncols, 3), out=quats[z])
    del eul
    c = _data(path, data, names["ci"], n, required=False)
    c = np.ones(n, np.float32) if c is None else c.astype(np.float32)
    q = _data(path, data, names["iq"], n, required=False)
    q = np.ones(n, np.float32) if q is None else q.astype(np.float32)
    p = _data(path, data, names["phase"], n, required=False)
    ids = set(phase_info)
    mapped = None
    if p is None:
        p = np.full(n, min(ids), np.int32)
    else:
        if p.dtype.kind == "f" and (p != np.rint(p)).any():
            raise fmt_error(path, f"{data.name}: phase values are not integers")
        if np.abs(p).max(initial=0) > 2**31 - 1:
            raise fmt_error(path, f"{data.name}: phase values out of range")
        p, mapped = resolve_phase0(p.astype(np.int32), c, ids)
    known = np.isin(p, np.fromiter(ids, dtype=np.int32))
    bad = [int(v) for v in np.unique(p[~known]) if v not in (0, -1)]
    if bad:
        raise fmt_error(path, f"{data.name}: phase id(s) {bad[:5]} not defined in the header ({sorted(ids)})")
    phases[z] = torch.from_numpy(p.reshape(nrows, ncols))
    ci[z] = torch.from_numpy(c.reshape(nrows, ncols))
    iq[z] = torch.from_numpy(q.reshape(nrows, ncols))
    valid[z] = torch.from_numpy((known & (c >= 0)).reshape(nrows, ncols))
    return None if mapped is None else mapped.reshape(nrows, ncols)


def undo_phase0(mapped: dict, Z: int, phases, valid) -> None:
    """If only some slices read phase 0 as the single phase, 0 means "not indexed" in this stack: undo."""
    if mapped and len(mapped) < Z:
        for z, m in mapped.items():
            mt = torch.from_numpy(m)
            phases[z][mt] = 0
            valid[z][mt] = False


def check_grid(path, g: h5py.Group, grid: str | None):
    if grid and grid.lower().startswith("hex"):
        raise fmt_error(
            path, f"{g.name}: HexGrid scans are not read (voxels must lie on a square grid). Convert the scan "
            "to a square grid in OIM Analysis (Utilities > Convert Scan Data) or export it as .ang and use "
            "load_volume(..., hex_to_square=True)"
        )
    if grid and not grid.lower().startswith("sqr"):
        raise fmt_error(path, f"{g.name}: unknown grid type {grid!r}; expected SqrGrid")


# ---------------------------------------------------------------------------------------------- reader
def list_scans(f: h5py.File) -> list[str]:
    """Names of the root groups that hold an ``EBSD/Data`` group, in natural order."""
    out = []
    for k in f.keys():
        g = f[k]
        if isinstance(g, h5py.Group) and isinstance(g.get("EBSD/Data"), h5py.Group) \
                and isinstance(g.get("EBSD/Header"), h5py.Group):
            out.append(k)
    return sorted(out, key=natural_key)


def read_h5oim(path, scan=None, z_spacing: float | None = None, progress: bool = False) -> EBSDVolume:
    """Read one scan (``scan`` = name or index) or all scans (stacked along z) of an EDAX OIM ``.h5``."""
    path = Path(path)
    with FormatContext(path, "reading EDAX OIM .h5"):
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise fmt_error(path, f"not a readable HDF5 file ({exc})") from None
        with f:
            return _read(f, path, scan, z_spacing, progress)


def select_scans(path, scans: list[str], scan, what: str = "scan") -> list[str]:
    """The scan groups to read: all of ``scans`` (``scan=None``), or the one named or indexed by ``scan``
    (:class:`EBSDValueError` naming the file's scans otherwise). Shared by the HDF5 readers."""
    if scan is None:
        return list(scans)
    if isinstance(scan, int) and not isinstance(scan, bool):
        if not -len(scans) <= scan < len(scans):
            raise EBSDValueError(f"{path}: {what} index {scan} out of range; the file has {len(scans)} {what}s {scans}")
        return [scans[scan]]
    if str(scan) in scans:
        return [str(scan)]
    raise EBSDValueError(f"{path}: no {what} {scan!r}; the file has {scans}")


def phase_groups(path, hdr: h5py.Group, names=("Phases",)):
    """``(phase id, group)`` of each integer-named subgroup of the first of ``hdr/<names>`` that exists, in
    natural order (:func:`fmt_error` when none exists or a name is not an integer). Shared by the HDF5
    readers that store one group per phase."""
    pg = next((hdr[n] for n in names if isinstance(hdr.get(n), h5py.Group)), None)
    if pg is None:
        raise fmt_error(path, f"{hdr.name} has no Phase group (looked for {', '.join(names)}); the crystal symmetry is unknown")
    for key in sorted(pg.keys(), key=natural_key):
        g = pg[key]
        if not isinstance(g, h5py.Group):
            continue
        try:
            pid = int(key)
        except ValueError:
            raise fmt_error(path, f"{g.name}: phase group name {key!r} is not an integer id") from None
        yield pid, g


def _read(f, path, scan, z_spacing, progress) -> EBSDVolume:
    scans = list_scans(f)
    if not scans:
        raise fmt_error(path, "no <scan>/EBSD/Header + EBSD/Data groups; not an EDAX OIM .h5 file")
    chosen = select_scans(path, scans, scan)
    grids = []
    for s in chosen:
        hdr = f[s]["EBSD/Header"]
        check_grid(path, hdr, scalar(path, hdr, OIM_NAMES["grid"], "s", required=False))
        ncols = scalar(path, hdr, OIM_NAMES["ncols"], "i")
        nrows = scalar(path, hdr, OIM_NAMES["nrows"], "i")
        dx = scalar(path, hdr, OIM_NAMES["dx"], "f")
        dy = scalar(path, hdr, OIM_NAMES["dy"], "f")
        if ncols < 1 or nrows < 1:
            raise fmt_error(path, f"{hdr.name}: nRows x nColumns = {nrows} x {ncols} is empty")
        if dx <= 0 or dy <= 0:
            raise fmt_error(path, f"{hdr.name}: Step X/Y = {dx}/{dy} must be positive")
        grids.append((nrows, ncols, dx, dy, read_phases(path, hdr, OIM_NAMES["phase_group"], "oim")))
    g0 = grids[0]
    for s, g in zip(chosen[1:], grids[1:]):
        same = g[:2] == g0[:2] and math.isclose(g[2], g0[2], rel_tol=1e-5) and math.isclose(g[3], g0[3], rel_tol=1e-5) \
            and {k: v.symmetry for k, v in g[4].items()} == {k: v.symmetry for k, v in g0[4].items()}
        if not same:
            raise EBSDFormatError(
                f"{path}: scans {chosen[0]!r} and {s!r} differ in grid, step or phases, so they cannot be stacked; "
                f"pick one with scan= (one of {chosen})"
            )
    nrows, ncols, dx, dy, phase_info = g0
    Z = len(chosen)
    for s in chosen:  # data sizes must match the header before anything is allocated
        d = f[s]["EBSD/Data"]
        for k in ("Phi1", "Phi", "Phi2"):
            if not isinstance(d.get(k), h5py.Dataset):
                raise fmt_error(path, f"{d.name} has no {k} dataset")
            if d[k].size != nrows * ncols:
                raise fmt_error(path, f"{d.name}/{k} has {d[k].size} values, expected nRows x nColumns = {nrows * ncols}")
    if z_spacing is not None:
        dz = check_z_spacing(z_spacing)
    else:
        dz = dx
        if Z > 1:
            warnings.warn(f"{path}: stacking {Z} scans with no z spacing given; assuming dz = dx = {dx} um",
                          stacklevel=3)
    quats = torch.empty((Z, nrows, ncols, 4), dtype=torch.float32)
    phases = torch.empty((Z, nrows, ncols), dtype=torch.int32)
    ci = torch.empty((Z, nrows, ncols), dtype=torch.float32)
    iq = torch.empty((Z, nrows, ncols), dtype=torch.float32)
    valid = torch.empty((Z, nrows, ncols), dtype=torch.bool)
    mapped = {}
    with progress_bar(Z, "reading OIM scans", progress) as bar:
        for z, s in enumerate(chosen):
            m = read_slice_into(path, f[s]["EBSD/Data"], nrows, ncols, OIM_NAMES, phase_info, z,
                                quats, phases, ci, iq, valid)
            if m is not None:
                mapped[z] = m
            bar.update(1)
    undo_phase0(mapped, Z, phases, valid)
    measured = None
    for z, s in enumerate(chosen):  # ours: EBSDVolume.measured (absent in vendor files = all measured)
        d = f[s]["EBSD/Data"].get("Measured")
        if isinstance(d, h5py.Dataset):
            if d.size != nrows * ncols or d.dtype.kind not in "biu":
                raise fmt_error(path, f"{d.name} has {d.size} values of dtype {d.dtype}; expected {nrows * ncols} "
                                "booleans")
            if measured is None:
                measured = torch.ones((Z, nrows, ncols), dtype=torch.bool)
            measured[z] = torch.from_numpy(np.asarray(d[()]).reshape(nrows, ncols).astype(bool))
    # (no "valid &= measured": a voxel never measured was written with CI = -1 unless it is valid, as a
    # recovered voxel is: valid but not measured)
    x0 = y0 = 0.0
    try:
        d = f[chosen[0]]["EBSD/Data"]
        if "X Position" in d and "Y Position" in d and d["X Position"].size and d["Y Position"].size:
            x0 = float(np.asarray(d["X Position"][0:1]).ravel()[0])
            y0 = float(np.asarray(d["Y Position"][0:1]).ravel()[0])
            if not (math.isfinite(x0) and math.isfinite(y0)):
                x0 = y0 = 0.0
    except (TypeError, ValueError, KeyError):
        x0 = y0 = 0.0
    manu = f.attrs.get(" Manufacturer", f.attrs.get("Manufacturer", b""))
    meta = {"source": str(path), "format": "h5oim", "scans": chosen, "all_scans": scans,
            "manufacturer": manu.decode(errors="replace") if isinstance(manu, bytes) else str(manu)}
    return assemble_volume(quaternions=quats, phases=phases, confidence=ci, image_quality=iq,
                      spacing=(dz, dy, dx), origin=(0.0, y0, x0), phase_info=phase_info, valid=valid,
                      metadata=meta, measured=measured)


# ---------------------------------------------------------------------------------------------- writer
def write_oim_h5(vol: EBSDVolume, path, overwrite: bool = False, scans=None) -> Path:
    """Write ``vol`` as an EDAX OIM-style ``.h5``: one scan group per z slice (``"Scan 1"``, ... or the
    names in ``scans``), with the Header/Data layout :func:`read_h5oim` reads (Euler angles float32 radians).

    Meant for tests and for exchanging single scans; ``.dream3d`` is the lossless format. Invalid voxels whose
    phase is a defined phase get CI = -1 (as in .ang); voxels never measured get CI = -1 too, and a ``Measured``
    dataset (uint8) in that scan's Data group, which :func:`read_h5oim` reads back. Written via a temporary file
    and a rename.
    """
    from ..orientation import quat_to_euler
    from ._atomic import atomic_file
    from ._common import LAUE_TO_TSL_CODE

    def put(g, name, value):
        if isinstance(value, str):
            g.create_dataset(name, data=np.array([value.encode("utf-8")]))
        else:
            g.create_dataset(name, data=np.array([value]))

    Z, Y, X = vol.shape
    dz, dy, dx = vol.spacing
    z0, y0, x0 = vol.origin
    names = list(scans) if scans is not None else [f"Scan {i + 1}" for i in range(Z)]
    if len(names) != Z or len(set(names)) != Z:
        raise EBSDValueError(f"scans needs {Z} distinct names, got {names}")
    ids = np.fromiter(vol.phase_info, dtype=np.int64)
    with atomic_file(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs[" Manufacturer"] = np.bytes_("EDAX")
            f.attrs[" Version"] = np.bytes_("ebsd-tensor-toolkit OIM-style writer")
            for z, name in enumerate(names):
                hdr = f.create_group(f"{name}/EBSD/Header")
                put(hdr, "nColumns", np.int32(X))
                put(hdr, "nRows", np.int32(Y))
                put(hdr, "Step X", np.float32(dx))
                put(hdr, "Step Y", np.float32(dy))
                put(hdr, "Grid Type", "SqrGrid")
                pc = hdr.create_group("Pattern Center Calibration")
                for k in ("x-star", "y-star", "z-star"):
                    put(pc, k, np.float32(0.0))
                for pid, ph in vol.phase_info.items():
                    code = LAUE_TO_TSL_CODE.get(ph.symmetry)
                    if code is None:
                        raise EBSDValueError(f"phase {pid}: symmetry {ph.symmetry!r} has no TSL code")
                    pg = hdr.create_group(f"Phase/{pid}")
                    put(pg, "MaterialName", str(ph.name))
                    put(pg, "Formula", str(ph.name))
                    put(pg, "Symmetry", np.int32(code))
                    for c, v in zip(("a", "b", "c", "alpha", "beta", "gamma"), ph.lattice):
                        put(pg, f"Lattice Constant {c}", np.float32(v))
                    put(pg, "NumberFamilies", np.int32(0))
                d = f.create_group(f"{name}/EBSD/Data")
                e = quat_to_euler(vol.quaternions[z].detach().cpu().double()).numpy().reshape(-1, 3)
                for j, k in enumerate(("Phi1", "Phi", "Phi2")):
                    d[k] = e[:, j].astype(np.float32)
                yy, xx = np.meshgrid(y0 + dy * np.arange(Y), x0 + dx * np.arange(X), indexing="ij")
                d["X Position"] = xx.ravel().astype(np.float32)
                d["Y Position"] = yy.ravel().astype(np.float32)
                ph_z = vol.phases[z].cpu().numpy().ravel().astype(np.int32)
                ci = vol.confidence[z].cpu().numpy().ravel().astype(np.float32)
                valid = vol.valid[z].cpu().numpy().ravel()
                ci = np.where(~valid & np.isin(ph_z, ids) & (ci >= 0), np.float32(-1), ci)
                d["CI"] = np.where(vol.measured[z].cpu().numpy().ravel() | valid, ci, np.float32(-1)).astype(np.float32)
                d["IQ"] = vol.image_quality[z].cpu().numpy().ravel().astype(np.float32)
                d["Phase"] = ph_z
                d["Fit"] = np.zeros(Y * X, np.float32)
                meas = vol.measured[z].cpu().numpy().ravel()
                if not meas.all():  # ours, read back by read_h5oim; OIM ignores unknown datasets
                    d["Measured"] = meas.astype(np.uint8)
                d["SEM Signal"] = np.zeros(Y * X, np.float32)
    return Path(path)
