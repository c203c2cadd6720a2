"""EMsoft dictionary-indexing output (``EMEBSDDI`` ``.h5``, root ``Manufacturer`` containing "EMEBSD"): reader.

Layout (EMsoft's h5ebsd-style dot-product file, as orix's ``emsoft_h5ebsd`` reader reads it)::

    /Manufacturer "EMEBSDDictionaryIndexing.f90", /NMLparameters/EBSDIndexingNameListType/nnk (top matches kept)
    /Scan 1/EBSD/Header/  nRows, nColumns, Step X, Step Y (um),
                          Phase/1/{MaterialName, Point Group (e.g. "Cubic m-3m [m3m]"), Lattice Constant a|b|c|
                          alpha|beta|gamma}   (always one phase)
    /Scan 1/EBSD/Data/    TopMatchIndices (N, nnk) 1-based indices into DictionaryEulerAngles (FZcnt, 3) degrees,
                          FZcnt, RefinedEulerAngles (N, 3) radians (after refinement), CI, IQ, OSM, ...
                          (N = nRows * nColumns points in raster order; arrays may hold extra padding rows)

Conventions (as orix's reader): orientations are the best dictionary match (``TopMatchIndices[:, 0]``), or the
refined ones with ``refined=True``; Euler angles -> quaternions with no reference-frame change; the phase name is
``MaterialName`` up to the first "/" or ".xtal". Every point is indexed (dictionary indexing always returns a
match), phase id 1. ``confidence`` <- CI, ``image_quality`` <- IQ when present. The "Y Position" dataset is not
used (EMsoft writes it wrong; orix notes the same).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import h5py
import numpy as np
import torch

from ..volume import EBSDVolume, Phase
from ._common import _NAME_TO_LAUE, FormatContext, assemble_volume, check_z_spacing, euler_rows_to_quat, fmt_error
from .bruker import manufacturer
from .h5oim import scalar

__all__ = ["read_emsoft", "is_emsoft"]

_BASE = "Scan 1/EBSD"


def is_emsoft(f: h5py.File) -> bool:
    return "emebsd" in manufacturer(f).lower()


def _phase(path, hdr: h5py.Group) -> Phase:
    g = hdr.get("Phase/1")
    if not isinstance(g, h5py.Group):
        raise fmt_error(path, f"{hdr.name} has no Phase/1 group")
    pg = scalar(path, g, ("Point Group",), "s")
    m = re.search(r"\[([^\]]+)\]", pg)
    sym = _NAME_TO_LAUE.get((m.group(1) if m else pg).strip().replace(" ", ""))
    if sym is None:
        raise fmt_error(path, f"{g.name}/Point Group = {pg!r}: no point group in [brackets] that we know")
    raw = scalar(path, g, ("MaterialName",), "s", required=False) or "phase 1"
    name = re.split(r"[/\\]", raw.strip())[0]
    name = re.sub(r"\.xtal$", "", name) or raw
    lat = [scalar(path, g, (f"Lattice Constant {c}",), "f", required=False)
           for c in ("a", "b", "c", "alpha", "beta", "gamma")]
    lat = tuple(lat) if all(v is not None for v in lat) else (1.0, 1.0, 1.0, 90.0, 90.0, 90.0)
    return Phase(name=name, symmetry=sym, lattice=lat)


def read_emsoft(path, refined: bool = False, z_spacing: float | None = None) -> EBSDVolume:
    """Read an EMsoft dictionary-indexing ``.h5`` as a ``Z = 1`` :class:`EBSDVolume`: the best match of every
    point, or the refined orientations (``refined=True``, needs ``RefinedEulerAngles``)."""
    path = Path(path)
    with FormatContext(path, "reading EMsoft .h5"):
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise fmt_error(path, f"not a readable HDF5 file ({exc})") from None
        with f:
            return _read(f, path, refined, z_spacing)


def _rows(path, ds, n: int, width: int | None, what: str) -> np.ndarray:
    if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiu":
        raise fmt_error(path, f"{what} is missing or not numeric")
    a = np.asarray(ds[()])
    if width is None:
        a = a.reshape(-1)
        if a.size < n:
            raise fmt_error(path, f"{ds.name} holds {a.size} values, fewer than nRows x nColumns = {n}")
        return a[:n]
    if a.ndim != 2 or a.shape[1] != width or a.shape[0] < n:
        raise fmt_error(path, f"{ds.name} has shape {a.shape}; expected (>= {n}, {width})")
    return a[:n]


def _read(f: h5py.File, path: Path, refined: bool, z_spacing) -> EBSDVolume:
    hdr, d = f.get(f"{_BASE}/Header"), f.get(f"{_BASE}/Data")
    if not isinstance(hdr, h5py.Group) or not isinstance(d, h5py.Group):
        raise fmt_error(path, f"no {_BASE}/Header and {_BASE}/Data groups; not an EMsoft dictionary-indexing file")
    Y = scalar(path, hdr, ("nRows",), "i")
    X = scalar(path, hdr, ("nColumns",), "i")
    dx = scalar(path, hdr, ("Step X",), "f")
    dy = scalar(path, hdr, ("Step Y",), "f")
    if X < 1 or Y < 1 or X * Y > 10**9:
        raise fmt_error(path, f"nRows x nColumns = {Y} x {X} is not a map size")
    if not (dx > 0 and dy > 0):
        raise fmt_error(path, f"Step X/Y = {dx}/{dy} must be positive")
    phase = _phase(path, hdr)
    n = X * Y
    if refined:
        eul = _rows(path, d.get("RefinedEulerAngles"), n, 3, f"{d.name}/RefinedEulerAngles").astype(np.float64)
    else:
        tmi = d.get("TopMatchIndices")
        if not isinstance(tmi, h5py.Dataset) or tmi.ndim != 2:
            raise fmt_error(path, f"{d.name}/TopMatchIndices is missing or not (N, nnk)")
        top = _rows(path, tmi, n, tmi.shape[1], f"{d.name}/TopMatchIndices")[:, 0].astype(np.int64)
        fz = scalar(path, d, ("FZcnt",), "i")
        dic = d.get("DictionaryEulerAngles")
        if not isinstance(dic, h5py.Dataset) or dic.ndim != 2 or dic.shape[1] != 3 or dic.shape[0] < fz \
                or dic.dtype.kind != "f":
            raise fmt_error(path, f"{d.name}/DictionaryEulerAngles must be (>= FZcnt = {fz}, 3) degrees")
        if top.min(initial=1) < 1 or top.max(initial=1) > fz:
            raise fmt_error(path, f"{d.name}/TopMatchIndices point outside the dictionary 1..FZcnt = {fz}")
        eul = np.deg2rad(np.asarray(dic[:fz], dtype=np.float64)[top - 1])
    if not np.isfinite(eul).all() or np.abs(eul).max(initial=0.0) > 4 * math.pi + 0.01:
        raise fmt_error(path, "Euler angles are NaN/inf or beyond 4 pi")
    q = euler_rows_to_quat(eul.reshape(Y, X, 3))

    def opt(name):
        ds = d.get(name)
        if isinstance(ds, h5py.Dataset) and ds.dtype.kind in "fiu" and ds.size >= n:
            a = np.asarray(ds[()], dtype=np.float32).reshape(-1)[:n]
            if np.isfinite(a).all():
                return torch.from_numpy(a.reshape(Y, X).copy())
        return torch.ones(Y, X)

    dz = check_z_spacing(z_spacing) if z_spacing is not None else dx
    meta = {"source": str(path), "format": "emsoft", "manufacturer": manufacturer(f), "refined": bool(refined)}
    return assemble_volume(quaternions=q[None].contiguous(), phases=torch.ones((1, Y, X), dtype=torch.int32),
                           confidence=opt("CI")[None], image_quality=opt("IQ")[None],
                           valid=torch.ones((1, Y, X), dtype=torch.bool), spacing=(dz, dy, dx),
                           origin=(0.0, 0.0, 0.0), phase_info={1: phase}, metadata=meta)
