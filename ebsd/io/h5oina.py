"""Oxford Instruments AZtec ``.h5oina`` (HDF5): reader of EBSD maps, one slice or a 3-D stack of slices.

Follows the public "Oxford Instruments NanoAnalysis HDF5 File Specification" (github.com/oinanoanalysis/h5oina,
format versions 1.0-8.0)::

    /Manufacturer ("Oxford Instruments"), /Software Version, /Format Version, /Index (slice names, e.g. "1")
    /<slice>/EBSD/Header/  X Cells, Y Cells (int32), X Step, Y Step (um), Specimen Orientation Euler,
                           Phases/<n>/{Phase Name, Lattice Dimensions (1,3) A, Lattice Angles (1,3) rad,
                                      Laue Group (int32, attribute Symbol), Space Group, Reference}
    /<slice>/EBSD/Data/    Phase (uint8, 0 = not indexed), Euler (size,3) float32 radians (Bunge ZXZ,
                           crystal CS2 -> sample surface CS1), X, Y (um, origin top left), Band Contrast,
                           Band Slope, Bands, Error (0 NotAnalyzed, 1 Success, 2 NoSolution, ...),
                           Mean Angular Deviation (rad), ...   (size = X Cells * Y Cells rows, x fastest)

Conventions:

* Laue group numbers: the Oxford enumeration of ``.ctf`` files (1 -1 ... 11 m-3m, :data:`ebsd.io.ctf.CTF_LAUE`);
  the ``Symbol`` attribute, when it names a Laue class, is used instead.
* Orientations: ``Euler`` (radians) -> quaternions exactly as our ``.ctf`` reader (and orix's) do with the
  same angles: no reference-frame change (the spec's "Specimen Orientation Euler" is kept in metadata).
* ``valid`` = Phase > 0. Pixels outside an irregular acquisition area hold NaN (spec): they, and Error 0
  (NotAnalyzed) pixels of phase 0, are ``measured`` False. ``image_quality`` <- Band Contrast (else Pattern
  Quality); ``confidence`` <- 1 indexed / -1 not.
* Several slices (``Index``) are stacked along z when their grids and phases agree (else the first odd slice
  is named); ``scan=`` picks one slice (name or index). ``z_spacing`` gives dz (the format has none; default
  dx with a warning).
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
    _NAME_TO_LAUE, FormatContext, assemble_volume, check_z_spacing, euler_rows_to_quat, fmt_error, natural_key,
    progress_bar,
)
from .h5oim import phase_groups, scalar, select_scans

__all__ = ["read_h5oina", "is_h5oina", "list_slices"]


def _str(v) -> str:
    if isinstance(v, np.ndarray):
        v = v.ravel()[0] if v.size else b""
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8", errors="replace").rstrip("\x00 ").strip()
    return str(v).strip()


def list_slices(f: h5py.File) -> list[str]:
    """Slice names: the root ``Index`` dataset when readable, else root groups with ``EBSD/Data`` and
    ``EBSD/Header``; only those that hold EBSD data, in natural order."""
    names: list[str] = []
    idx = f.get("Index")
    if isinstance(idx, h5py.Dataset) and idx.dtype.kind in "SOU" and 0 < idx.size <= 100_000:
        names = [_str(v) for v in np.asarray(idx[()]).ravel()]
    if not names:
        names = [k for k in f.keys() if isinstance(f.get(k), h5py.Group)]
    out = []
    for n in names:
        if not isinstance(f.get(f"{n}/EBSD"), h5py.Group):
            continue  # an EDS-only or image-only slice
        if not (isinstance(f.get(f"{n}/EBSD/Data"), h5py.Group) and isinstance(f.get(f"{n}/EBSD/Header"), h5py.Group)):
            raise EBSDFormatError(f"{f.filename}: slice {n!r} has an EBSD group without both Data and Header; the "
                                  "file is damaged")
        out.append(n)
    return sorted(dict.fromkeys(out), key=natural_key)


def is_h5oina(f: h5py.File) -> bool:
    man = f.get("Manufacturer")
    if isinstance(man, h5py.Dataset) and "oxford" in _str(man[()]).lower():
        return True
    return isinstance(f.get("Format Version"), h5py.Dataset) and isinstance(f.get("Index"), h5py.Dataset)


def _vec(path, g: h5py.Group, name: str, n: int) -> np.ndarray | None:
    ds = g.get(name)
    if not isinstance(ds, h5py.Dataset):
        return None
    if ds.dtype.kind not in "fiu" or ds.size != n:
        raise fmt_error(path, f"{ds.name} must hold {n} numbers, got {ds.size} of dtype {ds.dtype}")
    a = np.asarray(ds[()], dtype=np.float64).ravel()
    if not np.isfinite(a).all():
        raise fmt_error(path, f"{ds.name} contains NaN/inf")
    return a


def _phases(path, hdr: h5py.Group) -> dict[int, Phase]:
    from .ctf import CTF_LAUE

    info: dict[int, Phase] = {}
    for pid, g in phase_groups(path, hdr):
        if not 1 <= pid <= 255:
            raise fmt_error(path, f"{g.name}: phase id {pid} outside 1..255 (Phase is uint8, 0 = not indexed)")
        ds = g.get("Laue Group")
        if not isinstance(ds, h5py.Dataset):
            raise fmt_error(path, f"{g.name} has no 'Laue Group' dataset")
        sym = _NAME_TO_LAUE.get(_str(ds.attrs.get("Symbol", b"")).replace(" ", ""))
        if sym is None:
            code = scalar(path, g, ("Laue Group",), "i")
            if code not in CTF_LAUE:
                raise fmt_error(path, f"{ds.name} = {code} is not an Oxford Laue group number (1 -1 ... 11 m-3m)")
            sym = CTF_LAUE[code]
        name = scalar(path, g, ("Phase Name",), "s", required=False) or f"phase {pid}"
        dims = _vec(path, g, "Lattice Dimensions", 3)
        angs = _vec(path, g, "Lattice Angles", 3)
        lat = (tuple(dims) if dims is not None else (1.0, 1.0, 1.0)) + \
            (tuple(float(np.degrees(a)) for a in angs) if angs is not None else (90.0, 90.0, 90.0))
        info[pid] = Phase(name=name, symmetry=sym, lattice=tuple(float(v) for v in lat))
    if not info:
        raise fmt_error(path, f"{hdr.name}/Phases defines no phase")
    return info


def read_h5oina(path, scan=None, z_spacing: float | None = None, progress: bool = False) -> EBSDVolume:
    """Read the EBSD map(s) of an Oxford ``.h5oina``: all slices stacked along z, or one (``scan`` = slice
    name or index)."""
    path = Path(path)
    with FormatContext(path, "reading .h5oina"):
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise fmt_error(path, f"not a readable HDF5 file ({exc})") from None
        with f:
            return _read(f, path, scan, z_spacing, progress)


def _grid(path, hdr: h5py.Group):
    nx = scalar(path, hdr, ("X Cells",), "i")
    ny = scalar(path, hdr, ("Y Cells",), "i")
    dx = scalar(path, hdr, ("X Step",), "f")
    dy = scalar(path, hdr, ("Y Step",), "f")
    if nx < 1 or ny < 1:
        raise fmt_error(path, f"{hdr.name}: X Cells x Y Cells = {nx} x {ny} is empty")
    if dx <= 0 or (dy <= 0 and ny > 1):
        raise fmt_error(path, f"{hdr.name}: X Step/Y Step = {dx}/{dy} must be positive")
    return ny, nx, dx, dy if dy > 0 else dx


def _read(f: h5py.File, path: Path, scan, z_spacing, progress) -> EBSDVolume:
    slices = list_slices(f)
    if not slices:
        raise fmt_error(path, "no <slice>/EBSD/Data + EBSD/Header groups: the file holds no EBSD map")
    slices = select_scans(path, slices, scan, what="slice")
    hdr0 = f[slices[0]]["EBSD/Header"]
    Y, X, dx, dy = _grid(path, hdr0)
    phase_info = _phases(path, hdr0)
    sym0 = {k: v.symmetry for k, v in phase_info.items()}
    n = Y * X
    for z, s in enumerate(slices):
        hdr = f[s]["EBSD/Header"]
        if z:
            g = _grid(path, hdr)
            ph = _phases(path, hdr)
            what = None
            if g[:2] != (Y, X):
                what = f"grid {g[0]} x {g[1]} vs {Y} x {X}"
            elif not (math.isclose(g[2], dx, rel_tol=1e-5) and math.isclose(g[3], dy, rel_tol=1e-5)):
                what = f"step {g[3]} x {g[2]} vs {dy} x {dx} um"
            elif {k: v.symmetry for k, v in ph.items()} != sym0:
                what = f"phases {ph} vs {phase_info}"
            if what:
                raise EBSDFormatError(f"{path}: slice {s!r} is the first whose {what.split()[0]} differs from slice "
                                      f"{slices[0]!r} ({what}); pick one with scan=")
        d = f[s]["EBSD/Data"]
        for k, comps in (("Euler", 3), ("Phase", 1)):
            ds = d.get(k)
            if not isinstance(ds, h5py.Dataset):
                raise fmt_error(path, f"{d.name} has no {k} dataset (mandatory)")
            if ds.size != n * comps or ds.dtype.kind not in "fiu":
                raise fmt_error(path, f"{ds.name} holds {ds.size} values of dtype {ds.dtype}; expected X Cells x "
                                f"Y Cells = {n} rows of {comps} number(s)")
    Z = len(slices)
    if z_spacing is not None:
        dz = check_z_spacing(z_spacing)
    else:
        dz = dx
        if Z > 1:
            warnings.warn(f"{path}: stacking {Z} slices with no z spacing given; assuming dz = dx = {dx} um "
                          "(pass z_spacing=...)", stacklevel=3)
    quats = torch.empty((Z, Y, X, 4), dtype=torch.float32)
    phases = torch.empty((Z, Y, X), dtype=torch.int32)
    ci = torch.empty((Z, Y, X), dtype=torch.float32)
    iq = torch.empty((Z, Y, X), dtype=torch.float32)
    valid = torch.empty((Z, Y, X), dtype=torch.bool)
    measured = torch.ones((Z, Y, X), dtype=torch.bool)
    ids = np.array(sorted(phase_info), dtype=np.int64)
    n_outside = 0
    with progress_bar(Z, "reading .h5oina slices", progress) as bar:
        for z, s in enumerate(slices):
            d = f[s]["EBSD/Data"]
            eul = np.asarray(d["Euler"][()], dtype=np.float64).reshape(n, 3)
            p = np.asarray(d["Phase"][()], dtype=np.float64).reshape(n)
            meas = np.isfinite(eul).all(1) & np.isfinite(p)
            eul[~meas] = 0.0
            p = np.where(meas, p, 0.0)
            if (p != np.rint(p)).any() or (p < 0).any():
                raise fmt_error(path, f"{d.name}/Phase holds non-integer or negative values")
            p = p.astype(np.int64)
            bad = np.setdiff1d(np.unique(p), np.append(ids, 0))
            if bad.size:
                raise fmt_error(path, f"{d.name}/Phase holds id(s) {bad[:5].tolist()} not defined in the header "
                                f"({ids.tolist()}; 0 = not indexed)")
            if np.abs(eul).max(initial=0.0) > 4 * math.pi + 0.01:
                raise fmt_error(path, f"{d.name}/Euler exceeds 4 pi; the spec stores radians (degrees?)")
            err = d.get("Error")
            if isinstance(err, h5py.Dataset) and err.size == n and err.dtype.kind in "fiu":
                e = np.asarray(err[()], dtype=np.float64).reshape(n)
                meas &= ~((e == 0) & (p == 0))  # NotAnalyzed
            n_outside += int((~meas).sum())
            qual = None
            for name in ("Band Contrast", "Pattern Quality"):
                ds = d.get(name)
                if isinstance(ds, h5py.Dataset) and ds.size == n and ds.dtype.kind in "fiu":
                    qual = np.nan_to_num(np.asarray(ds[()], dtype=np.float32).reshape(n), nan=0.0, posinf=0.0,
                                         neginf=0.0)
                    break
            ok = (p > 0) & meas
            euler_rows_to_quat(eul.reshape(Y, X, 3), out=quats[z])
            phases[z] = torch.from_numpy(p.astype(np.int32).reshape(Y, X))
            valid[z] = torch.from_numpy(ok.reshape(Y, X))
            measured[z] = torch.from_numpy(meas.reshape(Y, X))
            ci[z] = torch.from_numpy(np.where(ok, 1.0, -1.0).astype(np.float32).reshape(Y, X))
            iq[z] = torch.from_numpy((qual if qual is not None else ok.astype(np.float32)).reshape(Y, X))
            bar.update(1)
    if n_outside:
        warnings.warn(f"{path}: {n_outside} pixel(s) lie outside the acquisition area (NaN) or were not analysed; "
                      "they are marked not measured", stacklevel=3)
    x0 = y0 = 0.0
    d0 = f[slices[0]]["EBSD/Data"]
    try:
        xs, ys = d0.get("X"), d0.get("Y")
        if isinstance(xs, h5py.Dataset) and isinstance(ys, h5py.Dataset) and xs.size == n and ys.size == n:
            x0 = float(np.nanmin(np.asarray(xs[()], dtype=np.float64)))
            y0 = float(np.nanmin(np.asarray(ys[()], dtype=np.float64)))
            if not (math.isfinite(x0) and math.isfinite(y0)):
                x0 = y0 = 0.0
    except (TypeError, ValueError):
        x0 = y0 = 0.0
    meta = {"source": str(path), "format": "h5oina", "slices": slices}
    for k in ("Manufacturer", "Software Version", "Format Version"):
        ds = f.get(k)
        if isinstance(ds, h5py.Dataset) and ds.dtype.kind in "SOU":
            meta[k.lower().replace(" ", "_")] = _str(ds[()])
    so = hdr0.get("Specimen Orientation Euler")
    if isinstance(so, h5py.Dataset) and so.dtype.kind == "f" and so.size == 3:
        meta["specimen_orientation_euler_rad"] = np.asarray(so[()], dtype=np.float64).ravel().tolist()
    return assemble_volume(quaternions=quats, phases=phases, confidence=ci, image_quality=iq,
                           spacing=(dz, dy, dx), origin=(0.0, y0, x0), phase_info=phase_info, valid=valid,
                           metadata=meta, measured=measured)
