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
