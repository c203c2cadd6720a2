"""Shared by the text readers (``.ang``, ``.ctf``): reading the data table fast, and finding the grid that
the points lie on when the header and the x, y columns disagree (stale headers, truncated scans, hexagonal
grids).

The rules (each decision that departs from the header is announced with ``warnings.warn``):

1. The header grid (rows x columns, steps) holds every point once, placed by its x, y coordinates (or in
   raster order when the file has no coordinates): use it.
2. Otherwise, when the x, y columns form a complete regular grid of their own: trust the coordinates (the
   header is stale, e.g. left over from another scan setting), warn.
3. Otherwise, when the points fill the header grid in raster order from the start but stop early (a truncated
   scan, the last row partly written): keep the header grid, mark the unwritten points as not measured
   (``EBSDVolume.measured``), warn.
4. Otherwise refuse with :class:`~ebsd.errors.EBSDFormatError`, naming both the header grid and what the
   coordinates span.
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np

from ._common import fmt_error

__all__ = ["load_table", "resolve_grid", "GridPlacement", "looks_hex", "hex_to_square_index", "decode_text"]


def decode_text(b: bytes) -> str:
    """UTF-8 text, or Latin-1 where the bytes are not UTF-8 (vendor software on Windows writes cp1252/Latin-1
    names such as ``Ferrit (\\xb5)``); never fails."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b.decode("latin-1")


def _n_fields(line: bytes) -> int:
    return len(line.split())


def load_table(raw: bytes, path, min_columns: int) -> tuple[np.ndarray, bool]:
    """Parse whitespace-separated numbers (one point per line) into a float64 ``(n, ncol)`` array.

    A last line with fewer fields than the first data line (a file cut off while being written) is dropped and
    reported by the second return value, so that the caller can treat the scan as truncated. Uses pandas' C
    parser when pandas is installed (about 2.4x faster than :func:`numpy.loadtxt` on 1e6 rows), else
    :func:`numpy.loadtxt`. Raises :class:`EBSDFormatError` for garbled rows.
    """
    body = raw.strip(b"\r\n\t \x1a")  # trailing blank lines / Ctrl-Z
    if not body:
        return np.empty((0, 0)), False
    first_end = body.find(b"\n")
    first = body if first_end < 0 else body[:first_end]
    last_start = body.rfind(b"\n") + 1
    last = body[last_start:]
    dropped = False
    nf = _n_fields(first)
    if last_start > 0 and _n_fields(last) < nf:
        body = body[:last_start].rstrip(b"\r\n")
        dropped = True
    if nf < min_columns:
        raise fmt_error(path, f"data rows have {nf} columns; at least {min_columns} are needed")
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is present wherever napari/dask[dataframe] are
        pd = None
    if pd is not None:
        try:
            df = pd.read_csv(io.BytesIO(body), sep=r"\s+", header=None, dtype=np.float64, engine="c",
                             comment="#", skip_blank_lines=True, na_filter=True)
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, OverflowError) as exc:
            msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise fmt_error(path, f"data rows are garbled ({msg})") from None
        data = df.to_numpy(dtype=np.float64)
    else:  # pragma: no cover
        try:
            data = np.loadtxt(io.StringIO(body.decode("latin-1")), dtype=np.float64, comments="#", ndmin=2)
        except ValueError as exc:
            msg = str(exc).splitlines()[0] if str(exc) else "unparsable numbers"
            raise fmt_error(path, f"data rows are garbled ({msg})") from None
    if data.ndim != 2:
        data = data.reshape(1, -1)
    bad = np.isnan(data).any(1)
    if bad.any():  # a short row (pandas pads it with NaN) or a "nan" token: the columns can no longer be trusted
        i = int(np.flatnonzero(bad)[0])
        raise fmt_error(path, f"data row {i + 1} has missing fields or NaN values ({int(bad.sum())} such row(s)); "
                        "the file is damaged")
    return data, dropped


# ---------------------------------------------------------------------------------------------- grids
@dataclass
class GridPlacement:
    """Where the data rows go: ``flat[i]`` is the raster index (x fastest) of data row ``i`` in an
    ``nrows x ncols`` grid (``None``: data rows are already in raster order and fill the grid); ``measured``
    is the ``(nrows, ncols)`` mask of grid points that have a data row (``None``: all of them)."""

    nrows: int
    ncols: int
    dx: float
    dy: float
    x0: float
    y0: float
    flat: np.ndarray | None
    measured: np.ndarray | None
    how: str  # "header", "coordinates", "truncated", "raster"

    def to_grid(self, a: np.ndarray, fill) -> np.ndarray:
        """Data-row array ``(n, ...)`` -> grid array ``(nrows, ncols, ...)``; unwritten points get ``fill``."""
        shape = (self.nrows, self.ncols) + a.shape[1:]
        if self.flat is None and self.measured is None:
            return a.reshape(shape)
        out = np.empty((self.nrows * self.ncols,) + a.shape[1:], dtype=a.dtype)
        out[...] = fill
        if self.flat is None:
            out[: a.shape[0]] = a
        else:
            out[self.flat] = a
        return out.reshape(shape)


