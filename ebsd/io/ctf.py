"""Oxford Instruments Channel 5 / AZtec ``.ctf`` (one 2-D map, text): reader and writer.

Layout: tab-separated header lines (``Channel Text File``, ``Prj``, ``Author``, ``JobMode`` (``Grid``,
``Interactive`` ...), ``XCells``, ``YCells``, ``XStep``, ``YStep`` (um), ``AcqE1..3``, the Euler reference note
``Euler angles refer to Sample Coordinate system (CS0)!`` with Mag/KV/TiltAngle ..., ``Phases  N``, then one
line per phase: ``a;b;c  alpha;beta;gamma  name  LaueGroup  SpaceGroup  ...``), the column line
``Phase X Y Bands Error Euler1 Euler2 Euler3 MAD BC BS`` (any extra columns after these are allowed), then one
row per point, x running fastest. Decimal commas (Bruker exports) are accepted in the header.

Conventions (checked against :func:`orix.io.load` on real files, ``tests/test_io_ctf.py``):

* Laue group numbers (Oxford/HKL enumeration, as orix's ctf reader): 1 -1, 2 2/m, 3 mmm, 4 4/m, 5 4/mmm,
  6 -3, 7 -3m, 8 6/m, 9 6/mmm, 10 m-3, 11 m-3m.
* Euler angles are Bunge ZXZ in **degrees**, converted to radians and then to quaternions exactly as orix does
  (``Rotation.from_euler(..., degrees=True)``): no reference-frame change is applied. The header note
  "Euler angles refer to Sample Coordinate system (CS0)" is kept in ``metadata["ctf_euler_reference"]``; MTEX's
  optional ``convertEuler2SpatialReferenceFrame`` rotation is *not* applied (as orix).
* Phase 0 = not indexed (``valid`` False). ``Error`` 5 ("not yet analysed": the job was cancelled before this
  point) on a phase-0 point = not measured (``measured`` False), with a warning.
* ``image_quality`` <- ``BC`` (band contrast); ``confidence`` <- 1 for indexed points, -1 for not indexed (a
  .ctf has no confidence index). MAD, BS, Bands, Error and extra columns are not kept (their names are listed
  in ``metadata["ctf_columns"]``).
* Grid: see :mod:`ebsd.io._grid` (stale ``XCells``/``YCells`` with complete x, y -> coordinates win, warned;
  truncated map -> unwritten points not measured, warned). Hexagonal maps (odd rows offset by half a step) raise
  :class:`EBSDFormatError` unless ``hex_to_square=True`` (nearest-neighbour resampling onto a square grid of
  step ``XStep``). ``JobMode Interactive`` (individually placed points, not a map) is refused.
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import EBSDFormatError, EBSDValueError
from ..volume import EBSDVolume, Phase
from ._common import FormatContext, check_finite, euler_rows_to_quat, fmt_error, quat_to_euler_np, read_text_bytes
from ._grid import decode_text, hex_to_square_index, load_table, looks_hex, resolve_grid
from .ang import AngSlice

__all__ = ["read_ctf", "parse_ctf", "write_ctf", "CTF_LAUE", "LAUE_TO_CTF"]

# Oxford/HKL Laue group enumeration (orix.io.plugins.ctf, the .h5oina "Laue Group" dataset)
CTF_LAUE: dict[int, str] = {
    1: "-1", 2: "2/m", 3: "mmm", 4: "4/m", 5: "4/mmm", 6: "-3", 7: "-3m", 8: "6/m", 9: "6/mmm", 10: "m-3",
    11: "m-3m",
}
LAUE_TO_CTF: dict[str, int] = {v: k for k, v in CTF_LAUE.items()}

_MAX_HEADER_LINES = 10_000
_NOT_ANALYSED = 5  # .ctf Error code: "not yet analysed (job cancelled before point)"


def _num(path, key: str, value: str, integer: bool = False) -> float:
    s = value.strip().split()[0] if value.strip() else ""
    try:
        v = float(s.replace(",", "."))
    except ValueError:
        raise fmt_error(path, f"header field {key} has value {value!r}, expected a number") from None
    if not math.isfinite(v):
        raise fmt_error(path, f"header field {key} is {value!r}, expected a finite number")
    if integer and (v != int(v) or v < 0 or v > 10**8):
        raise fmt_error(path, f"header field {key} is {value!r}, expected a non-negative integer")
    return int(v) if integer else v


def _split_header(raw: bytes, path) -> tuple[list[str], list[str], int]:
    """Header lines, the column names and the byte offset of the first data row."""
    lines: list[str] = []
    pos = 0
    n = len(raw)
    while pos < n:
        end = raw.find(b"\n", pos)
        if end < 0:
            end = n
        line = decode_text(raw[pos:end]).rstrip("\r\n")
        pos = end + 1
        toks = line.split()
        if len(toks) >= 3 and toks[0] == "Phase" and toks[1] == "X" and toks[2] == "Y":
            return lines, toks, pos
        lines.append(line)
        if len(lines) > _MAX_HEADER_LINES:
            break
    raise fmt_error(path, "no column line 'Phase X Y ...' found; not a .ctf file, or its header was cut off")


def _parse_phases(lines: list[str], path) -> dict[int, Phase]:
    idx = next((i for i, l in enumerate(lines) if l.split("\t")[0].strip() == "Phases"), None)
    if idx is None:
        raise fmt_error(path, "no 'Phases' header line; the crystal symmetry is unknown")
    parts = lines[idx].split("\t")
    nph = _num(path, "Phases", parts[1] if len(parts) > 1 else "", integer=True)
    if nph < 1 or idx + nph >= len(lines) + 1 or nph > 1000:
        raise fmt_error(path, f"'Phases {nph}' but {len(lines) - idx - 1} phase line(s) follow")
    info: dict[int, Phase] = {}
    for k in range(nph):
        if idx + 1 + k >= len(lines):
            raise fmt_error(path, f"'Phases {nph}' but only {k} phase line(s) follow")
        f = lines[idx + 1 + k].split("\t")
        if len(f) < 4:
            raise fmt_error(path, f"phase line {k + 1} {lines[idx + 1 + k]!r} needs 'a;b;c  alpha;beta;gamma  "
                            "name  LaueGroup ...'")
        try:
            abc = [float(t.replace(",", ".")) for t in f[0].split(";")]
            ang = [float(t.replace(",", ".")) for t in f[1].split(";")]
        except ValueError:
            raise fmt_error(path, f"phase {k + 1}: lattice {f[0]!r} / {f[1]!r} are not numbers") from None
        if len(abc) != 3 or len(ang) != 3 or not all(math.isfinite(v) for v in abc + ang):
            raise fmt_error(path, f"phase {k + 1}: lattice {f[0]!r} / {f[1]!r} need 3 + 3 finite numbers")
        name = f[2].strip() or f"phase {k + 1}"
        try:
            laue = int(f[3].strip())
        except ValueError:
            raise fmt_error(path, f"phase {k + 1} ({name!r}): Laue group {f[3]!r} is not an integer") from None
        if laue not in CTF_LAUE:
            raise fmt_error(path, f"phase {k + 1} ({name!r}): Laue group {laue} is not an Oxford Laue group number "
                            "(1 -1, 2 2/m, 3 mmm, 4 4/m, 5 4/mmm, 6 -3, 7 -3m, 8 6/m, 9 6/mmm, 10 m-3, 11 m-3m)")
        info[k + 1] = Phase(name=name, symmetry=CTF_LAUE[laue], lattice=tuple(abc + ang))
    return info


def parse_ctf(path, hex_to_square: bool = False) -> AngSlice:
    """Parse one .ctf file into an :class:`~ebsd.io.ang.AngSlice`; raises :class:`EBSDFormatError` on damage."""
    path = Path(path)
    with FormatContext(path, "reading .ctf"):
        return _parse(path, hex_to_square)


def _parse(path: Path, hex_to_square: bool) -> AngSlice:
    raw = read_text_bytes(path, ".ctf")
    lines, cols, start = _split_header(raw, path)
    hdr: dict[str, str] = {}
    euler_note = ""
    for l in lines:
        f = l.split("\t")
        key = f[0].strip()
        if key.startswith("Euler angles refer to"):
            euler_note = l.strip()
        elif key and len(f) > 1 and key not in hdr:
            hdr[key] = f[1].strip()
    job = hdr.get("JobMode", "Grid")
    if job.lower().startswith("interactive"):
        raise fmt_error(
            path, "JobMode is 'Interactive': the file holds individually placed points, not a map on a grid, so it "
            "cannot be read as an EBSD volume (re-acquire or export the area as a Grid map)")
    phase_info = _parse_phases(lines, path)
    names = [c.lower() for c in cols]
    need = {"phase": "Phase", "x": "X", "y": "Y", "euler1": "Euler1", "euler2": "Euler2", "euler3": "Euler3"}
    ci = {k: names.index(k) for k in need if k in names}
    missing = [v for k, v in need.items() if k not in ci]
    if missing:
        raise fmt_error(path, f"column line {cols} lacks {missing}")
    data, cut = load_table(raw[start:], path, max(ci.values()) + 1)
    if data.size == 0:
        raise fmt_error(path, "the header is present but there are no data rows (truncated file?)")
    n, ncol = data.shape
    if ncol < len(cols):
        warnings.warn(f"{path}: the column line names {len(cols)} columns but the rows hold {ncol}; "
                      f"column(s) {cols[ncol:]} have no data and are ignored", stacklevel=3)
        cols, names = cols[:ncol], names[:ncol]
    elif ncol > len(cols):
        extra = [f"column{i + 1}" for i in range(len(cols), ncol)]
        cols, names = cols + extra, names + extra
    col = lambda name: data[:, names.index(name)] if name in names else None  # noqa: E731
    ph, x, y = col("phase"), col("x"), col("y")
    euler = np.column_stack([col("euler1"), col("euler2"), col("euler3")])
    bc, err = col("bc"), col("error")
    check_finite(path, "Euler angle columns", euler)
    check_finite(path, "X/Y columns", np.column_stack([x, y]))
    check_finite(path, "Phase column", ph)
    if bc is not None:
        check_finite(path, "BC column", bc)
    if err is not None:
        check_finite(path, "Error column", err)
    emax = float(np.abs(euler).max(initial=0.0))
    if emax > 720.0 + 1e-6:
        raise fmt_error(path, f"Euler angles reach {emax:.4g}; .ctf angles are degrees (<= 360); the columns are garbled")
    if (ph != np.rint(ph)).any() or ph.min(initial=0) < 0 or ph.max(initial=0) > len(phase_info):
        bad = np.unique(ph[(ph != np.rint(ph)) | (ph < 0) | (ph > len(phase_info))])[:5].tolist()
        raise fmt_error(path, f"Phase column holds value(s) {bad} but the header defines phases 1..{len(phase_info)} "
                        "(0 = not indexed)")

    dx_h = _num(path, "XStep", hdr["XStep"]) if "XStep" in hdr else None
    dy_h = _num(path, "YStep", hdr["YStep"]) if "YStep" in hdr else None
    nx_h = _num(path, "XCells", hdr["XCells"], integer=True) if "XCells" in hdr else None
    ny_h = _num(path, "YCells", hdr["YCells"], integer=True) if "YCells" in hdr else None
    if (dx_h is not None and dx_h < 0) or (dy_h is not None and dy_h < 0):
        raise fmt_error(path, f"XStep/YStep = {dx_h}/{dy_h} must be positive")
    measured = None
    grid = "SqrGrid"
    if looks_hex(x, y, dx_h):
        if not hex_to_square:
            raise fmt_error(
                path, "hexagonal grid (odd rows offset by half a step): voxels must lie on a square grid. Pass "
                "hex_to_square=True to resample here by nearest neighbour onto a square grid of step XStep, or "
                "convert the map to a square grid in the acquisition software")
        step = dx_h or float(np.median(np.diff(np.sort(x[np.round(y, 5) == np.round(y.min(), 5)]))))
        try:
            idx, nrows, ncols, x0, y0 = hex_to_square_index(x, y, step)
        except ValueError as exc:
            raise fmt_error(path, f"cannot resample the hexagonal grid: {exc}") from None
        dx = dy = step
        grid = "HexGrid resampled to SqrGrid"

        def grid_arr(a, fill=0):
            return a[idx].reshape(nrows, ncols, *a.shape[1:])
    else:
        place = resolve_grid(x, y, nrows_h=ny_h, ncols_h=nx_h, dx_h=dx_h, dy_h=dy_h, path=path,
                             header_names=("YCells", "XCells", "XStep", "YStep"), truncated_tail=cut)
        nrows, ncols, dx, dy, x0, y0 = place.nrows, place.ncols, place.dx, place.dy, place.x0, place.y0
        measured = place.measured

        def grid_arr(a, fill=0):
            return place.to_grid(a, fill)

    phases = grid_arr(ph, 0).astype(np.int32)
    valid = phases > 0
    if err is not None:
        not_analysed = grid_arr((err == _NOT_ANALYSED) & (ph == 0), False)
        if not_analysed.any():
            k = int(not_analysed.sum())
            warnings.warn(f"{path}: {k} point(s) have Error 5 ('not yet analysed': the job was cancelled before "
                          "them); they are marked not measured", stacklevel=3)
            measured = ~not_analysed if measured is None else measured & ~not_analysed
    if measured is not None:
        valid &= measured
    conf = np.where(valid, np.float32(1), np.float32(-1)).astype(np.float32)
    iq = grid_arr(bc, 0.0).astype(np.float32) if bc is not None else valid.astype(np.float32)
    q = euler_rows_to_quat(np.deg2rad(grid_arr(euler, 0.0)))
    header = lines + ["\t".join(cols)]
    return AngSlice(quaternions=q, phases=phases, confidence=conf, image_quality=iq, valid=valid, dy=dy, dx=dx,
                    y0=y0, x0=x0, phase_info=phase_info, header=header, n_columns=ncol, scan_unit="um", grid=grid,
                    phase0_mapped=None, measured=measured, extra={"ctf_euler_reference": euler_note,
                                                                  "ctf_columns": cols, "ctf_job_mode": job})


def read_ctf(path, z_spacing: float | None = None, hex_to_square: bool = False) -> EBSDVolume:
    """Read one ``.ctf`` file as a ``Z = 1`` :class:`EBSDVolume` (``dz`` = ``z_spacing`` or ``dx``)."""
    s = parse_ctf(path, hex_to_square=hex_to_square)
    dz = float(z_spacing) if z_spacing else s.dx
    meta = {"source": str(path), "format": "ctf", "ctf_header": s.header, **s.extra}
    return EBSDVolume(
        quaternions=s.quaternions[None], phases=torch.from_numpy(s.phases[None]),
        confidence=torch.from_numpy(s.confidence[None]), image_quality=torch.from_numpy(s.image_quality[None]),
        spacing=(dz, s.dy, s.dx), origin=(0.0, s.y0, s.x0), phase_info=s.phase_info,
        valid=torch.from_numpy(s.valid[None]),
        measured=None if s.measured is None else torch.from_numpy(s.measured[None]), metadata=meta)


# ---------------------------------------------------------------------------------------------- writer
def write_ctf(vol: EBSDVolume, path, z: int = 0, overwrite: bool = False) -> Path:
    """Write slice ``z`` of ``vol`` as an Oxford ``.ctf`` (columns Phase X Y Bands Error Euler1-3 MAD BC BS).

    Phase ids must be 1..N (a .ctf numbers its phases by their order); other ids raise
    :class:`EBSDValueError`. Not-indexed voxels (``valid`` False) get Phase 0 and Error 3 ("no solution");
    voxels never measured get Phase 0 and Error 5 ("not yet analysed"), which :func:`read_ctf` reads back as
    not measured. ``image_quality`` is written as BC. What is lost: ``confidence`` (a .ctf has no CI column),
    the orientation of not-indexed voxels, phase ids of invalid voxels. Euler angles are written in degrees
    with 6 decimals (~2e-8 rad). Written via a temporary file and a rename.
    """
    from ._atomic import atomic_file

    path = Path(path)
    Z, Y, X = vol.shape
    if not 0 <= z < Z:
        raise EBSDValueError(f"slice {z} outside 0..{Z - 1}")
    ids = sorted(vol.phase_info)
    if ids != list(range(1, len(ids) + 1)):
        raise EBSDValueError(f"a .ctf numbers phases 1..N by their order; this volume's phase ids are {ids}")
    for pid in ids:
        if vol.phase_info[pid].symmetry not in LAUE_TO_CTF:
            raise EBSDValueError(f"phase {pid}: symmetry {vol.phase_info[pid].symmetry!r} has no .ctf Laue group")
    dz, dy, dx = vol.spacing
    z0, y0, x0 = vol.origin
    hdr = ["Channel Text File", f"Prj\t{Path(str(vol.metadata.get('source', 'ebsd-tensor-toolkit'))).name}",
           "Author\t[ebsd-tensor-toolkit]", "JobMode\tGrid", f"XCells\t{X}", f"YCells\t{Y}", f"XStep\t{dx:.9g}",
           f"YStep\t{dy:.9g}", "AcqE1\t0", "AcqE2\t0", "AcqE3\t0",
           "Euler angles refer to Sample Coordinate system (CS0)!\tMag\t0\tCoverage\t100\tDevice\t0\tKV\t0\t"
           "TiltAngle\t70\tTiltAxis\t0", f"Phases\t{len(ids)}"]
    for pid in ids:
        p = vol.phase_info[pid]
        name = re.sub(r"[\t\r\n]", " ", str(p.name)) or f"phase {pid}"
        a = ";".join(f"{v:.4f}" for v in p.lattice[:3])
        b = ";".join(f"{v:.4f}" for v in p.lattice[3:])
        hdr.append(f"{a}\t{b}\t{name}\t{LAUE_TO_CTF[p.symmetry]}\t0")
    hdr.append("Phase\tX\tY\tBands\tError\tEuler1\tEuler2\tEuler3\tMAD\tBC\tBS")
    valid = vol.valid[z].cpu().numpy().ravel()
    meas = vol.measured[z].cpu().numpy().ravel()
    ph = np.where(valid, vol.phases[z].cpu().numpy().ravel(), 0)
    err = np.where(valid, 0, np.where(meas, 3, _NOT_ANALYSED))
    eul = np.rad2deg(quat_to_euler_np(vol.quaternions[z]).reshape(-1, 3))
    eul = np.where(valid[:, None], eul, 0.0)
    yy, xx = np.meshgrid(y0 + dy * np.arange(Y), x0 + dx * np.arange(X), indexing="ij")
    iq = vol.image_quality[z].cpu().numpy().astype(np.float64).ravel()
    zero = np.zeros_like(iq)
    cols = np.column_stack([ph, xx.ravel(), yy.ravel(), zero, err, eul, zero, iq, zero])
    fmt = "%d\t%.9g\t%.9g\t%d\t%d\t%.6f\t%.6f\t%.6f\t%.4f\t%.6g\t%d"
    with atomic_file(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", newline="\r\n", encoding="utf-8") as f:
            f.write("\n".join(hdr) + "\n")
            np.savetxt(f, cols, fmt=fmt)
    return path
