"""Small synthetic vendor files for the I/O tests (EDAX OIM .h5 and DREAM.3D .h5ebsd built with h5py
following the documented layouts, and random EBSD volumes)."""
from __future__ import annotations

import numpy as np
import torch

from ebsd import EBSDVolume, Phase


def random_volume(shape=(4, 6, 7), seed=0, two_phase=True, unindexed=0.1) -> EBSDVolume:
    """A small random volume: uniform random orientations (two phases), CI -1 where not indexed."""
    g = torch.Generator().manual_seed(seed)
    Z, Y, X = shape
    q = torch.randn(Z, Y, X, 4, generator=g, dtype=torch.float64)
    q = (q / q.norm(dim=-1, keepdim=True)).float()
    info = {1: Phase("Nickel", "m-3m", (3.524, 3.524, 3.524, 90.0, 90.0, 90.0))}
    if two_phase:
        info[2] = Phase("Titanium (Alpha)", "6/mmm", (2.95, 2.95, 4.68, 90.0, 90.0, 120.0))
    ph = torch.randint(1, len(info) + 1, (Z, Y, X), generator=g, dtype=torch.int32)
    ci = torch.rand(Z, Y, X, generator=g)
    valid = torch.rand(Z, Y, X, generator=g) >= unindexed
    ci[~valid] = -1.0
    iq = torch.rand(Z, Y, X, generator=g) * 5000
    return EBSDVolume(q, ph, ci, iq, spacing=(0.5, 0.25, 0.25), origin=(0.0, 0.0, 0.0), phase_info=info,
                      valid=valid, metadata={"recovered_slices": [1], "note": "random test volume"})


def write_oim_h5(path, vol: EBSDVolume, scans=None, grid="SqrGrid"):
    """EDAX OIM .h5 via :func:`ebsd.io.h5oim.write_oim_h5` (one scan per z slice), optionally relabelled
    as another grid type."""
    import h5py

    from ebsd.io.h5oim import write_oim_h5 as _write

    _write(vol, path, scans=scans)
    if grid != "SqrGrid":
        with h5py.File(path, "a") as f:
            for name in f:
                del f[name]["EBSD/Header/Grid Type"]
                f[name]["EBSD/Header/Grid Type"] = np.array([grid.encode()])
    return path


def write_h5ebsd(path, vol: EBSDVolume, z_start=1, stacking=0):
    """DREAM.3D H5EBSD (TSL) with slice groups z_start .. z_start + Z - 1."""
    import h5py

    from ebsd.io._common import LAUE_TO_TSL_CODE
    from ebsd.orientation import quat_to_euler

    Z, Y, X = vol.shape
    dz, dy, dx = vol.spacing
    idx = list(range(z_start, z_start + Z))
    with h5py.File(path, "w") as f:
        f.attrs["FileVersion"] = np.int32(5)
        f.attrs["EbsdLibVersion"] = np.bytes_("1.0.0")
        f["ZStartIndex"] = np.int64(z_start)
        f["ZEndIndex"] = np.int64(z_start + Z - 1)
        f["Z Resolution"] = np.float32(dz)
        f["X Resolution"] = np.float32(dx)
        f["Y Resolution"] = np.float32(dy)
        f["Max X Points"] = np.int64(X)
        f["Max Y Points"] = np.int64(Y)
        so = f.create_dataset("Stacking Order", data=np.uint32(stacking))
        so.attrs["Name"] = np.bytes_("Low To High" if stacking == 0 else "High To Low")
        f["Manufacturer"] = np.bytes_("TSL")
        f["Index"] = np.array(idx, dtype=np.int32)
        for k, v in (("SampleTransformationAngle", 180.0), ("EulerTransformationAngle", 90.0)):
            f[k] = np.float32(v)
        f["SampleTransformationAxis"] = np.array([0, 1, 0], np.float32)
        f["EulerTransformationAxis"] = np.array([0, 0, 1], np.float32)
        for z, i in enumerate(idx):
            src = z if stacking == 0 else Z - 1 - z  # High To Low: group z_start holds the last slice
            hdr = f.create_group(f"{i}/Header")
            hdr["GRID"] = np.bytes_("SqrGrid")
            hdr["XSTEP"] = np.float32(dx)
            hdr["YSTEP"] = np.float32(dy)
            hdr["NCOLS_ODD"] = np.int32(X)
            hdr["NCOLS_EVEN"] = np.int32(X)
            hdr["NROWS"] = np.int32(Y)
            hdr["OriginalFile"] = np.bytes_(f"slice_{i}.ang")
            for pid, ph in vol.phase_info.items():
                pg = hdr.create_group(f"Phases/{pid}")
                pg["Phase"] = np.int32(pid)
                pg["MaterialName"] = np.bytes_(ph.name)
                pg["Symmetry"] = np.int32(LAUE_TO_TSL_CODE[ph.symmetry])
                pg["LatticeConstants"] = np.array(ph.lattice, np.float32)
            d = f.create_group(f"{i}/Data")
            e = quat_to_euler(vol.quaternions[src].double()).numpy().reshape(-1, 3)
            d["Phi1"], d["Phi"], d["Phi2"] = (e[:, j].astype(np.float32) for j in range(3))
            yy, xx = np.meshgrid(np.arange(Y) * dy, np.arange(X) * dx, indexing="ij")
            d["X Position"] = xx.ravel().astype(np.float32)
            d["Y Position"] = yy.ravel().astype(np.float32)
            d["Image Quality"] = vol.image_quality[src].numpy().ravel()
            d["Confidence Index"] = vol.confidence[src].numpy().ravel()
            d["PhaseData"] = vol.phases[src].numpy().ravel().astype(np.int32)
            d["SEM Signal"] = np.zeros(Y * X, np.float32)
            d["Fit"] = np.zeros(Y * X, np.float32)
    return path


