"""Bruker Nano ESPRIT h5ebsd (``.h5``/``.h5ebsd`` with a root ``Manufacturer`` = "Bruker Nano"): reader.

Layout (the h5ebsd layout of Jackson et al. 2014 as ESPRIT writes it, and as orix's ``bruker_h5ebsd`` reader
reads it)::

    /Manufacturer "Bruker Nano", /Version "Esprit 2.x"
    /<scan>/EBSD/Header/  NCOLS, NROWS, XSTEP, YSTEP (um), "Grid Type" ("isometric" = square),
                          Phases/<id>/{Name, Formula, IT (space-group number), LatticeConstants (6), ...}
    /<scan>/EBSD/Data/    phi1, PHI, phi2 (degrees), Phase (0 = not indexed), MAD, RadonQuality,
                          X SAMPLE, Y SAMPLE, X BEAM, Y BEAM, ...
    /<scan>/SEM/ or /<scan>/EBSD/SEM/   IX, IY (or "SEM IX", "SEM IY"): map column/row of every data point

Conventions (as orix):

* Orientations: ``phi1, PHI, phi2`` in degrees -> radians -> quaternions, no reference-frame change.
* Placement: data point ``i`` goes to row ``IY[i] - min(IY)``, column ``IX[i] - min(IX)`` when IX/IY exist,
  else the points are in raster order on ``NROWS x NCOLS``. orix refuses a non-rectangular region of interest;
  we load its bounding box and mark the points outside the region as not measured (warned).
* Laue class from the space-group number ``IT``. ``image_quality`` <- RadonQuality; ``confidence`` <- 1
  indexed / -1 not. Steps from XSTEP/YSTEP, else from the X/Y SAMPLE coordinates (as orix).
* Several scans are stacked along z when their grids and phases agree (the first odd one is named), or one is
  picked with ``scan=``. orix reads only the first scan.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import EBSDFormatError
from ..volume import EBSDVolume, Phase
from ._common import (
    FormatContext, assemble_volume, check_z_spacing, euler_rows_to_quat, fmt_error, laue_from_space_group,
    natural_key, progress_bar,
)
from ._grid import infer_step
from .h5oim import phase_groups, scalar, select_scans

__all__ = ["read_bruker_h5", "is_bruker", "list_bruker_scans"]


def _str(v) -> str:
    if isinstance(v, np.ndarray):
        v = v.ravel()[0] if v.size else b""
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("latin-1").rstrip("\x00 ").strip()
    return str(v).strip()


def manufacturer(f: h5py.File) -> str:
    """The root ``Manufacturer`` dataset (or attribute) as text, '' when absent."""
    for k in f.keys():
        if k.strip().lower() == "manufacturer" and isinstance(f.get(k), h5py.Dataset):
            try:
                return _str(f[k][()])
            except (TypeError, ValueError, OSError):
                return ""
    for k, v in f.attrs.items():
        if k.strip().lower() == "manufacturer":
            return _str(v)
    return ""


def is_bruker(f: h5py.File) -> bool:
    return "bruker" in manufacturer(f).lower()


def list_bruker_scans(f: h5py.File) -> list[str]:
    """Root groups holding an EBSD group (both Data and Header, else :class:`EBSDFormatError`), natural order."""
    out = []
    for k in f.keys():
        if k.strip().lower() in ("manufacturer", "version") or not isinstance(f.get(f"{k}/EBSD"), h5py.Group):
            continue
        if not (isinstance(f.get(f"{k}/EBSD/Data"), h5py.Group) and isinstance(f.get(f"{k}/EBSD/Header"), h5py.Group)):
            raise EBSDFormatError(f"{f.filename}: scan {k!r} has an EBSD group without both Data and Header; the file "
                                  "is damaged")
        out.append(k)
    return sorted(out, key=natural_key)


def _phases(path, hdr: h5py.Group) -> dict[int, Phase]:
    info: dict[int, Phase] = {}
    for pid, g in phase_groups(path, hdr):
        if pid < 1:
            raise fmt_error(path, f"{g.name}: phase id {pid} < 1 (0 means not indexed)")
        it = scalar(path, g, ("IT",), "i")
        sym = laue_from_space_group(it)
        if sym is None:
            raise fmt_error(path, f"{g.name}/IT = {it} is not a space-group number 1..230")
        name = scalar(path, g, ("Name",), "s", required=False) or scalar(path, g, ("Formula",), "s", required=False) \
            or f"phase {pid}"
        lat = (1.0, 1.0, 1.0, 90.0, 90.0, 90.0)
        ds = g.get("LatticeConstants")
        if isinstance(ds, h5py.Dataset):
            a = np.asarray(ds[()], dtype=np.float64).ravel() if ds.dtype.kind in "fiu" else np.empty(0)
            if a.size != 6 or not np.isfinite(a).all():
                raise fmt_error(path, f"{ds.name} must hold 6 finite numbers")
            lat = tuple(float(v) for v in a)
        info[pid] = Phase(name=name, symmetry=sym, lattice=lat)
    if not info:
        raise fmt_error(path, f"{hdr.name}/Phases defines no phase")
    return info


def _arr(path, g: h5py.Group, names, n: int | None, required=True) -> np.ndarray | None:
    for nm in (names,) if isinstance(names, str) else names:
        ds = g.get(nm)
        if isinstance(ds, h5py.Dataset):
            if ds.dtype.kind not in "fiu" or (n is not None and ds.size != n):
                raise fmt_error(path, f"{ds.name} holds {ds.size} values of dtype {ds.dtype}; expected {n} numbers")
            a = np.asarray(ds[()], dtype=np.float64).ravel()
            if not np.isfinite(a).all():
                raise fmt_error(path, f"{ds.name} contains NaN/inf")
            return a
    if required:
        raise fmt_error(path, f"{g.name} has no {names} dataset")
    return None


def _scan_layout(f, path, s):
    """(nrows, ncols, dx, dy, rows, cols) of scan ``s``; rows/cols are per-point positions or None (raster)."""
    hdr, d = f[s]["EBSD/Header"], f[s]["EBSD/Data"]
    grid = scalar(path, hdr, ("Grid Type",), "s", required=False)
    if grid and grid.lower() != "isometric":
        raise fmt_error(path, f"{hdr.name}/Grid Type = {grid!r}: only square ('isometric') grids are read")
    phi1 = d.get("phi1")
    if not isinstance(phi1, h5py.Dataset):
        raise fmt_error(path, f"{d.name} has no phi1 dataset")
    n = phi1.size
    sem = None
    for loc in (f"{s}/SEM", f"{s}/EBSD/SEM"):
        if isinstance(f.get(loc), h5py.Group):
            sem = f[loc]
    rows = cols = None
    if sem is not None:
        iy = _arr(path, sem, ("IY", "SEM IY"), None, required=False)
        ix = _arr(path, sem, ("IX", "SEM IX"), None, required=False)
        if iy is not None and ix is not None:
            if iy.size != n or ix.size != n or (iy != np.rint(iy)).any() or (ix != np.rint(ix)).any():
                raise fmt_error(path, f"{sem.name}: IX/IY must hold {n} integer positions")
            rows, cols = (iy - iy.min()).astype(np.int64), (ix - ix.min()).astype(np.int64)
    if rows is not None:
        nrows, ncols = int(rows.max()) + 1, int(cols.max()) + 1
        if nrows * ncols > 4 * n + 16:
            raise fmt_error(path, f"{s}: IX/IY span {nrows} x {ncols} for only {n} points")
    else:
        nrows = scalar(path, hdr, ("NROWS",), "i")
        ncols = scalar(path, hdr, ("NCOLS",), "i")
        if nrows * ncols != n:
            raise fmt_error(path, f"{d.name} holds {n} points but NROWS x NCOLS = {nrows} x {ncols}")
    dx = scalar(path, hdr, ("XSTEP",), "f", required=False)
    dy = scalar(path, hdr, ("YSTEP",), "f", required=False)
    if not dx or dx <= 0 or not dy or dy <= 0:
        xs = _arr(path, d, ("X SAMPLE",), n, required=False)
        ys = _arr(path, d, ("Y SAMPLE",), n, required=False)
        sx = infer_step(xs) if xs is not None else 0.0
        sy = infer_step(ys) if ys is not None else 0.0
        dx = dx if dx and dx > 0 else (sx or sy)
        dy = dy if dy and dy > 0 else (sy or sx)
        if not dx or not dy:
            raise fmt_error(path, f"{hdr.name}: no XSTEP/YSTEP and no X/Y SAMPLE coordinates to find the step")
    if nrows < 1 or ncols < 1:
        raise fmt_error(path, f"{s}: empty map ({nrows} x {ncols})")
    return nrows, ncols, float(dx), float(dy), rows, cols


def read_bruker_h5(path, scan=None, z_spacing: float | None = None, progress: bool = False) -> EBSDVolume:
    """Read the scan(s) of a Bruker ESPRIT h5ebsd file (all stacked along z, or one: ``scan`` = name/index)."""
    path = Path(path)
    with FormatContext(path, "reading Bruker h5ebsd"):
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise fmt_error(path, f"not a readable HDF5 file ({exc})") from None
        with f:
            return _read(f, path, scan, z_spacing, progress)


def _read(f, path, scan, z_spacing, progress) -> EBSDVolume:
    scans = list_bruker_scans(f)
    if not scans:
        raise fmt_error(path, "no <scan>/EBSD/Data + EBSD/Header groups; not a Bruker h5ebsd file")
    scans = select_scans(path, scans, scan)
    layouts = [_scan_layout(f, path, s) for s in scans]
    phase_info = _phases(path, f[scans[0]]["EBSD/Header"])
    Y, X, dx, dy = layouts[0][:4]
    for s, lay in zip(scans[1:], layouts[1:]):
        ph = _phases(path, f[s]["EBSD/Header"])
        if lay[:2] != (Y, X) or not (math.isclose(lay[2], dx, rel_tol=1e-5) and math.isclose(lay[3], dy, rel_tol=1e-5)) \
                or {k: v.symmetry for k, v in ph.items()} != {k: v.symmetry for k, v in phase_info.items()}:
            raise EBSDFormatError(f"{path}: scan {s!r} is the first whose grid, step or phases differ from scan "
                                  f"{scans[0]!r} ({lay[:4]} vs {(Y, X, dx, dy)}); pick one with scan=")
    Z = len(scans)
    if z_spacing is not None:
        dz = check_z_spacing(z_spacing)
    else:
        dz = dx
        if Z > 1:
            warnings.warn(f"{path}: stacking {Z} scans with no z spacing given; assuming dz = dx = {dx} um",
                          stacklevel=3)
    quats = torch.zeros((Z, Y, X, 4), dtype=torch.float32)
    quats[..., 0] = 1
    phases = torch.zeros((Z, Y, X), dtype=torch.int32)
    ci = torch.full((Z, Y, X), -1.0, dtype=torch.float32)
    iq = torch.zeros((Z, Y, X), dtype=torch.float32)
    valid = torch.zeros((Z, Y, X), dtype=torch.bool)
    measured = torch.zeros((Z, Y, X), dtype=torch.bool)
    ids = np.array(sorted(phase_info))
    with progress_bar(Z, "reading Bruker scans", progress) as bar:
        for z, (s, (_, _, _, _, rows, cols)) in enumerate(zip(scans, layouts)):
            d = f[s]["EBSD/Data"]
            n = d["phi1"].size
            eul = np.column_stack([_arr(path, d, k, n) for k in ("phi1", "PHI", "phi2")])
            if np.abs(eul).max(initial=0.0) > 720.0 + 1e-6:
                raise fmt_error(path, f"{d.name}: Euler angles exceed 720; Bruker stores degrees")
            p = _arr(path, d, ("Phase",), n)
            if (p != np.rint(p)).any() or (p < 0).any():
                raise fmt_error(path, f"{d.name}/Phase holds non-integer or negative values")
            bad = np.setdiff1d(np.unique(p).astype(np.int64), np.append(ids, 0))
            if bad.size:
                raise fmt_error(path, f"{d.name}/Phase holds id(s) {bad[:5].tolist()} not in the header {ids.tolist()}")
            rq = _arr(path, d, ("RadonQuality",), n, required=False)
            flat = np.arange(n) if rows is None else rows * X + cols
            if np.bincount(flat, minlength=Y * X).max(initial=0) > 1:
                raise fmt_error(path, f"{s}: IX/IY place two points on the same map position")
            q = euler_rows_to_quat(np.deg2rad(eul))
            tflat = torch.from_numpy(flat.astype(np.int64))
            ok = p > 0
            quats[z].view(-1, 4)[tflat] = q
            phases[z].view(-1)[tflat] = torch.from_numpy(p.astype(np.int32))
            valid[z].view(-1)[tflat] = torch.from_numpy(ok)
            measured[z].view(-1)[tflat] = True
            ci[z].view(-1)[tflat] = torch.from_numpy(np.where(ok, 1.0, -1.0).astype(np.float32))
            iq[z].view(-1)[tflat] = torch.from_numpy((rq if rq is not None else ok).astype(np.float32))
            bar.update(1)
    if not bool(measured.all()):
        warnings.warn(f"{path}: the region of interest is not a rectangle; {int((~measured).sum())} point(s) of its "
                      "bounding box were not scanned and are marked not measured", stacklevel=3)
    meta = {"source": str(path), "format": "bruker_h5ebsd", "scans": scans, "manufacturer": manufacturer(f)}
    return assemble_volume(quaternions=quats, phases=phases, confidence=ci, image_quality=iq,
                           spacing=(dz, dy, dx), origin=(0.0, 0.0, 0.0), phase_info=phase_info, valid=valid,
                           metadata=meta, measured=measured)