def infer_step(v: np.ndarray) -> float:
    """Smallest spacing between the distinct values of ``v`` (rounded to 1e-6), 0 if there is only one."""
    u = np.unique(np.round(v, 6))
    if u.size < 2:
        return 0.0
    d = np.diff(u)
    d = d[d > 1e-9]
    return float(f"{float(np.min(d)):.9g}") if d.size else 0.0  # 0.3999999999999986 -> 0.4


def _fit(x, y, dx, dy, nrows, ncols) -> np.ndarray | None:
    """Raster index of every point on the ``nrows x ncols`` grid of step (dx, dy) starting at the minima, or
    None when a point is off the grid, outside it, or two points share a grid position."""
    if not (dx > 0 and dy > 0) or nrows < 1 or ncols < 1:
        return None
    x0, y0 = float(x.min()), float(y.min())
    col = np.rint((x - x0) / dx)
    row = np.rint((y - y0) / dy)
    if (np.abs(x - x0 - col * dx) > 0.26 * dx).any() or (np.abs(y - y0 - row * dy) > 0.26 * dy).any():
        return None
    if col.max() >= ncols or row.max() >= nrows:
        return None
    flat = (row * ncols + col).astype(np.int64)
    if np.bincount(flat, minlength=nrows * ncols).max(initial=0) > 1:
        return None
    return flat


def _maybe_identity(flat: np.ndarray) -> np.ndarray | None:
    return None if np.array_equal(flat, np.arange(flat.size)) else flat


def resolve_grid(x: np.ndarray, y: np.ndarray, *, nrows_h: int | None, ncols_h: int | None, dx_h: float | None,
                 dy_h: float | None, path, header_names: tuple[str, str, str, str], stacklevel: int = 4,
                 truncated_tail: bool = False) -> GridPlacement:
    """Find the square grid of the points (see the module docstring for the rules).

    Args:
        x, y: coordinates of the data rows (micrometres, or the file's unit).
        nrows_h, ncols_h, dx_h, dy_h: what the header says (None/0 when absent).
        header_names: how the file names rows, columns, x step, y step (for messages), e.g.
            ``("NROWS", "NCOLS", "XSTEP", "YSTEP")``.
        truncated_tail: the last text line was cut off (dropped by :func:`load_table`); mentioned in the warning.
    """
    n = int(x.size)
    H, W = int(nrows_h or 0), int(ncols_h or 0)
    dxh = float(dx_h) if dx_h and dx_h > 0 else 0.0
    dyh = float(dy_h) if dy_h and dy_h > 0 else 0.0
    rn, cn, xn, yn = header_names
    hdr_txt = (f"{rn} x {cn} = {H} x {W}" if H and W else f"no {rn}/{cn}") + \
        (f", {xn}/{yn} = {dxh:g}/{dyh:g} um" if dxh or dyh else "")
    has_xy = n > 1 and (np.ptp(x) > 0 or np.ptp(y) > 0)
    cut = " (the last line was cut off mid-row and dropped)" if truncated_tail else ""

    if not has_xy:  # no usable coordinates: the rows are in raster order by definition
        if not (H and W):
            if n == 1:
                return GridPlacement(1, 1, dxh or 1.0, dyh or dxh or 1.0, float(x[0]) if n else 0.0,
                                     float(y[0]) if n else 0.0, None, None, "raster")
            raise fmt_error(path, f"{n} points without x, y coordinates and no {rn}/{cn} in the header: the grid is unknown")
        dx, dy = dxh or 1.0, dyh or dxh or 1.0
        if n == H * W:
            return GridPlacement(H, W, dx, dy, 0.0, 0.0, None, None, "raster")
        if n < H * W:
            m = np.zeros(H * W, bool)
            m[:n] = True
            warnings.warn(f"{path}: {n} points but the header grid is {H} x {W} = {H * W}{cut}; the file has no "
                          "x, y coordinates, so it is read as a truncated scan in raster order: the last "
                          f"{H * W - n} grid points are marked not measured", stacklevel=stacklevel)
            return GridPlacement(H, W, dx, dy, 0.0, 0.0, None, m.reshape(H, W), "truncated")
        raise fmt_error(path, f"{n} points but the header grid is {hdr_txt} = {H * W} points, and there are no x, y "
                        "coordinates to place them (wrong header?)")

    # 1. the header grid, placed by coordinates
    if H and W and dxh and (dyh or H == 1) and n == H * W:
        flat = _fit(x, y, dxh, dyh or dxh, H, W)
        if flat is not None:
            return GridPlacement(H, W, dxh, dyh or dxh, float(x.min()), float(y.min()), _maybe_identity(flat),
                                 None, "header")
    # 2. the coordinates form a complete regular grid of their own
    sx, sy = infer_step(x), infer_step(y)
    dxc = sx or sy or dxh or 1.0
    dyc = sy or sx or dyh or 1.0
    # keep the header's step where it agrees with the coordinates (more digits than the columns)
    if dxh and math.isclose(dxh, dxc, rel_tol=2e-3, abs_tol=1e-6):
        dxc = dxh
    if dyh and math.isclose(dyh, dyc, rel_tol=2e-3, abs_tol=1e-6):
        dyc = dyh
    Wc = int(round(float(np.ptp(x)) / dxc)) + 1
    Hc = int(round(float(np.ptp(y)) / dyc)) + 1
    span = f"the x, y columns span {Hc} rows x {Wc} columns at step {dyc:g} x {dxc:g}"
    if Hc * Wc == n:
        flat = _fit(x, y, dxc, dyc, Hc, Wc)
        if flat is not None:
            if (H and W) and ((H, W) != (Hc, Wc)) or (dxh and not math.isclose(dxh, dxc, rel_tol=2e-3)) \
                    or (dyh and Hc > 1 and not math.isclose(dyh, dyc, rel_tol=2e-3)):
                warnings.warn(
                    f"{path}: the header says {hdr_txt}, but the {n} points' x, y coordinates form a complete "
                    f"{Hc} x {Wc} grid at step {dyc:g} x {dxc:g} um; trusting the coordinates (the header is "
                    "probably stale)", stacklevel=stacklevel)
            return GridPlacement(Hc, Wc, dxc, dyc, float(x.min()), float(y.min()), _maybe_identity(flat), None,
                                 "coordinates")
    # 3. a truncated scan: the points fill the header grid from the start, in raster order
    if H and W and dxh and n < H * W:
        flat = _fit(x, y, dxh, dyh or dxh, H, W)
        if flat is not None and int(flat.max()) == n - 1:  # unique and within 0..n-1: exactly the first n
            m = np.zeros(H * W, bool)
            m[:n] = True
            missing = H * W - n
            warnings.warn(
                f"{path}: {n} points but the header grid is {H} x {W} = {H * W}{cut}: the scan is truncated (its "
                f"last row is incomplete). Loading what is there; the {missing} unwritten grid point(s) are marked "
                "not measured (EBSDVolume.measured False, valid False)", stacklevel=stacklevel)
            return GridPlacement(H, W, dxh, dyh or dxh, float(x.min()), float(y.min()), _maybe_identity(flat),
                                 m.reshape(H, W), "truncated")
    # 4. refuse
    if H and W:
        raise fmt_error(
            path, f"{n} data rows but the header grid is {hdr_txt} = {H * W} points, and {span} "
            f"({Hc * Wc} points) without filling it (points missing or repeated); neither the header nor the "
            "coordinates describe a complete grid, so the file is damaged or not a square-grid scan")
    raise fmt_error(path, f"{n} data rows, and {span} ({Hc * Wc} points) with points missing or repeated; "
                    "the coordinates do not form a complete square grid")


