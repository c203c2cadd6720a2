"""EDAX/TSL ``.ang`` (one 2-D slice): reader and writer.

Layout: ``#``-prefixed header lines (``# Phase n`` blocks with ``MaterialName``, ``Symmetry`` (TSL Laue code,
43 = m-3m, 62 = 6/mmm, ...), ``LatticeConstants``; then ``GRID``, ``XSTEP``, ``YSTEP``, ``NCOLS_ODD``,
``NCOLS_EVEN``, ``NROWS``), then one row per point: ``phi1 PHI phi2`` (radians, Bunge), ``x y`` (um), ``IQ``,
``CI``, ``phase`` and optional vendor columns (SEM signal, fit, ...), x running fastest.

Conventions of this reader (all checked against :func:`orix.io.load` on real files):

* Orientations: ``q = euler_to_quat(phi1, PHI, phi2)`` exactly as orix (no reference-frame change).
* Unindexed points: ``CI < 0`` (TSL writes -1), or a phase value that names no header phase (0 in a
  multi-phase file) -> ``valid = False``. In a single-phase file, phase value 0 means "the phase" (TSL
  writes 0 there) and is mapped to that phase's id.
* Square grid only. ``HexGrid`` raises :class:`EBSDFormatError` unless ``hex_to_square=True``, which resamples
  onto a square grid of step ``XSTEP`` by nearest neighbour (what OIM's "convert to square grid" does).
* Files without ``NCOLS``/``NROWS`` (e.g. ACOM exports) get their grid from the x/y columns. Files marked as
  ACOM (NanoMegas ASTAR) give x/y in nm (as orix assumes); spacing is converted to um.
* Points may come in any order: they are placed by their x/y coordinates (:mod:`ebsd.io._grid`). A header grid
  (``NROWS``/``NCOLS``/``XSTEP``) that disagrees with coordinates forming a complete grid of their own is stale:
  the coordinates win (warned). A scan whose points stop early in raster order (truncated last row, possibly a
  line cut mid-way) keeps the header grid with the unwritten points ``measured`` False (warned). Anything else
  that fits neither is refused, naming both.
* Header text is UTF-8, or Latin-1 where it is not; CRLF line ends and any number of extra columns are read.
"""
from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import EBSDFormatError
from ..volume import EBSDVolume, Phase
from ._common import (
    FormatContext,
    LAUE_TO_TSL_CODE,
    check_finite,
    euler_rows_to_quat,
    fmt_error,
    laue_from_tsl,
    quat_to_euler_np,
    read_text_bytes,
    resolve_phase0,
)
from ._grid import decode_text, hex_to_square_index, infer_step, load_table, resolve_grid

__all__ = ["read_ang", "write_ang", "parse_ang", "AngSlice"]

_MAX_HEADER_LINES = 100_000
_EULER_LIMIT = 4 * math.pi + 0.01  # TSL writes 4*pi for some unindexed points; anything larger is not radians


@dataclass
class AngSlice:
    """One parsed ``.ang`` file: ``(Y, X)`` arrays on a square grid."""

    quaternions: torch.Tensor  # (Y, X, 4) float32
    phases: np.ndarray  # (Y, X) int32
    confidence: np.ndarray  # (Y, X) float32
    image_quality: np.ndarray  # (Y, X) float32
    valid: np.ndarray  # (Y, X) bool
    dy: float
    dx: float
    y0: float
    x0: float
    phase_info: dict[int, Phase]
    header: list[str] = field(default_factory=list)
    n_columns: int = 0
    scan_unit: str = "um"
    grid: str = "SqrGrid"
    phase0_mapped: np.ndarray | None = None  # where phase value 0 was read as the single phase
    measured: np.ndarray | None = None  # (Y, X) bool, False where a truncated scan wrote no point; None = all
    extra: dict = field(default_factory=dict)  # format-specific metadata (.ctf: column names, Euler note)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.phases.shape)