def write_h5oina(path, vol: EBSDVolume, slices=None, outside=None, version="5.0"):
    """Oxford .h5oina following the "Oxford Instruments NanoAnalysis HDF5 File Specification": one slice group
    per z (named "1", "2", ...), EBSD/Data (Phase uint8, Euler (size, 3) float32 radians, X, Y, Band Contrast,
    Error ...) and EBSD/Header (X/Y Cells int32, X/Y Step float32, Phases/<n>/ ...). ``outside`` (Z, Y, X) bool
    marks pixels outside the acquisition area (NaN in every float Data dataset, as the spec says)."""
    import h5py

    from ebsd.io.ctf import LAUE_TO_CTF
    from ebsd.orientation import quat_to_euler

    Z, Y, X = vol.shape
    dz, dy, dx = vol.spacing
    names = list(slices) if slices is not None else [str(i + 1) for i in range(Z)]
    s = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        f.create_dataset("Manufacturer", data=["Oxford Instruments"], dtype=s)
        f.create_dataset("Software Version", data=["6.1.8000.0"], dtype=s)
        f.create_dataset("Format Version", data=[version], dtype=s)
        idx = f.create_dataset("Index", data=names, dtype=s)
        idx.attrs["Type"] = "Single"
        for z, name in enumerate(names):
            h = f.create_group(f"{name}/EBSD/Header")
            h["X Cells"] = np.array([X], np.int32)
            h["Y Cells"] = np.array([Y], np.int32)
            h["X Step"] = np.array([dx], np.float32)
            h["Y Step"] = np.array([dy], np.float32)
            h.create_dataset("Project Label", data=["test project"], dtype=s)
            h["Specimen Orientation Euler"] = np.zeros((1, 3), np.float32)
            h["Scanning Rotation Angle"] = np.zeros((1,), np.float32)
            for pid, ph in vol.phase_info.items():
                g = h.create_group(f"Phases/{pid}")
                g.create_dataset("Phase Name", data=[ph.name], dtype=s)
                g.create_dataset("Reference", data=["test"], dtype=s)
                g["Lattice Dimensions"] = np.array([ph.lattice[:3]], np.float32)
                g["Lattice Angles"] = np.radians(np.array([ph.lattice[3:]], np.float32))
                lg = g.create_dataset("Laue Group", data=np.array([LAUE_TO_CTF[ph.symmetry]], np.int32))
                lg.attrs["Symbol"] = ph.symmetry
                g["Space Group"] = np.array([0], np.int32)
            d = f.create_group(f"{name}/EBSD/Data")
            valid = vol.valid[z].numpy().ravel()
            ph = np.where(valid, vol.phases[z].numpy().ravel(), 0).astype(np.uint8)
            eul = quat_to_euler(vol.quaternions[z].double()).numpy().reshape(-1, 3).astype(np.float32)
            yy, xx = np.meshgrid(np.arange(Y) * dy, np.arange(X) * dx, indexing="ij")
            xs, ys = xx.ravel().astype(np.float32), yy.ravel().astype(np.float32)
            bc = np.clip(vol.image_quality[z].numpy().ravel(), 0, 255).astype(np.uint8)
            err = np.where(valid, 1, 2).astype(np.uint8)
            mad = np.zeros(Y * X, np.float32)
            if outside is not None:
                o = np.asarray(outside[z]).ravel()
                eul[o] = np.nan
                xs[o] = np.nan
                ys[o] = np.nan
                mad[o] = np.nan
                ph[o] = 0
            d["Phase"] = ph[:, None]
            d["Euler"] = eul
            d["X"] = xs[:, None]
            d["Y"] = ys[:, None]
            d["Band Contrast"] = bc[:, None]
            d["Band Slope"] = bc[:, None]
            d["Bands"] = np.full((Y * X, 1), 8, np.uint8)
            d["Error"] = err[:, None]
            d["Mean Angular Deviation"] = mad[:, None]
    return path


