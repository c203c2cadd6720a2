"""DREAM.3D H5EBSD (``.h5ebsd``, written by DREAM.3D's "Import Orientation File(s) to H5EBSD"): reader.

Layout (EbsdLib ``H5AngImporter``, TSL data)::

    /  datasets ZStartIndex, ZEndIndex, "Z Resolution", "Stacking Order" (0 low->high, 1 high->low),
       Manufacturer ("TSL"), "X Resolution", "Y Resolution", "Max X Points", "Max Y Points", Index, ...
    /<z>/Header/  NCOLS_ODD, NCOLS_EVEN, NROWS, XSTEP, YSTEP, GRID,
                  Phases/<n>/{MaterialName, Symmetry (TSL code), LatticeConstants (6)}, OriginalHeader ...
    /<z>/Data/    Phi1, Phi, Phi2 (radians), X Position, Y Position, Image Quality, Confidence Index,
                  PhaseData, SEM Signal, Fit   (NROWS * NCOLS points, x fastest)

Slices ``ZStartIndex..ZEndIndex`` become z = 0..Z-1 (reversed for "High To Low"); dz = "Z Resolution"
unless ``z_spacing`` is given. Orientations are returned as stored (no sample/Euler reference-frame
transformation is applied; the file's ``SampleTransformation*``/``EulerTransformation*`` values are kept in
metadata). Only TSL/EDAX data are read; HKL (.ctf-based) H5EBSD raises :class:`EBSDFormatError`.

Memory: output tensors are preallocated and filled one slice group at a time.
"""
from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import EBSDFormatError
from ..volume import EBSDVolume
from ._common import check_z_spacing, assemble_volume, FormatContext, fmt_error, progress_bar
from .h5oim import check_grid, read_phases, read_slice_into, scalar, undo_phase0

__all__ = ["read_h5ebsd", "is_h5ebsd"]

H5EBSD_NAMES = {
    "phase_group": ("Phases", "Phase"),
    "phi1": "Phi1", "Phi": "Phi", "phi2": "Phi2", "iq": ("Image Quality", "IQ"), "ci": ("Confidence Index", "CI"),
    "phase": ("PhaseData", "Phase"), "x": ("X Position",), "y": ("Y Position",),
}


def is_h5ebsd(f: h5py.File) -> bool:
    return "ZStartIndex" in f and "ZEndIndex" in f


def read_h5ebsd(path, z_spacing: float | None = None, progress: bool = False) -> EBSDVolume:
    """Read a TSL-based DREAM.3D ``.h5ebsd`` stack as an :class:`EBSDVolume`."""
    path = Path(path)
    with FormatContext(path, "reading .h5ebsd"):
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise fmt_error(path, f"not a readable HDF5 file ({exc})") from None
        with f:
            return _read(f, path, z_spacing, progress)