# ---------------------------------------------------------------------------------------------- header
def _split_header(raw: bytes, path) -> tuple[list[str], int]:
    """Header lines (text after ``#``, stripped) and the byte offset where the data start."""
    lines: list[str] = []
    pos = 0
    n = len(raw)
    while pos < n:
        # skip blank lines between header lines
        if raw[pos:pos + 1] == b"#":
            end = raw.find(b"\n", pos)
            if end < 0:
                end = n
            lines.append(decode_text(raw[pos + 1:end]).rstrip("\r\n"))
            pos = end + 1
            if len(lines) > _MAX_HEADER_LINES:
                raise fmt_error(path, f"more than {_MAX_HEADER_LINES} header lines; not an .ang file")
        else:
            break
    return lines, pos


def _kv(line: str) -> tuple[str, str]:
    s = line.strip()
    m = re.match(r"^([A-Za-z_][\w\-]*)\s*:\s*(.*)$", s)
    if m:
        return m.group(1), m.group(2).strip()
    parts = s.split(None, 1)
    if not parts:
        return "", ""
    return parts[0].rstrip(":"), (parts[1].strip() if len(parts) > 1 else "")


def _float(path, key, value) -> float:
    try:
        v = float(value.split()[0])
    except (ValueError, IndexError):
        raise fmt_error(path, f"header field {key} has value {value!r}, expected a number") from None
    if not math.isfinite(v):
        raise fmt_error(path, f"header field {key} is {value!r}, expected a finite number")
    return v


def _int(path, key, value) -> int:
    try:
        v = float(value.split()[0])
    except (ValueError, IndexError):
        raise fmt_error(path, f"header field {key} has value {value!r}, expected an integer") from None
    if not math.isfinite(v) or v != int(v) or v < 0 or v > 10**8:
        raise fmt_error(path, f"header field {key} is {value!r}, expected a non-negative integer")
    return int(v)


def parse_header(lines: list[str], path) -> dict:
    """Phases and grid of an .ang header. Returns ``{"phases": {id: {...}}, "grid": ..., "xstep": ...}``."""
    phases: dict[int, dict] = {}
    order: list[int] = []
    current: dict | None = None
    out: dict = {"grid": None, "xstep": None, "ystep": None, "ncols_odd": None, "ncols_even": None,
                 "nrows": None, "vendor": "tsl"}
    for line in lines:
        if "ACOM" in line or "ASTAR" in line:
            out["vendor"] = "astar"
        key, value = _kv(line)
        if not key:
            continue
        k = key.lower()
        if k == "phase" and re.fullmatch(r"-?\d+", value.split()[0] if value else ""):
            pid = int(value.split()[0])
            if pid in phases:
                raise fmt_error(path, f"header defines '# Phase {pid}' twice")
            current = {"name": None, "symmetry": None, "lattice": None}
            phases[pid] = current
            order.append(pid)
        elif k == "materialname":
            if current is None or current["name"] is not None:
                # a phase block without a '# Phase n' line (ACOM and older exports): next free id from 1
                pid = max([0, *phases]) + 1
                current = {"name": None, "symmetry": None, "lattice": None}
                phases[pid] = current
                order.append(pid)
            current["name"] = value.strip() or f"phase {order[-1]}"
        elif k == "symmetry":
            if current is None:
                pid = max([0, *phases]) + 1
                current = {"name": f"phase {pid}", "symmetry": None, "lattice": None}
                phases[pid] = current
                order.append(pid)
            sym = laue_from_tsl(value.split()[0] if value else "")
            if sym is None:
                raise fmt_error(
                    path, f"phase {order[-1]}: Symmetry {value!r} is not a TSL Laue code "
                    f"(43 m-3m, 23 m-3, 42 4/mmm, 4 4/m, 22 mmm, 2/20/21 2/m, 62 6/mmm, 6 6/m, 32 -3m, 3 -3, 1 -1)"
                )
            current["symmetry"] = sym
        elif k == "latticeconstants":
            if current is None:
                continue
            try:
                vals = [float(t) for t in value.split()[:6]]
            except ValueError:
                raise fmt_error(path, f"phase {order[-1]}: LatticeConstants {value!r} are not numbers") from None
            if len(vals) != 6 or not all(math.isfinite(v) for v in vals):
                raise fmt_error(path, f"phase {order[-1]}: LatticeConstants {value!r} need 6 finite numbers")
            current["lattice"] = tuple(vals)
        elif k == "grid":
            g = re.match(r"[A-Za-z]+", value)
            out["grid"] = g.group(0) if g else value
        elif k in ("xstep", "ystep"):
            out[k] = _float(path, key, value)
        elif k in ("ncols_odd", "ncols_even", "nrows"):
            out[k] = _int(path, key, value)
    out["phases"] = {pid: phases[pid] for pid in order}
    return out


