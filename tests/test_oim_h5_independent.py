"""EDAX OIM .h5 reader on files built here with plain h5py from the documented EDAX layout (EbsdLib's H5OIMReader /
DREAM3D "Read EDAX EBSD Data (.h5)"), never with our writer:

    root attrs " Manufacturer" = "EDAX", " Version"
    /<scan>/EBSD/Header/  nColumns, nRows, Step X, Step Y (um), Grid Type "SqrGrid",
                          Phase/<id>/{MaterialName, Formula, Symmetry (TSL code: 43 = m-3m, 62 = 6/mmm),
                                      Lattice Constant a|b|c|alpha|beta|gamma}
    /<scan>/EBSD/Data/    Phi1, Phi, Phi2 (Bunge, radians), X Position, Y Position, IQ, CI, Phase, Fit, SEM Signal
                          (1-D, nRows * nColumns points, x fastest)

The expected orientations come from orix (Rotation.from_euler, Bunge ZXZ), the rest from the arrays written.
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from ebsd.io import load_volume

orix_rot = pytest.importorskip("orix.quaternion")


def _str(g, name, s):
    g.create_dataset(name, data=np.array([s.encode()], dtype=h5py.string_dtype("ascii", len(s.encode()) or 1)))


def _write_scan(f, scan, eul, ci, iq, phase, ncols, nrows, dx, dy, phases):
    e = f.create_group(f"{scan}/EBSD")
    h = e.create_group("Header")
    h.create_dataset("nColumns", data=np.array([ncols], np.int32))
    h.create_dataset("nRows", data=np.array([nrows], np.int32))
    h.create_dataset("Step X", data=np.array([dx], np.float32))
    h.create_dataset("Step Y", data=np.array([dy], np.float32))
    _str(h, "Grid Type", "SqrGrid")
    for pid, (name, code, lat) in phases.items():
        pg = h.create_group(f"Phase/{pid}")
        _str(pg, "MaterialName", name)
        _str(pg, "Formula", name)
        pg.create_dataset("Symmetry", data=np.array([code], np.int32))
        for k, v in zip(("a", "b", "c", "alpha", "beta", "gamma"), lat):
            pg.create_dataset(f"Lattice Constant {k}", data=np.array([v], np.float32))
    d = e.create_group("Data")
    yy, xx = np.mgrid[0:nrows, 0:ncols]
    for j, k in enumerate(("Phi1", "Phi", "Phi2")):
        d.create_dataset(k, data=eul[:, j].astype(np.float32))
    d.create_dataset("X Position", data=(xx.ravel() * dx).astype(np.float32))
    d.create_dataset("Y Position", data=(yy.ravel() * dy).astype(np.float32))
    d.create_dataset("CI", data=ci.astype(np.float32))
    d.create_dataset("IQ", data=iq.astype(np.float32))
    d.create_dataset("Phase", data=phase.astype(np.int32))
    d.create_dataset("Fit", data=np.zeros(ncols * nrows, np.float32))
    d.create_dataset("SEM Signal", data=np.zeros(ncols * nrows, np.float32))


def _euler(n, seed):
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(0, 2 * np.pi, n), np.arccos(rng.uniform(-1, 1, n)), rng.uniform(0, 2 * np.pi, n)], 1)


def _same_rotation(q, eul):
    ref = orix_rot.Rotation.from_euler(eul).data                      # (n, 4), Bunge ZXZ
    q = np.asarray(q, np.float64).reshape(-1, 4)
    d = np.minimum(np.abs(q - ref).max(1), np.abs(q + ref).max(1))
    return d


def test_single_scan_two_phases_values_and_geometry(tmp_path):
    nrows, ncols, dx, dy = 3, 4, 0.5, 0.25
    n = nrows * ncols
    eul = _euler(n, 0)
    ci = np.linspace(0.1, 0.9, n)
    ci[5] = -1.0                                                     # unindexed
    iq = np.arange(n) * 10.0 + 3.0
    phase = np.ones(n, np.int32)
    phase[ncols * 2:] = 2
    p = tmp_path / "edax.h5"
    with h5py.File(p, "w") as f:
        f.attrs[" Manufacturer"] = np.bytes_("EDAX")
        f.attrs[" Version"] = np.bytes_("OIM Analysis 8.6.0101 x64 [05-16-21]")
        _write_scan(f, "Scan 1", eul, ci, iq, phase, ncols, nrows, dx, dy,
                    {1: ("Nickel", 43, (3.56, 3.56, 3.56, 90, 90, 90)), 2: ("Titanium (Alpha)", 62,
                                                                           (2.95, 2.95, 4.68, 90, 90, 120))})
    vol = load_volume(p, z_spacing=1.0)
    assert vol.shape == (1, nrows, ncols)
    assert vol.spacing[1:] == pytest.approx((dy, dx))
    assert _same_rotation(vol.quaternions[0][vol.valid[0]], eul[vol.valid[0].numpy().ravel()]).max() < 1e-6
    np.testing.assert_allclose(vol.image_quality[0].numpy().ravel(), iq, rtol=1e-6)
    valid = vol.valid[0].numpy().ravel()
    assert not valid[5] and valid.sum() == n - 1
    np.testing.assert_allclose(vol.confidence[0].numpy().ravel()[valid], ci[valid], rtol=1e-6)
    np.testing.assert_array_equal(vol.phases[0].numpy().ravel()[valid], phase[valid])
    assert {k: (v.name, v.symmetry) for k, v in vol.phase_info.items()} == {1: ("Nickel", "m-3m"),
                                                                           2: ("Titanium (Alpha)", "6/mmm")}
    assert vol.phase_info[2].lattice == pytest.approx((2.95, 2.95, 4.68, 90, 90, 120), rel=1e-6)


def test_two_scans_stack_along_z_in_natural_order(tmp_path):
    nrows, ncols = 2, 3
    n = nrows * ncols
    eul = {k: _euler(n, k) for k in (1, 2, 10)}
    p = tmp_path / "stack.h5"
    with h5py.File(p, "w") as f:
        f.attrs[" Manufacturer"] = np.bytes_("EDAX")
        f.attrs[" Version"] = np.bytes_("OIM Analysis 8.6")
        for k in (10, 2, 1):                                          # written out of order; "Scan 10" after "Scan 2"
            _write_scan(f, f"Scan {k}", eul[k], np.full(n, 0.5), np.full(n, float(k)), np.ones(n), ncols, nrows,
                        1.0, 1.0, {1: ("Nickel", 43, (3.56, 3.56, 3.56, 90, 90, 90))})
    vol = load_volume(p, z_spacing=2.0)
    assert vol.shape == (3, nrows, ncols) and vol.spacing[0] == pytest.approx(2.0)
    for z, k in enumerate((1, 2, 10)):
        assert float(vol.image_quality[z].mean()) == pytest.approx(k)
        assert _same_rotation(vol.quaternions[z], eul[k]).max() < 1e-6
    assert bool(vol.valid.all())