# ---------------------------------------------------------------------------------------------- hexagonal grids
def looks_hex(x: np.ndarray, y: np.ndarray, dx_hint: float | None = None) -> bool:
    """True when the second row of points is offset by half a step from the first (a hexagonal grid, as
    Oxford/EDAX write them: odd rows shifted by dx/2)."""
    if x.size < 3:
        return False
    yr = np.round(y, 5)
    uy = np.unique(yr[: min(yr.size, 200_000)])
    if uy.size < 2:
        return False
    r0 = np.sort(x[yr == uy[0]])
    r1 = np.sort(x[yr == uy[1]])
    if r0.size < 2 or r1.size < 1:
        return False
    d = dx_hint if dx_hint and dx_hint > 0 else float(np.median(np.diff(r0)))
    if not d > 0:
        return False
    off = (r1[0] - r0[0]) / d
    return abs(abs(off - round(off)) - 0.5) < 0.1


def hex_to_square_index(x: np.ndarray, y: np.ndarray, step: float):
    """Nearest-neighbour resampling of hexagonal-grid points onto a square grid of step ``step``: returns
    (index of the nearest data row for each square-grid point, nrows, ncols, x0, y0)."""
    from scipy.spatial import cKDTree

    x0, y0 = float(x.min()), float(y.min())
    nx = int(math.floor((float(x.max()) - x0) / step + 1e-6)) + 1
    ny = int(math.floor((float(y.max()) - y0) / step + 1e-6)) + 1
    if nx * ny > 4 * x.size + 16:
        raise ValueError(f"a square grid of step {step} would need {ny} x {nx} points for {x.size} hexagonal ones")
    gy, gx = np.meshgrid(y0 + step * np.arange(ny), x0 + step * np.arange(nx), indexing="ij")
    _, idx = cKDTree(np.column_stack([x, y])).query(np.column_stack([gx.ravel(), gy.ravel()]))
    return idx, ny, nx, x0, y0