def _phase_info(hdr: dict, path) -> dict[int, Phase]:
    info: dict[int, Phase] = {}
    for pid, p in hdr["phases"].items():
        if p["symmetry"] is None:
            raise fmt_error(path, f"phase {pid} ({p['name']!r}) has no '# Symmetry' line; the header is incomplete")
        info[pid] = Phase(
            name=p["name"] or f"phase {pid}",
            symmetry=p["symmetry"],
            lattice=p["lattice"] or (1.0, 1.0, 1.0, 90.0, 90.0, 90.0),
        )
    if not info:
        raise fmt_error(
            path, "the header defines no phase ('# Phase n' / '# MaterialName' / '# Symmetry' lines missing); "
            "the file is truncated or not an .ang file"
        )
    return info


# ---------------------------------------------------------------------------------------------- grid
_infer_step = infer_step


def _hex_to_square(x, y, xstep, path):
    """Nearest-neighbour resampling of hexagonal-grid points onto a square grid of step ``xstep``."""
    try:
        return hex_to_square_index(x, y, xstep)
    except ValueError as exc:
        raise fmt_error(path, f"cannot resample the hexagonal grid: {exc}") from None


# ---------------------------------------------------------------------------------------------- reader
def parse_ang(path, hex_to_square: bool = False) -> AngSlice:
    """Parse one .ang file into an :class:`AngSlice`; raises :class:`EBSDFormatError` on damage."""
    path = Path(path)
    with FormatContext(path, "reading .ang"):
        return _parse_ang(path, hex_to_square)


