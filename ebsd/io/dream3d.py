"""DREAM.3D ``.dream3d`` (HDF5, SIMPL 6.x layout, FileVersion 7.0): reader and writer.

Layout read and written::

    /                                   attrs FileVersion "7.0", "DREAM3D Version"
    /DataContainers/<container>/_SIMPL_GEOMETRY   DIMENSIONS (x,y,z) int64, SPACING (x,y,z) float32,
                                                  ORIGIN (x,y,z) float32; attrs GeometryType 0 (image) ...
    /DataContainers/<container>/CellData          attrs AttributeMatrixType 3, TupleDimensions (x,y,z)
        EulerAngles (Z,Y,X,3) float32 radians, Phases (Z,Y,X,1) int32, Confidence Index, Image Quality
        (Z,Y,X,1) float32, Quats (Z,Y,X,4) float32, Mask (Z,Y,X,1) uint8 ("DataArray<bool>"),
        Measured (Z,Y,X,1) uint8 ("DataArray<bool>", ours: EBSDVolume.measured; absent = all measured)
        each with attrs ComponentDimensions, TupleDimensions, ObjectType, DataArrayVersion 2
    /DataContainers/<container>/CellEnsembleData  attrs AttributeMatrixType 11
        CrystalStructures (N+1,1) uint32 (EbsdLib codes: 0 6/mmm, 1 m-3m, 2 6/m, 3 m-3, 4 -1, 5 2/m,
        6 mmm, 7 4/m, 8 4/mmm, 9 -3, 10 -3m; 999 = unknown, tuple 0 is DREAM.3D's "unknown phase")
        MaterialName (StringDataArray), LatticeConstants (N+1,6) float32
    /DataContainerBundles, /Pipeline    (empty bundle group, a minimal pipeline JSON)
    /EBSDTK/Metadata                    JSON: our metadata, exact (float64) spacing/origin, phase-id offset

Quaternions: DREAM.3D (EbsdLib, passive, epsijk = +1) stores ``Quats`` vector first ``(x, y, z, w)``. Its
``eu2qu`` gives exactly our (orix's) ``(a, b, c, d)`` up to that order, so we write ``(b, c, d, a)`` and read
``Quats[..., [3, 0, 1, 2]]``: no sign change. When ``Quats`` exist the reader uses them (bit-exact round
trip); else it converts ``EulerAngles``. ``valid`` is written as ``Mask``; files without a Mask get
``valid = (phase > 0) & (CI >= 0)`` (phase 0 is DREAM.3D's "not indexed").

Memory: the reader preallocates the output tensors and fills them slab by slab (about 64 MB of HDF5 data at a
time), so its peak is the volume plus one slab. The writer likewise converts and writes slab by slab.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import EBSDValueError
from ..volume import EBSDVolume, Phase
from ._common import (
    assemble_volume,
    DREAM3D_CODE_TO_LAUE,
    DREAM3D_UNKNOWN,
    LAUE_TO_DREAM3D_CODE,
    FormatContext,
    euler_rows_to_quat,
    fmt_error,
    metadata_to_json,
    progress_bar,
    quat_to_euler_np,
)

__all__ = ["read_dream3d", "write_dream3d"]

_SLAB_BYTES = 64 * 2**20
_CELL_NAMES = {
    "euler": ("EulerAngles", "CellEulerAngles"),
    "quats": ("Quats", "CellQuats"),
    "phases": ("Phases", "CellPhases"),
    "ci": ("Confidence Index", "ConfidenceIndex", "CI"),
    "iq": ("Image Quality", "ImageQuality", "IQ"),
    "mask": ("Mask", "GoodVoxels"),
    "measured": ("Measured",),
}


# ---------------------------------------------------------------------------------------------- helpers
def _str_attr(obj, name: str, value: str) -> None:
    """Fixed-length, NUL-terminated ASCII string attribute, as DREAM.3D (H5Lite) writes them."""
    b = value.encode("ascii", errors="replace")
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(b) + 1)
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    obj.attrs.create(name, np.array(b, dtype=f"S{len(b) + 1}"), dtype=h5py.Datatype(tid))


def _array_attrs(ds, object_type: str, comp: tuple[int, ...], tuple_dims: tuple[int, ...]) -> None:
    ds.attrs.create("ComponentDimensions", np.array(comp, dtype=np.uint64))
    ds.attrs.create("DataArrayVersion", np.array([2], dtype=np.int32))
    _str_attr(ds, "ObjectType", object_type)
    ds.attrs.create("TupleDimensions", np.array(tuple_dims, dtype=np.uint64))
    axes = "xyzuvw"
    _str_attr(ds, "Tuple Axis Dimensions", ",".join(f"{axes[i]}={d}" for i, d in enumerate(tuple_dims)))


def _attr_str(v) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace").rstrip("\x00 ")
    if isinstance(v, np.ndarray):
        return _attr_str(v.ravel()[0]) if v.size else ""
    return str(v)


def _slab(shape: tuple[int, ...], itemsize: int) -> int:
    per = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    return max(1, min(shape[0], _SLAB_BYTES // per))


def _find(group, names) -> h5py.Dataset | None:
    for n in names:
        obj = group.get(n)
        if isinstance(obj, h5py.Dataset):
            return obj
    return None


def _find_matrix(dc: h5py.Group, default: str, am_type: int) -> h5py.Group | None:
    g = dc.get(default)
    if isinstance(g, h5py.Group):
        return g
    for _, obj in dc.items():
        if isinstance(obj, h5py.Group):
            t = obj.attrs.get("AttributeMatrixType")
            try:
                if t is not None and int(np.asarray(t).ravel()[0]) == am_type:
                    return obj
            except (TypeError, ValueError, IndexError):
                continue
    return None


# ---------------------------------------------------------------------------------------------- reader
def read_dream3d(path, container: str | None = None, progress: bool = False) -> EBSDVolume:
    """Read an image-geometry data container of a ``.dream3d`` file as an :class:`EBSDVolume`."""
    path = Path(path)
    with FormatContext(path, "reading .dream3d"):
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise fmt_error(path, f"not a readable HDF5 file ({exc})") from None
        with f:
            return _read(f, path, container, progress)


def _read_field(path, ds: h5py.Dataset, name: str, zyx: tuple[int, int, int], comps: int, kind: str,
                out: np.ndarray, progress, bar_desc: str | None = None) -> None:
    Z, Y, X = zyx
    shp = tuple(ds.shape)
    if shp not in ((Z, Y, X, comps),) + (((Z, Y, X),) if comps == 1 else ()):
        raise fmt_error(path, f"{ds.name} has shape {shp}, expected {(Z, Y, X, comps)} from the geometry DIMENSIONS")
    if ds.dtype.kind not in kind:
        raise fmt_error(path, f"{ds.name} has dtype {ds.dtype}, expected {'a float' if kind == 'f' else 'an integer'} type")
    step = _slab(shp, max(ds.dtype.itemsize, out.itemsize))
    for z0 in range(0, Z, step):
        z1 = min(Z, z0 + step)
        block = ds[z0:z1]
        block = block.reshape((z1 - z0, Y, X) + ((comps,) if comps > 1 else ()))
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            raise fmt_error(path, f"{ds.name} contains NaN/inf in slices {z0}..{z1 - 1}; the file is damaged")
        out[z0:z1] = block


def _read(f: h5py.File, path: Path, container: str | None, progress: bool) -> EBSDVolume:
    dcs = f.get("DataContainers")
    if not isinstance(dcs, h5py.Group):
        raise fmt_error(path, "no /DataContainers group; not a DREAM.3D 6.x file")
    names = list(dcs.keys())
    if container is not None:
        if container not in dcs:
            raise fmt_error(path, f"no data container {container!r}; the file has {names}")
        cand = [container]
    else:
        cand = [n for n in names if isinstance(dcs[n], h5py.Group) and "_SIMPL_GEOMETRY" in dcs[n]
                and isinstance(_find_matrix(dcs[n], "CellData", 3), h5py.Group)
                and (_find(_find_matrix(dcs[n], "CellData", 3), _CELL_NAMES["euler"]) is not None
                     or _find(_find_matrix(dcs[n], "CellData", 3), _CELL_NAMES["quats"]) is not None)]
        if not cand:
            raise fmt_error(
                path, f"no data container with _SIMPL_GEOMETRY and cell EulerAngles/Quats (containers: {names})"
            )
    cname = cand[0]
    dc = dcs[cname]
    geom = dc.get("_SIMPL_GEOMETRY")
    if not isinstance(geom, h5py.Group):
        raise fmt_error(path, f"/DataContainers/{cname} has no _SIMPL_GEOMETRY group")
    try:
        dims = np.asarray(geom["DIMENSIONS"][()]).astype(np.float64).ravel()
        spacing = np.asarray(geom["SPACING"][()] if "SPACING" in geom else geom["RESOLUTION"][()],
                             dtype=np.float64).ravel()
        origin = np.asarray(geom["ORIGIN"][()], dtype=np.float64).ravel() if "ORIGIN" in geom else np.zeros(3)
    except (KeyError, TypeError, ValueError) as exc:
        raise fmt_error(path, f"_SIMPL_GEOMETRY needs DIMENSIONS, SPACING and ORIGIN datasets ({exc})") from None
    if dims.size != 3 or spacing.size != 3 or origin.size != 3:
        raise fmt_error(path, "_SIMPL_GEOMETRY DIMENSIONS/SPACING/ORIGIN must have 3 values (x, y, z)")
    if not np.isfinite(dims).all() or (dims < 1).any() or (dims != np.rint(dims)).any() or dims.prod() > 2**40:
        raise fmt_error(path, f"_SIMPL_GEOMETRY DIMENSIONS {dims.tolist()} are not positive integers")
    if not np.isfinite(spacing).all() or (spacing <= 0).any():
        raise fmt_error(path, f"_SIMPL_GEOMETRY SPACING {spacing.tolist()} must be positive")
    if not np.isfinite(origin).all():
        raise fmt_error(path, f"_SIMPL_GEOMETRY ORIGIN {origin.tolist()} must be finite")
    X, Y, Z = (int(d) for d in dims)
    cell = _find_matrix(dc, "CellData", 3)
    if cell is None:
        raise fmt_error(path, f"/DataContainers/{cname} has no CellData attribute matrix")

    # our own metadata (optional)
    meta: dict = {}
    ours = f.get("EBSDTK/Metadata")
    if isinstance(ours, h5py.Dataset):
        try:
            raw = ours[()]
            meta = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError, TypeError) as exc:
            raise fmt_error(path, f"/EBSDTK/Metadata is not valid JSON ({exc})") from None
    offset = int(meta.get("phase_id_offset", 0)) if isinstance(meta.get("phase_id_offset", 0), int) else 0

    zyx = (Z, Y, X)
    # check every cell array's shape against the geometry before allocating anything
    for key, comps in (("quats", 4), ("euler", 3), ("phases", 1), ("ci", 1), ("iq", 1), ("mask", 1),
                       ("measured", 1)):
        ds = _find(cell, _CELL_NAMES[key])
        if ds is not None and tuple(ds.shape) not in ((Z, Y, X, comps),) + (((Z, Y, X),) if comps == 1 else ()):
            raise fmt_error(
                path, f"{ds.name} has shape {tuple(ds.shape)}, expected {(Z, Y, X, comps)} from the geometry "
                f"DIMENSIONS {[X, Y, Z]}"
            )
    quats = torch.empty((Z, Y, X, 4), dtype=torch.float32)
    qn = quats.numpy()
    dq = _find(cell, _CELL_NAMES["quats"])
    de = _find(cell, _CELL_NAMES["euler"])
    if dq is not None:
        _read_field(path, dq, "Quats", zyx, 4, "f", qn, progress)
        step = _slab((Z, Y, X, 4), 16)
        for z0 in range(0, Z, step):  # (x, y, z, w) -> (w, x, y, z) in place, slab by slab
            blk = qn[z0:z0 + step]
            blk[:] = blk[..., [3, 0, 1, 2]]
            nrm = np.sqrt((blk.astype(np.float64) ** 2).sum(-1))
            if np.abs(nrm - 1).max(initial=0.0) > 1e-3:
                raise fmt_error(path, f"{dq.name} holds non-unit quaternions (slices {z0}..); the file is damaged")
    elif de is not None:
        shp = tuple(de.shape)
        if shp != (Z, Y, X, 3):
            raise fmt_error(path, f"{de.name} has shape {shp}, expected {(Z, Y, X, 3)} from the geometry DIMENSIONS")
        if de.dtype.kind != "f":
            raise fmt_error(path, f"{de.name} has dtype {de.dtype}, expected float32 radians")
        step = _slab(shp, 8)
        with progress_bar(Z, "reading .dream3d", progress) as bar:
            for z0 in range(0, Z, step):
                blk = de[z0:z0 + step]
                if not np.isfinite(blk).all():
                    raise fmt_error(path, f"{de.name} contains NaN/inf (slices {z0}..); the file is damaged")
                if np.abs(blk).max(initial=0.0) > 4 * math.pi + 0.01:
                    raise fmt_error(path, f"{de.name} values exceed 4 pi; DREAM.3D stores radians (degrees?)")
                euler_rows_to_quat(blk, out=quats[z0:z0 + step])
                bar.update(blk.shape[0])
    else:
        raise fmt_error(path, f"{cell.name} has neither EulerAngles nor Quats")

    phases = torch.ones((Z, Y, X), dtype=torch.int32)
    dp = _find(cell, _CELL_NAMES["phases"])
    if dp is not None:
        _read_field(path, dp, "Phases", zyx, 1, "iu", phases.numpy(), progress)
    ci = torch.ones((Z, Y, X), dtype=torch.float32)
    dci = _find(cell, _CELL_NAMES["ci"])
    if dci is not None:
        _read_field(path, dci, "Confidence Index", zyx, 1, "f", ci.numpy(), progress)
    iq = torch.ones((Z, Y, X), dtype=torch.float32)
    diq = _find(cell, _CELL_NAMES["iq"])
    if diq is not None:
        _read_field(path, diq, "Image Quality", zyx, 1, "f", iq.numpy(), progress)

    # ensemble (phases)
    ens = _find_matrix(dc, "CellEnsembleData", 11)
    if ens is None or _find(ens, ("CrystalStructures",)) is None:
        raise fmt_error(
            path, f"/DataContainers/{cname} has no CellEnsembleData/CrystalStructures: the crystal symmetry of "
            "the phases is unknown (add it in DREAM.3D with 'Create Ensemble Info')"
        )
    cs = np.asarray(ens["CrystalStructures"][()]).ravel()
    if cs.dtype.kind not in "iu" or cs.size < 1 or cs.size > 10_000:
        raise fmt_error(path, f"CrystalStructures has dtype {cs.dtype} / {cs.size} entries; expected uint32 codes")
    names = [f"phase {i}" for i in range(cs.size)]
    if "MaterialName" in ens:
        try:
            mn = ens["MaterialName"][()]
            mn = [mn] if np.ndim(mn) == 0 else list(np.asarray(mn, dtype=object).ravel())
            for i, v in enumerate(mn[: cs.size]):
                names[i] = _attr_str(v)
        except (TypeError, ValueError, OSError) as exc:
            raise fmt_error(path, f"MaterialName is unreadable ({exc})") from None
    lattice = None
    if "LatticeConstants" in ens:
        lattice = np.asarray(ens["LatticeConstants"][()], dtype=np.float64)
        if lattice.ndim != 2 or lattice.shape != (cs.size, 6) or not np.isfinite(lattice).all():
            raise fmt_error(path, f"LatticeConstants has shape {lattice.shape}, expected ({cs.size}, 6) finite values")
    phase_info: dict[int, Phase] = {}
    for i in range(1, cs.size):
        code = int(cs[i])
        if code == DREAM3D_UNKNOWN:
            continue
        if code not in DREAM3D_CODE_TO_LAUE:
            raise fmt_error(path, f"CrystalStructures[{i}] = {code} is not a DREAM.3D crystal structure code")
        lat = tuple(float(v) for v in lattice[i]) if lattice is not None else (1.0, 1.0, 1.0, 90.0, 90.0, 90.0)
        phase_info[i - offset] = Phase(name=names[i], symmetry=DREAM3D_CODE_TO_LAUE[code], lattice=lat)
    if not phase_info:
        raise fmt_error(path, "CrystalStructures defines no phase (only the unknown phase 0)")
    exact = meta.get("phases") if isinstance(meta.get("phases"), dict) else {}
    for k, v in exact.items():  # float64 lattice constants and full names we wrote, if they still agree
        try:
            pid = int(k)
            cur = phase_info.get(pid)
            lat = tuple(float(t) for t in v["lattice"])
            if cur is not None and v["symmetry"] == cur.symmetry and len(lat) == 6 and all(
                    abs(a - b) <= 1e-5 * max(1.0, abs(b)) for a, b in zip(lat, cur.lattice)):
                phase_info[pid] = Phase(name=str(v["name"]), symmetry=cur.symmetry, lattice=lat)
        except (TypeError, ValueError, KeyError, AttributeError):
            continue
    if offset:
        phases -= offset
    pmax = int(phases.max()) if phases.numel() else 0
    if pmax > max(phase_info):
        raise fmt_error(path, f"Phases holds id {pmax} but CrystalStructures defines only {sorted(phase_info)}")

    dm = _find(cell, _CELL_NAMES["mask"])
    if dm is not None:
        m = np.empty((Z, Y, X), dtype=np.uint8)
        _read_field(path, dm, "Mask", zyx, 1, "iub", m, progress)
        valid = torch.from_numpy(m.astype(bool))
    else:
        ids = torch.tensor(sorted(phase_info), dtype=torch.int32)
        valid = torch.isin(phases, ids) & (ci >= 0)

    measured = None
    dmeas = _find(cell, _CELL_NAMES["measured"])
    if dmeas is not None:
        m = np.empty((Z, Y, X), dtype=np.uint8)
        _read_field(path, dmeas, "Measured", zyx, 1, "iub", m, progress)
        measured = torch.from_numpy(m.astype(bool))
        if dm is None:  # no Mask: validity from phases/CI, and a voxel never measured is not valid
            valid &= measured  # (with a Mask, it says: a recovered voxel is valid but not measured)

    sp = (float(spacing[2]), float(spacing[1]), float(spacing[0]))
    org = (float(origin[2]), float(origin[1]), float(origin[0]))
    for key, cur in (("spacing", sp), ("origin", org)):  # exact float64 values we wrote, if they still agree
        v = meta.get(key)
        if isinstance(v, list) and len(v) == 3:
            try:
                v = tuple(float(t) for t in v)
                if all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for a, b in zip(v, cur)):
                    if key == "spacing":
                        sp = v
                    else:
                        org = v
            except (TypeError, ValueError):
                pass
    md = meta.get("metadata") if isinstance(meta.get("metadata"), dict) else {}
    md = dict(md)
    md.update({"source": str(path), "format": "dream3d", "dream3d_container": cname})
    if len(cand) > 1:
        md["dream3d_other_containers"] = cand[1:]
    return assemble_volume(quaternions=quats, phases=phases, confidence=ci, image_quality=iq, spacing=sp, origin=org,
                           phase_info=phase_info, valid=valid, metadata=md, measured=measured)


# ---------------------------------------------------------------------------------------------- writer
def write_dream3d(vol: EBSDVolume, path, overwrite: bool = False, container: str = "ImageDataContainer",
                  progress: bool = False, compression: str | None = None) -> Path:
    """Write ``vol`` as a DREAM.3D 6.x ``.dream3d`` file (via a temporary file and a rename)."""
    from ._atomic import atomic_file

    path = Path(path)
    Z, Y, X = vol.shape
    ids = sorted(vol.phase_info)
    offset = 1 - ids[0] if ids and ids[0] < 1 else 0
    nens = ids[-1] + offset + 1
    if nens > 10_000:
        raise EBSDValueError(f"phase ids up to {ids[-1]}: too many for DREAM.3D ensemble arrays")
    cs = np.full((nens, 1), DREAM3D_UNKNOWN, dtype=np.uint32)
    lat = np.zeros((nens, 6), dtype=np.float32)
    names = ["Invalid Phase"] + ["Unknown Phase"] * (nens - 1)
    for pid in ids:
        ph = vol.phase_info[pid]
        code = LAUE_TO_DREAM3D_CODE.get(ph.symmetry)
        if code is None:
            raise EBSDValueError(f"phase {pid}: symmetry {ph.symmetry!r} has no DREAM.3D crystal structure code")
        cs[pid + offset, 0] = code
        lat[pid + offset] = np.asarray(ph.lattice, dtype=np.float32)
        names[pid + offset] = str(ph.name)
    meta = {
        "writer": "ebsd-tensor-toolkit", "spacing": list(vol.spacing), "origin": list(vol.origin),
        "phases": {str(k): {"name": str(p.name), "symmetry": p.symmetry, "lattice": [float(t) for t in p.lattice]}
                   for k, p in vol.phase_info.items()},
        "phase_id_offset": offset, "quaternion_convention": "Quats stored (x, y, z, w) = our (b, c, d, a)",
        "metadata": json.loads(metadata_to_json(vol.metadata or {})),
    }
    tdims = (X, Y, Z)
    chunks = lambda c: (1, Y, X, c)  # noqa: E731
    kw = dict(compression=compression) if compression else {}
    with atomic_file(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            _str_attr(f, "FileVersion", "7.0")
            _str_attr(f, "DREAM3D Version", "6.5.171 (ebsd-tensor-toolkit writer)")
            f.create_group("DataContainerBundles")
            pipe = f.create_group("Pipeline")
            pipe.attrs.create("Pipeline Version", np.array([2], dtype=np.int32))
            pj = json.dumps({"PipelineBuilder": {"Name": "ebsd-tensor-toolkit export", "Number_Filters": 0,
                                                 "Version": 6}})
            pipe.create_dataset("Pipeline", data=pj, dtype=h5py.string_dtype("ascii"))
            dc = f.create_group(f"DataContainers/{container}")
            geom = dc.create_group("_SIMPL_GEOMETRY")
            geom.create_dataset("DIMENSIONS", data=np.array([X, Y, Z], dtype=np.int64))
            geom.create_dataset("ORIGIN", data=np.array(vol.origin[::-1], dtype=np.float32))
            geom.create_dataset("SPACING", data=np.array(vol.spacing[::-1], dtype=np.float32))
            _str_attr(geom, "GeometryName", "ImageGeometry")
            _str_attr(geom, "GeometryTypeName", "ImageGeometry")
            geom.attrs.create("GeometryType", np.array([0], dtype=np.uint32))
            geom.attrs.create("SpatialDimensionality", np.array([3], dtype=np.uint32))
            geom.attrs.create("UnitDimensionality", np.array([3], dtype=np.uint32))
            cell = dc.create_group("CellData")
            cell.attrs.create("AttributeMatrixType", np.array([3], dtype=np.uint32))
            cell.attrs.create("TupleDimensions", np.array(tdims, dtype=np.uint64))
            d_eu = cell.create_dataset("EulerAngles", (Z, Y, X, 3), np.float32, chunks=chunks(3), **kw)
            d_q = cell.create_dataset("Quats", (Z, Y, X, 4), np.float32, chunks=chunks(4), **kw)
            d_ph = cell.create_dataset("Phases", (Z, Y, X, 1), np.int32, chunks=chunks(1), **kw)
            d_ci = cell.create_dataset("Confidence Index", (Z, Y, X, 1), np.float32, chunks=chunks(1), **kw)
            d_iq = cell.create_dataset("Image Quality", (Z, Y, X, 1), np.float32, chunks=chunks(1), **kw)
            d_m = cell.create_dataset("Mask", (Z, Y, X, 1), np.uint8, chunks=chunks(1), **kw)
            d_me = cell.create_dataset("Measured", (Z, Y, X, 1), np.uint8, chunks=chunks(1), **kw)
            for ds, ot, c in ((d_eu, "DataArray<float>", 3), (d_q, "DataArray<float>", 4),
                              (d_ph, "DataArray<int32_t>", 1), (d_ci, "DataArray<float>", 1),
                              (d_iq, "DataArray<float>", 1), (d_m, "DataArray<bool>", 1),
                              (d_me, "DataArray<bool>", 1)):
                _array_attrs(ds, ot, (c,), tdims)
            step = _slab((Z, Y, X, 4), 32)
            with progress_bar(Z, "writing .dream3d", progress) as bar:
                for z0 in range(0, Z, step):
                    z1 = min(Z, z0 + step)
                    q = vol.quaternions[z0:z1].detach().cpu()
                    d_q[z0:z1] = q.numpy()[..., [1, 2, 3, 0]]
                    d_eu[z0:z1] = quat_to_euler_np(q).astype(np.float32)
                    d_ph[z0:z1] = (vol.phases[z0:z1].cpu().numpy() + offset)[..., None]
                    d_ci[z0:z1] = vol.confidence[z0:z1].cpu().numpy()[..., None]
                    d_iq[z0:z1] = vol.image_quality[z0:z1].cpu().numpy()[..., None]
                    d_m[z0:z1] = vol.valid[z0:z1].cpu().numpy().astype(np.uint8)[..., None]
                    d_me[z0:z1] = vol.measured[z0:z1].cpu().numpy().astype(np.uint8)[..., None]
                    bar.update(z1 - z0)
            ens = dc.create_group("CellEnsembleData")
            ens.attrs.create("AttributeMatrixType", np.array([11], dtype=np.uint32))
            ens.attrs.create("TupleDimensions", np.array([nens], dtype=np.uint64))
            d = ens.create_dataset("CrystalStructures", data=cs)
            _array_attrs(d, "DataArray<uint32_t>", (1,), (nens,))
            d = ens.create_dataset("LatticeConstants", data=lat)
            _array_attrs(d, "DataArray<float>", (6,), (nens,))
            # variable-length ASCII strings, as DREAM.3D's StringDataArray (exact names go to /EBSDTK/Metadata)
            d = ens.create_dataset("MaterialName", data=[n.encode("ascii", errors="replace") for n in names],
                                   dtype=h5py.string_dtype("ascii"))
            _array_attrs(d, "StringDataArray", (1,), (nens,))
            g = f.create_group("EBSDTK")
            g.create_dataset("Metadata", data=json.dumps(meta), dtype=h5py.string_dtype("utf-8"))
    return path


# ------------------------------------------------------------------------------------ feature arrays
_OBJECT_TYPES = {np.dtype(np.float32): "DataArray<float>", np.dtype(np.float64): "DataArray<double>",
                 np.dtype(np.int32): "DataArray<int32_t>", np.dtype(np.int64): "DataArray<int64_t>",
                 np.dtype(np.uint32): "DataArray<uint32_t>", np.dtype(np.uint8): "DataArray<uint8_t>"}


def write_feature_arrays(path, feature_ids: np.ndarray, features: dict, container: str = "ImageDataContainer",
                         matrix: str = "CellFeatureData", extra: dict | None = None) -> None:
    """Add grain (feature) arrays to a ``.dream3d`` written by :func:`write_dream3d`, in place (the caller
    writes to a temporary file and renames it).

    Writes ``CellData/FeatureIds`` (``(Z, Y, X, 1)`` int32, 0 = no feature) and the attribute matrix
    ``matrix`` (AttributeMatrixType 7, CellFeature; TupleDimensions ``(G + 1,)``) holding each array of
    ``features`` (``{name: (G + 1, components)}``; bool arrays are stored as uint8 ``DataArray<bool>``, as
    DREAM.3D does), and ``extra`` (numpy arrays or JSON strings) under ``/EBSDTK/Reconstruction``.
    """
    with h5py.File(path, "a") as f:
        dc = f[f"DataContainers/{container}"]
        cell = dc["CellData"]
        Z, Y, X = feature_ids.shape
        tdims = (X, Y, Z)
        d = cell.create_dataset("FeatureIds", data=feature_ids.reshape(Z, Y, X, 1).astype(np.int32),
                                chunks=(1, Y, X, 1))
        _array_attrs(d, "DataArray<int32_t>", (1,), tdims)
        n = None
        am = dc.create_group(matrix)
        am.attrs.create("AttributeMatrixType", np.array([7], dtype=np.uint32))
        for name, arr in features.items():
            arr = np.asarray(arr)
            if arr.ndim == 1:
                arr = arr[:, None]
            if n is None:
                n = arr.shape[0]
            if arr.shape[0] != n:
                raise EBSDValueError(f"feature array {name} has {arr.shape[0]} tuples, expected {n}")
            if arr.dtype == np.bool_:
                ds = am.create_dataset(name, data=arr.astype(np.uint8))
                ot = "DataArray<bool>"
            else:
                ds = am.create_dataset(name, data=arr)
                ot = _OBJECT_TYPES.get(arr.dtype, "DataArray<float>")
            _array_attrs(ds, ot, (arr.shape[1],), (n,))
        am.attrs.create("TupleDimensions", np.array([n or 1], dtype=np.uint64))
        if extra:
            g = f.require_group("EBSDTK").create_group("Reconstruction")
            for k, v in extra.items():
                if isinstance(v, str):
                    g.create_dataset(k, data=v, dtype=h5py.string_dtype("utf-8"))
                else:
                    g.create_dataset(k, data=np.asarray(v))