def write_bruker_h5(path, vol: EBSDVolume, shuffle=False, drop=None, seed=0, scans=None, step_header=True):
    """Bruker ESPRIT h5ebsd as orix's bruker_h5ebsd reader expects it: root Manufacturer "Bruker Nano", one
    "Scan n" group per z with EBSD/Header (NCOLS, NROWS, XSTEP, YSTEP, Grid Type "isometric", Phases/<id>/{Name,
    IT, LatticeConstants, AtomPositions ...}), EBSD/Data (phi1, PHI, phi2 in degrees, Phase, MAD, RadonQuality,
    X/Y SAMPLE, ...) and EBSD/SEM (IX, IY). ``shuffle`` stores the points in a random order (placed by IX/IY);
    ``drop`` (Y, X) bool leaves those points out (a non-rectangular region of interest)."""
    import h5py

    from ebsd.orientation import quat_to_euler

    sg = {"m-3m": 225, "6/mmm": 194, "4/mmm": 139, "mmm": 62, "2/m": 12, "-3m": 167, "-1": 2, "m-3": 205,
          "4/m": 87, "-3": 148, "6/m": 176}
    rng = np.random.default_rng(seed)
    Z, Y, X = vol.shape
    dz, dy, dx = vol.spacing
    names = list(scans) if scans is not None else [f"Scan {i}" for i in range(Z)]
    with h5py.File(path, "w") as f:
        f.create_dataset("Manufacturer", data=b"Bruker Nano")
        f.create_dataset("Version", data=b"Esprit 2.3")
        for z, name in enumerate(names):
            h = f.create_group(f"{name}/EBSD/Header")
            h.create_dataset("NCOLS", data=X, dtype=np.int32)
            h.create_dataset("NROWS", data=Y, dtype=np.int32)
            if step_header:
                h.create_dataset("XSTEP", data=dx, dtype=np.float64)
                h.create_dataset("YSTEP", data=dy, dtype=np.float64)
            h.create_dataset("Grid Type", data=b"isometric")
            for pid, ph in vol.phase_info.items():
                g = h.create_group(f"Phases/{pid}")
                g.create_dataset("Name", data=ph.name.encode())
                g.create_dataset("Formula", data=ph.name[:2].encode())
                g.create_dataset("IT", data=sg[ph.symmetry])
                g.create_dataset("LatticeConstants", data=np.array(ph.lattice))
                g.create_dataset("Setting", data=1)
                g.create_dataset("SpaceGroup", data=b"P 1")
                g.create_group("AtomPositions").create_dataset("1", data=b"Fe,0,0,0,1,0")
            rows, cols = np.indices((Y, X))
            rows, cols = rows.ravel(), cols.ravel()
            keep = np.ones(Y * X, bool) if drop is None else ~np.asarray(drop).ravel()
            order = np.flatnonzero(keep)
            if shuffle:
                order = rng.permutation(order)
            valid = vol.valid[z].numpy().ravel()
            ph = np.where(valid, vol.phases[z].numpy().ravel(), 0)
            eul = np.degrees(quat_to_euler(vol.quaternions[z].double()).numpy().reshape(-1, 3))
            d = f.create_group(f"{name}/EBSD/Data")
            d["phi1"], d["PHI"], d["phi2"] = (eul[order, j].astype(np.float32) for j in range(3))
            d["Phase"] = ph[order].astype(np.int32)
            n = order.size
            for k in ("DD", "MAD", "PCX", "PCY"):
                d[k] = np.zeros(n, np.float32)
            for k in ("MADPhase", "NIndexedBands", "RadonBandCount"):
                d[k] = np.zeros(n, np.int32)
            d["RadonQuality"] = vol.image_quality[z].numpy().ravel()[order].astype(np.float32)
            d["X BEAM"] = cols[order].astype(np.int32)
            d["Y BEAM"] = rows[order].astype(np.int32)
            d["X SAMPLE"] = ((X - 1 - cols[order]) * dx).astype(np.float32)  # Bruker's x runs the other way
            d["Y SAMPLE"] = (rows[order] * dy).astype(np.float32)
            d["Z SAMPLE"] = np.zeros(n, np.float32)
            sem = f.create_group(f"{name}/EBSD/SEM")
            sem["IX"] = cols[order].astype(np.int32)
            sem["IY"] = rows[order].astype(np.int32)
    return path