def _parse_ang(path: Path, hex_to_square: bool) -> AngSlice:
    raw = read_text_bytes(path, ".ang")
    lines, start = _split_header(raw, path)
    if not lines:
        raise fmt_error(path, "no '#' header lines; not an .ang file (or its header was cut off)")
    hdr = parse_header(lines, path)
    phase_info = _phase_info(hdr, path)

    data, cut = load_table(raw[start:], path, 8)
    if data.size == 0:
        raise fmt_error(path, "the header is present but there are no data rows (truncated file?)")
    n, ncol = data.shape
    euler = data[:, :3]
    x, y, iq, ci, ph = data[:, 3], data[:, 4], data[:, 5], data[:, 6], data[:, 7]
    for name, arr in (("Euler angle columns", euler), ("x/y columns", data[:, 3:5]),
                      ("IQ column", iq), ("CI column", ci), ("phase column", ph)):
        check_finite(path, name, arr)
    emax = float(np.abs(euler).max())
    if emax > _EULER_LIMIT:
        raise fmt_error(
            path, f"Euler angles reach {emax:.4g}; .ang angles are radians (<= 4 pi). "
            "Degrees? Convert them, or the data are garbled"
        )
    if (ph != np.rint(ph)).any() or np.abs(ph).max() > 2**31 - 1:
        raise fmt_error(path, "phase column holds non-integer values; the columns are garbled")

    scan_unit = "nm" if hdr["vendor"] == "astar" else "um"
    grid = hdr["grid"] or "SqrGrid"
    if grid.lower().startswith("hex"):
        if not hex_to_square:
            raise fmt_error(
                path, "HexGrid .ang files are not read directly (voxels must lie on a square grid). Convert it "
                "to a square grid first (EDAX OIM Analysis: Utilities > Convert Scan Data > 'Square grid', or "
                "DREAM.3D's 'Convert Hexagonal Grid Data to Square Grid Data (TSL - .ang)' filter), or pass "
                "hex_to_square=True to resample here by nearest neighbour onto a square grid of step XSTEP"
            )
        if hdr["ncols_odd"] and hdr["ncols_even"] and hdr["nrows"]:
            expect = (hdr["nrows"] + 1) // 2 * hdr["ncols_odd"] + hdr["nrows"] // 2 * hdr["ncols_even"]
            if expect != n:
                raise fmt_error(path, f"{n} data rows but the HexGrid header implies {expect} (truncated file?)")
        xstep = hdr["xstep"] or _infer_step(x)
        if not xstep or xstep <= 0:
            raise fmt_error(path, "HexGrid without a usable XSTEP; cannot resample")
        idx, nrows, ncols, x0, y0 = _hex_to_square(x, y, xstep, path)
        dx = dy = xstep
        grid = "SqrGrid"
        measured = None

        def grid_arr(a, fill=0):
            return a[idx].reshape(nrows, ncols, *a.shape[1:])
    elif not grid.lower().startswith("sqr"):
        raise fmt_error(path, f"unknown GRID {grid!r}; expected SqrGrid (or HexGrid)")
    else:
        if hdr["ncols_odd"] and hdr["ncols_even"] and hdr["ncols_odd"] != hdr["ncols_even"]:
            raise fmt_error(path, f"SqrGrid with NCOLS_ODD={hdr['ncols_odd']} != NCOLS_EVEN={hdr['ncols_even']}")
        if (hdr["xstep"] is not None and hdr["xstep"] < 0) or (hdr["ystep"] is not None and hdr["ystep"] < 0):
            raise fmt_error(path, f"step sizes XSTEP={hdr['xstep']}, YSTEP={hdr['ystep']} must be positive")
        place = resolve_grid(x, y, nrows_h=hdr["nrows"], ncols_h=hdr["ncols_odd"] or hdr["ncols_even"],
                             dx_h=hdr["xstep"], dy_h=hdr["ystep"], path=path,
                             header_names=("NROWS", "NCOLS", "XSTEP", "YSTEP"), truncated_tail=cut)
        nrows, ncols, dx, dy, x0, y0 = place.nrows, place.ncols, place.dx, place.dy, place.x0, place.y0
        measured = place.measured

        def grid_arr(a, fill=0):
            return place.to_grid(a, fill)

    phase_vals = grid_arr(ph, 0).astype(np.int32)
    ids = set(phase_info)
    ci_g = grid_arr(ci, -1.0).astype(np.float32)
    phase_vals, phase0_mapped = resolve_phase0(phase_vals, ci_g, ids)
    known = np.isin(phase_vals, np.fromiter(ids, dtype=np.int32))
    unknown_vals = np.unique(phase_vals[~known])
    bad = [int(v) for v in unknown_vals if v not in (0, -1)]
    if bad:
        raise fmt_error(
            path, f"phase column holds id(s) {bad[:5]} that the header does not define (phases {sorted(ids)})"
        )
    valid = known & (ci_g >= 0)

    scale = 1e-3 if scan_unit == "nm" else 1.0
    if measured is not None:
        valid &= measured
    q = euler_rows_to_quat(grid_arr(euler, 0.0))
    return AngSlice(
        quaternions=q,
        phases=phase_vals,
        confidence=ci_g,
        image_quality=grid_arr(iq, 0.0).astype(np.float32),
        valid=valid,
        dy=dy * scale,
        dx=dx * scale,
        y0=y0 * scale,
        x0=x0 * scale,
        phase_info=phase_info,
        header=lines,
        n_columns=ncol,
        scan_unit=scan_unit,
        grid=grid,
        phase0_mapped=phase0_mapped,
        measured=measured,
    )