def _read(f: h5py.File, path: Path, z_spacing, progress) -> EBSDVolume:
    if not is_h5ebsd(f):
        raise fmt_error(path, "no ZStartIndex/ZEndIndex datasets at the root; not an H5EBSD file")
    z_start = scalar(path, f["/"], ("ZStartIndex",), "f")
    z_end = scalar(path, f["/"], ("ZEndIndex",), "f")
    if z_start != int(z_start) or z_end != int(z_end) or z_end < z_start or z_end - z_start > 100_000:
        raise fmt_error(path, f"ZStartIndex/ZEndIndex = {z_start}/{z_end} are not a valid index range")
    z_start, z_end = int(z_start), int(z_end)
    manu = scalar(path, f["/"], ("Manufacturer",), "s", required=False) or "TSL"
    if manu.upper() not in ("TSL", "EDAX"):
        raise fmt_error(path, f"Manufacturer {manu!r}: only TSL/EDAX H5EBSD files are read (HKL .ctf data are not)")
    order = scalar(path, f["/"], ("Stacking Order",), "f", required=False)
    order = 0 if order is None else int(order)
    if order not in (0, 1):
        raise fmt_error(path, f"Stacking Order = {order}; expected 0 (Low To High) or 1 (High To Low)")
    zres = scalar(path, f["/"], ("Z Resolution",), "f", required=False)
    index = list(range(z_start, z_end + 1))
    if order == 1:
        index = index[::-1]
    missing = [i for i in index if not isinstance(f.get(str(i)), h5py.Group)]
    if missing:
        raise fmt_error(path, f"slice group(s) {missing[:5]} listed by ZStartIndex..ZEndIndex are missing")
    first = f[str(index[0])]
    hdr0 = first.get("Header")
    if not isinstance(hdr0, h5py.Group) or not isinstance(first.get("Data"), h5py.Group):
        raise fmt_error(path, f"slice group {index[0]} needs Header and Data groups")

    def grid_of(g):
        hdr = g.get("Header")
        if not isinstance(hdr, h5py.Group) or not isinstance(g.get("Data"), h5py.Group):
            raise fmt_error(path, f"slice group {g.name} needs Header and Data groups")
        check_grid(path, hdr, scalar(path, hdr, ("GRID", "Grid Type"), "s", required=False))
        ncols = scalar(path, hdr, ("NCOLS_ODD", "NCOLS_EVEN", "nColumns"), "i")
        nrows = scalar(path, hdr, ("NROWS", "nRows"), "i")
        dx = scalar(path, hdr, ("XSTEP", "Step X"), "f")
        dy = scalar(path, hdr, ("YSTEP", "Step Y"), "f")
        if ncols < 1 or nrows < 1:
            raise fmt_error(path, f"{hdr.name}: NROWS x NCOLS = {nrows} x {ncols} is empty")
        if dx <= 0 or dy <= 0:
            raise fmt_error(path, f"{hdr.name}: XSTEP/YSTEP = {dx}/{dy} must be positive")
        return nrows, ncols, dx, dy

    nrows, ncols, dx, dy = grid_of(first)
    phase_info = read_phases(path, hdr0, H5EBSD_NAMES["phase_group"], "h5ebsd")
    Z = len(index)
    if z_spacing is not None:
        dz = check_z_spacing(z_spacing)
    elif zres is not None and zres > 0:
        dz = float(zres)
    else:
        dz = dx
    for i in index:  # data sizes must match the header before anything is allocated
        d = f[str(i)].get("Data")
        ds = d.get("Phi1") if isinstance(d, h5py.Group) else None
        if not isinstance(ds, h5py.Dataset) or ds.size != nrows * ncols:
            raise fmt_error(path, f"slice {i}: Data/Phi1 is missing or does not hold NROWS x NCOLS = "
                            f"{nrows * ncols} values")
    quats = torch.empty((Z, nrows, ncols, 4), dtype=torch.float32)
    phases = torch.empty((Z, nrows, ncols), dtype=torch.int32)
    ci = torch.empty((Z, nrows, ncols), dtype=torch.float32)
    iq = torch.empty((Z, nrows, ncols), dtype=torch.float32)
    valid = torch.empty((Z, nrows, ncols), dtype=torch.bool)
    mapped: dict = {}
    with progress_bar(Z, "reading H5EBSD slices", progress) as bar:
        for z, i in enumerate(index):
            g = f[str(i)]
            gi = grid_of(g) if z else (nrows, ncols, dx, dy)
            if gi[:2] != (nrows, ncols) or not (math.isclose(gi[2], dx, rel_tol=1e-5)
                                                and math.isclose(gi[3], dy, rel_tol=1e-5)):
                raise EBSDFormatError(
                    f"{path}: slice {i} grid {gi} differs from slice {index[0]} ({nrows}, {ncols}, {dx}, {dy}); "
                    "slices of different sizes are not supported"
                )
            if z:
                ph = read_phases(path, g["Header"], H5EBSD_NAMES["phase_group"], "h5ebsd")
                if {k: v.symmetry for k, v in ph.items()} != {k: v.symmetry for k, v in phase_info.items()}:
                    raise EBSDFormatError(f"{path}: slice {i} phases differ from slice {index[0]}")
            m = read_slice_into(path, g["Data"], nrows, ncols, H5EBSD_NAMES, phase_info, z, quats, phases, ci, iq,
                                valid)
            if m is not None:
                mapped[z] = m
            bar.update(1)
    undo_phase0(mapped, Z, phases, valid)
    meta = {"source": str(path), "format": "h5ebsd", "z_indices": index, "stacking_order": order,
            "manufacturer": manu}
    for k in ("SampleTransformationAngle", "SampleTransformationAxis", "EulerTransformationAngle",
              "EulerTransformationAxis"):
        ds = f.get(k)
        if isinstance(ds, h5py.Dataset) and ds.dtype.kind in "fiu" and ds.size <= 16:
            meta[k] = np.asarray(ds[()]).ravel().tolist()
    return assemble_volume(quaternions=quats, phases=phases, confidence=ci, image_quality=iq,
                      spacing=(dz, dy, dx), origin=(0.0, 0.0, 0.0), phase_info=phase_info, valid=valid,
                      metadata=meta)