def write_emsoft_h5(path, vol: EBSDVolume, n_top=3, refined=True, seed=0):
    """EMsoft EMEBSDDI dot-product file as orix's emsoft_h5ebsd reader expects it (single phase, one slice): the
    best match of every point is ``vol``'s orientation, stored as an index into DictionaryEulerAngles
    (degrees); RefinedEulerAngles (radians) are the same orientations rotated by 0.5 degrees about z."""
    import h5py

    from ebsd.orientation import quat_to_euler

    rng = np.random.default_rng(seed)
    _, Y, X = vol.shape
    dz, dy, dx = vol.spacing
    (ph,) = vol.phase_info.values()
    n = Y * X
    eul = np.degrees(quat_to_euler(vol.quaternions[0].double()).numpy().reshape(-1, 3))
    fz = n + 5
    dic = np.vstack([eul, rng.uniform(0, [360, 180, 360], size=(5, 3))]).astype(np.float32)
    perm = rng.permutation(fz)
    dic = dic[np.argsort(perm)]  # dictionary row perm[i] holds entry i
    top = np.empty((n + 2, n_top), np.int32)  # two padding rows, as EMsoft batches
    top[:n, 0] = perm[:n] + 1  # 1-based
    top[:, 1:] = rng.integers(1, fz + 1, size=(n + 2, n_top - 1))
    top[n:, 0] = 1
    with h5py.File(path, "w") as f:
        f.create_dataset("Manufacturer", data="EMEBSDDictionaryIndexing.f90")
        f.create_dataset("NMLparameters/EBSDIndexingNameListType/nnk", data=np.array([n_top], np.int32))
        h = f.create_group("Scan 1/EBSD/Header")
        for k, v, t in (("nRows", Y, np.int32), ("nColumns", X, np.int32), ("Step Y", dy, np.float32),
                        ("Step X", dx, np.float32)):
            h.create_dataset(k, data=np.array([v], dtype=t))
        g = h.create_group("Phase/1")
        pg = {"m-3m": "Cubic m-3m [m3m]", "6/mmm": "Hexagonal 6/mmm [6/mmm]", "2/m": "Monoclinic b (C2h) [2/m]"}
        for k, v in (("Point Group", pg[ph.symmetry]), ("MaterialName", f"{ph.name}/{ph.name}"),
                     *((f"Lattice Constant {c}", str(v)) for c, v in zip(("a", "b", "c", "alpha", "beta", "gamma"),
                                                                        ph.lattice))):
            g.create_dataset(k, data=np.array([v], dtype=np.dtype("S")))
        d = f.create_group("Scan 1/EBSD/Data")
        yy, xx = np.meshgrid(np.arange(Y) * dy, np.arange(X) * dx, indexing="ij")
        d["X Position"] = xx.ravel().astype(np.float32)
        d["Y Position"] = np.tile(np.arange(X) * dx, Y).astype(np.float32)  # EMsoft writes it wrong
        for k, shape, t in (("AvDotProductMap", (Y, X), np.int32), ("ISM", n, np.float32), ("KAM", (Y, X), np.float32),
                            ("OSM", (Y, X), np.float32), ("Phase", n, np.uint8)):
            d[k] = np.zeros(shape, t)
        d["CI"] = rng.random(n).astype(np.float32)
        d["IQ"] = rng.random(n).astype(np.float32)
        d["FZcnt"] = np.array([fz], np.int32)
        d["TopMatchIndices"] = top
        d["TopDotProductList"] = rng.random((n + 2, n_top)).astype(np.float32)
        d["DictionaryEulerAngles"] = dic
        if refined:
            r = np.radians(eul.copy())
            r[:, 0] += np.radians(0.5)
            d["RefinedEulerAngles"] = r.astype(np.float32)
            d["RefinedDotProducts"] = np.zeros(n, np.float32)
    return path