def read_ang(path, z_spacing: float | None = None, hex_to_square: bool = False) -> EBSDVolume:
    """Read one ``.ang`` file as a ``Z = 1`` :class:`EBSDVolume` (``dz`` = ``z_spacing`` or ``dx``)."""
    s = parse_ang(path, hex_to_square=hex_to_square)
    dz = float(z_spacing) if z_spacing else s.dx
    return EBSDVolume(
        quaternions=s.quaternions[None],
        phases=torch.from_numpy(s.phases[None]),
        confidence=torch.from_numpy(s.confidence[None]),
        image_quality=torch.from_numpy(s.image_quality[None]),
        spacing=(dz, s.dy, s.dx),
        origin=(0.0, s.y0, s.x0),
        phase_info=s.phase_info,
        valid=torch.from_numpy(s.valid[None]),
        measured=None if s.measured is None else torch.from_numpy(s.measured[None]),
        metadata={
            "source": str(path), "format": "ang", "ang_header": s.header, "ang_columns": s.n_columns,
            "scan_unit_in_file": s.scan_unit,
        },
    )


# ---------------------------------------------------------------------------------------------- writer
_GRID_KEYS = ("grid", "xstep", "ystep", "ncols_odd", "ncols_even", "nrows")
_PHASE_KEYS = ("phase", "materialname", "formula", "info", "symmetry", "latticeconstants", "numberfamilies",
               "hklfamilies", "elasticconstants", "categories")


def _header_parts(header: list[str]) -> tuple[list[str], dict[int, list[str]], list[str]]:
    """Split an original header into (preamble, extra lines per phase id, trailer)."""
    pre: list[str] = []
    trailer: list[str] = []
    extras: dict[int, list[str]] = {}
    state = "pre"
    pid = None
    for line in header:
        k = _kv(line)[0].lower()
        if k == "phase" or (k == "materialname" and state == "pre"):
            state = "phase"
            if k == "phase":
                try:
                    pid = int(_kv(line)[1].split()[0])
                except (ValueError, IndexError):
                    pid = None
            else:
                pid = 1
            extras.setdefault(pid, [])
            continue
        if k in _GRID_KEYS:
            state = "post"
            continue
        if state == "pre":
            pre.append(line)
        elif state == "phase":
            if k in ("formula", "info", "numberfamilies", "hklfamilies", "elasticconstants", "categories"):
                if pid is not None:
                    extras[pid].append(line)
        else:
            trailer.append(line)
    return pre, extras, trailer


def _ang_header(vol: EBSDVolume, dy: float, dx: float, nrows: int, ncols: int) -> str:
    orig = vol.metadata.get("ang_header") if isinstance(vol.metadata, dict) else None
    pre, extras, trailer = _header_parts([str(l) for l in orig]) if orig else ([], {}, [])
    # lines that would make readers guess another vendor's columns/units (we write TSL columns in um)
    foreign = re.compile(r"ACOM|ASTAR|EMsoft", re.IGNORECASE)
    pre = [l for l in pre if not foreign.search(l)]
    trailer = [l for l in trailer if not foreign.search(l)]
    if not any(l.strip() for l in pre):
        pre = [" TEM_PIXperUM          1.000000", " x-star                0.000000", " y-star                0.000000",
               " z-star                0.000000", " WorkingDistance       0.000000", ""]
    out = [f"#{l}" if l.startswith(" ") or not l else f"# {l}" for l in pre]
    for pid, ph in sorted(vol.phase_info.items()):
        code = LAUE_TO_TSL_CODE.get(ph.symmetry)
        if code is None:
            raise EBSDFormatError(f"phase {pid} symmetry {ph.symmetry!r} has no TSL .ang code")
        lat = " ".join(f"{v:.3f}" for v in ph.lattice[:3]) + "  " + " ".join(f"{v:.3f}" for v in ph.lattice[3:])
        name = str(ph.name).replace("\n", " ").replace("\r", " ") or f"phase{pid}"
        ex = extras.get(pid, [])
        ex_keys = {_kv(l)[0].lower() for l in ex}
        fmt_line = lambda l: f"#{l}" if l.startswith(" ") else f"# {l}"  # noqa: E731
        out += [f"# Phase {pid}", f"# MaterialName  \t{name}"]
        out += [fmt_line(l) for l in ex if _kv(l)[0].lower() in ("formula", "info")]
        if "formula" not in ex_keys:
            out.append(f"# Formula     \t{name}")
        if "info" not in ex_keys:
            out.append("# Info \t\t")
        out += [f"# Symmetry              {code}", f"# LatticeConstants      {lat}"]
        if "numberfamilies" not in ex_keys:
            out.append("# NumberFamilies        0")
        out += [fmt_line(l) for l in ex if _kv(l)[0].lower() not in ("formula", "info")]
        out.append("#")
    out += ["# GRID: SqrGrid", f"# XSTEP: {dx:.9g}", f"# YSTEP: {dy:.9g}", f"# NCOLS_ODD: {ncols}",
            f"# NCOLS_EVEN: {ncols}", f"# NROWS: {nrows}", "#"]
    if any(l.strip() for l in trailer):
        out += [f"#{l}" if l.startswith(" ") or not l else f"# {l}" for l in trailer]
    else:
        out += ["# OPERATOR: \tebsd-tensor-toolkit", "#", "# SAMPLEID: \t", "#", "# SCANID: \t", "#"]
    return "\n".join(out) + "\n"


def write_ang(vol: EBSDVolume, path, z: int = 0, overwrite: bool = False) -> Path:
    """Write slice ``z`` of ``vol`` as a TSL ``.ang`` (columns phi1 PHI phi2 x y IQ CI phase SEM fit).

    Invalid voxels (``valid`` False) get CI = -1 (the TSL "not indexed" mark; .ang has no separate mask).
    Voxels never measured (``measured`` False) are written as not indexed too (CI = -1): a single ``.ang`` loses
    the difference between "not measured" and "not indexed" (a folder written by
    :func:`ebsd.io.ang_stack.write_ang_folder` keeps it in its ``ebsdtk.json``).
    Written via a temporary file and a rename; never replaces a file without ``overwrite=True``.
    """
    from ._atomic import atomic_file

    path = Path(path)
    Z, Y, X = vol.shape
    if not 0 <= z < Z:
        from ..errors import EBSDValueError

        raise EBSDValueError(f"slice {z} outside 0..{Z - 1}")
    dz, dy, dx = vol.spacing
    z0, y0, x0 = vol.origin
    header = _ang_header(vol, dy, dx, Y, X)
    eul = quat_to_euler_np(vol.quaternions[z]).reshape(-1, 3)
    yy, xx = np.meshgrid(y0 + dy * np.arange(Y), x0 + dx * np.arange(X), indexing="ij")
    ci = vol.confidence[z].cpu().numpy().astype(np.float64).ravel()
    valid = vol.valid[z].cpu().numpy().ravel()
    ph_ids = np.fromiter(vol.phase_info, dtype=np.int64)
    ph_all = vol.phases[z].cpu().numpy().astype(np.int64).ravel()
    # an invalid voxel is marked by CI = -1 unless its phase value (0, -1, ...) already says "not indexed"
    ci = np.where(~valid & np.isin(ph_all, ph_ids) & (ci >= 0), -1.0, ci)
    # never measured and not valid: written as not indexed (a recovered voxel, valid but not measured, keeps its CI)
    ci = np.where(vol.measured[z].cpu().numpy().ravel() | valid, ci, -1.0)
    iq = vol.image_quality[z].cpu().numpy().astype(np.float64).ravel()
    ph = vol.phases[z].cpu().numpy().astype(np.int64).ravel()
    cols = np.column_stack([eul, xx.ravel(), yy.ravel(), iq, ci, ph, np.zeros_like(iq), np.zeros_like(iq)])
    fmt = "%.7f %.7f %.7f %.9g %.9g %.9g %.9g %d %.3f %.3f"
    with atomic_file(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", newline="\n") as f:
            f.write(header)
            np.savetxt(f, cols, fmt=fmt)
    return path
