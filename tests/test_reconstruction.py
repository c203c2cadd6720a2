"""The 3-D reconstruction pipeline (ebsd.reconstruction): alignment against known drifts, the clean-up
filters on hand-built cases, segmentation of volumes (multi-phase), grain statistics, reconstruct, the
.dream3d feature arrays, the CLI and batch."""
from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch

import ebsd
from ebsd import EBSDVolume, Phase
from ebsd.orientation import axis_angle_to_quat, misorientation_angle, segment_grains
from ebsd.reconstruction import (align_sections, apply_shifts, fill_bad_data, grain_statistics, mark_bad,
                                 neighbor_orientation_correlation, random_drift, reconstruct, remove_small_grains)
from ebsd.synthetic import random_quaternions, synthetic_volume


def _q(axis, deg):
    return axis_angle_to_quat(torch.tensor(axis, dtype=torch.float64), torch.tensor(math.radians(deg),
                                                                                   dtype=torch.float64)).float()


# ------------------------------------------------------------------------------------------------ alignment
def test_apply_shifts_moves_content_and_flags_uncovered():
    vol = synthetic_volume((3, 10, 12), mean_grain_size=4, seed=0)
    s = np.array([[0, 0], [2, -3], [-1, 1]])
    out = apply_shifts(vol, s)
    assert torch.equal(out.quaternions[1, 2:, :9], vol.quaternions[1, :8, 3:])
    assert not out.measured[1, :2].any() and not out.measured[1, :, 9:].any() and out.measured[1, 2:, :9].all()
    assert not (out.valid & ~out.measured).any()
    assert torch.equal(out.quaternions[0], vol.quaternions[0])
    back = apply_shifts(out, -s)  # content that survived both shifts comes back in place
    assert torch.equal(back.quaternions[2][back.measured[2]], vol.quaternions[2][back.measured[2]])


def test_random_drift_walk_bounded():
    d = random_drift(50, max_shift=8, jumps=2, seed=1)
    assert d.shape == (50, 2) and (d[0] == 0).all() and np.abs(d).max() <= 8
    assert np.abs(np.diff(d, axis=0)).max() >= 3  # the jumps


def test_align_drift_walk_speckle_damaged_section():
    """Issue 19's case: random drift walk (|shift| up to 8 px), 5 % low-CI speckle (still marked valid),
    one damaged section: >= 95 % of the shifts exact, the damaged section reported, later ones not dragged."""
    Z = 24
    d = random_drift(Z, max_shift=8, jumps=2, seed=3)
    assert np.abs(d).max() == 8
    vol, truth = synthetic_volume((Z, 64, 64), mean_grain_size=12, seed=1, noise_deg=1.0, unindexed_fraction=0.02,
                                  speckle_fraction=0.05, damaged_slices=[9], drift=d, return_truth=True)
    assert 0.04 < float(truth.speckle_mask.float().mean()) < 0.06
    assert bool(vol.valid[truth.speckle_mask].all())  # speckle is not flagged by the file
    res = align_sections(vol, max_shift=8, progress=False)
    expected = d[0] - d
    exact = (res.shifts == expected).all(1)
    assert exact.mean() >= 0.95, (res.shifts.T, expected.T)
    assert exact[10:].all()  # nothing after the damaged section is dragged
    assert res.outliers == [9] and 10 in res.bridged
    assert res.shifts.dtype == np.int64 and res.shifts.shape == (Z, 2) and (res.shifts[0] == 0).all()
    assert res.scores.shape == (Z,) and np.isnan(res.scores[0])
    # the aligned volume: uncovered voxels not measured; section k equals the raw one shifted by shifts[k]
    k = 5
    dy, dx = res.shifts[k]
    Y = X = 64
    src = vol.quaternions[k, max(-dy, 0):Y + min(-dy, 0), max(-dx, 0):X + min(-dx, 0)]
    dst = res.volume.quaternions[k, max(dy, 0):Y + min(dy, 0), max(dx, 0):X + min(dx, 0)]
    assert torch.equal(src, dst)
    assert int((~res.volume.measured[k]).sum()) == Y * X - src.shape[0] * src.shape[1]


@pytest.mark.parametrize("method", ["grain", "phase-correlation"])
def test_align_other_methods_exact_on_clean_drift(method):
    Z = 10
    d = random_drift(Z, max_shift=5, jumps=1, seed=7)
    vol = synthetic_volume((Z, 64, 64), mean_grain_size=10, seed=4, noise_deg=0.5, drift=d)
    res = align_sections(vol, method=method, max_shift=6, progress=False)
    assert (res.shifts == d[0] - d).all(), (res.shifts.T, (d[0] - d).T)


def test_align_reference_mean_and_multiphase():
    """Two phases (cubic grains and a hexagonal band): pairs across phases disagree; reference='mean'."""
    Z = 6
    d = random_drift(Z, max_shift=4, jumps=0, seed=2)
    vol = synthetic_volume((Z, 48, 48), mean_grain_size=9, seed=5, noise_deg=0.5, drift=d)
    hexv = synthetic_volume((Z, 48, 48), mean_grain_size=9, seed=6, symmetry="6/mmm", noise_deg=0.5, drift=d)
    band = torch.zeros((Z, 48, 48), dtype=torch.bool)
    yy = torch.arange(48)
    for z in range(Z):  # a band of phase 2 that moves with the drift like the structure
        band[z, ((yy - int(d[z, 0])) % 20 < 6)] = True
    q = torch.where(band[..., None], hexv.quaternions, vol.quaternions)
    ph = torch.where(band, 2, 1).int()
    two = EBSDVolume(q, phases=ph, phase_info={1: Phase("Ni", "m-3m"), 2: Phase("Ti", "6/mmm")})
    res = align_sections(two, reference="mean", max_shift=5, progress=False)
    assert (res.shifts == d[0] - d).all()


def test_align_errors():
    vol = synthetic_volume((3, 16, 16), mean_grain_size=4, seed=0)
    with pytest.raises(ebsd.EBSDValueError, match="method"):
        align_sections(vol, method="nope")
    with pytest.raises(ebsd.EBSDValueError, match="max_shift"):
        align_sections(vol, max_shift=20)
    with pytest.raises(ebsd.EBSDValueError, match="shape"):
        apply_shifts(vol, np.zeros((2, 2)))


def _pseudo_stack(m, d, H, W, M, noise_deg, misindexed, seed):
    """Sections cut from one real map at offsets displaced by the drift ``d`` (content moves by ``+d_z``),
    each with its own extra orientation noise and misindexed (random, low-CI, still valid) voxels."""
    from ebsd.orientation import quat_multiply
    from ebsd.synthetic import _rotvec_to_quat, _small_rotations

    rng = np.random.default_rng(seed)
    Z = len(d)
    fields = {k: [] for k in ("quaternions", "phases", "confidence", "image_quality", "valid")}
    for z in range(Z):
        y0, x0 = M - int(d[z, 0]), M - int(d[z, 1])
        for k in fields:
            fields[k].append(getattr(m, k)[0, y0:y0 + H, x0:x0 + W].clone())
        w = _small_rotations(H * W, noise_deg, rng, np.float32).reshape(H, W, 3)
        q = quat_multiply(torch.from_numpy(_rotvec_to_quat(w)), fields["quaternions"][-1])
        bad = torch.from_numpy(rng.random((H, W)) < misindexed)
        q[bad] = torch.from_numpy(random_quaternions(int(bad.sum()), rng)).float()
        fields["quaternions"][-1] = q / q.norm(dim=-1, keepdim=True)
        fields["confidence"][-1][bad] = 0.02
    return EBSDVolume(**{k: torch.stack(v) for k, v in fields.items()}, phase_info=m.phase_info)


def test_align_real_map_pseudo_stack(shared_data):
    """A pseudo-stack cut from one real EBSD map (its orientation gradients, grain shapes and misindexed
    points), each section with its own extra 1 deg noise and 5 % misindexed voxels, at known drifted
    offsets: >= 95 % of the shifts must come back exactly."""
    path = shared_data / "ang" / "DC06_2uniax.ang"
    if not path.exists():
        pytest.skip("DC06_2uniax.ang not present")
    m = ebsd.load_volume(path, progress=False)
    Z, M = 20, 6
    H, W = m.shape[1] - 2 * M, m.shape[2] - 2 * M
    d = random_drift(Z, max_shift=M, jumps=1, seed=11)
    stack = _pseudo_stack(m, d, H, W, M, noise_deg=1.0, misindexed=0.05, seed=0)
    res = align_sections(stack, max_shift=M, progress=False)
    exact = (res.shifts == d[0] - d).all(1)
    assert exact.mean() >= 0.95, (res.shifts.T, (d[0] - d).T)


# ------------------------------------------------------------------------------------- segmentation of volumes
def test_segment_volume_two_phases_keep_their_own_symmetry():
    """Cubic half: two parts 90 deg apart about z (equivalent in m-3m, not in 6/mmm); hexagonal half: two
    parts 60 deg apart about c (equivalent in 6/mmm, not in m-3m); same orientation across the phase
    boundary. Right answer: exactly two grains, one per phase."""
    Z, Y, X = 2, 6, 8
    q = torch.zeros((Z, Y, X, 4))
    base = _q([0.3, 0.2, 0.9], 17.0)
    from ebsd.orientation import quat_multiply

    q[:] = base
    q[:, :3, :4] = quat_multiply(_q([0, 0, 1], 90.0), base)  # cubic, rotated by a symmetry of m-3m only
    q[:, :3, 4:] = quat_multiply(_q([0, 0, 1], 60.0), base)  # hexagonal, rotated by a symmetry of 6/mmm only
    ph = torch.ones((Z, Y, X), dtype=torch.int32)
    ph[:, :, 4:] = 2
    vol = EBSDVolume(q, phases=ph, phase_info={1: Phase("Ni", "m-3m"), 2: Phase("Ti", "6/mmm")})
    lab, n = segment_grains(vol, threshold_deg=5)
    assert n == 2
    assert (lab[:, :, :4] == lab[0, 0, 0]).all() and (lab[:, :, 4:] == lab[0, 0, 4]).all()
    # the dominant-symmetry behaviour this replaces would split one of the halves
    lab_c, n_c = segment_grains(q, "m-3m", 5)
    assert n_c == 2 and not (lab_c[:, :, 4:] == lab_c[0, 0, 4]).all()
    # the array call with phases and a symmetry table gives the same
    lab2, n2 = segment_grains(q.numpy(), {1: "m-3m", 2: "6/mmm"}, 5, phases=ph.numpy())
    assert n2 == 2 and (lab2 == lab.numpy()).all()
    # positional threshold for a volume
    assert segment_grains(vol, 5)[1] == 2
    with pytest.raises(ebsd.EBSDValueError, match="symmetr"):
        segment_grains(vol, "m-3m")


def test_segment_volume_unindexed_voxels_give_no_grains():
    vol = synthetic_volume((8, 24, 24), mean_grain_size=8, seed=3, unindexed_fraction=0.1)
    lab, n = segment_grains(vol, threshold_deg=5)
    assert (lab[~vol.valid] == -1).all()
    sizes = torch.bincount(lab[lab >= 0])
    lab_raw, n_raw = segment_grains(vol.quaternions, "m-3m", 5)  # the tensor call sees every voxel
    assert n_raw > n + 0.5 * int((~vol.valid).sum())  # random orientations: mostly single-voxel grains
    assert int((sizes == 1).sum()) < 0.05 * int((~vol.valid).sum())
    lab_m, n_m = segment_grains(vol.quaternions, "m-3m", 5, valid=vol.valid)  # same as the masked array call
    assert n_m == n and torch.equal(lab_m, lab)


# ---------------------------------------------------------------------------------------------- clean-up
def _blank(shape=(3, 3, 3), q=None):
    qq = torch.zeros(shape + (4,))
    qq[..., 0] = 1
    if q is not None:
        qq[:] = q
    return EBSDVolume(qq, confidence=torch.full(shape, 0.9))


def test_mark_bad_thresholds():
    vol = _blank((1, 2, 3))
    vol.confidence = torch.tensor([[[0.05, 0.1, 0.5], [0.9, 0.09, 0.2]]])
    vol.image_quality = torch.tensor([[[100.0, 100, 100], [100, 100, 10]]])
    out = mark_bad(vol, ci_min=0.1, iq_min=50)
    assert out.valid.tolist() == [[[False, True, True], [True, False, False]]]
    assert out.metadata["mark_bad"]["newly_invalid"] == 3 and vol.valid.all()


def test_neighbor_orientation_correlation_hand_case():
    """Centre voxel of a 3x3x3 block: low CI, random orientation; its 6 neighbours: 4 of orientation A,
    2 of B (A, B 40 deg apart). At level 4, it takes the attributes of the first A neighbour."""
    A, B = _q([0, 0, 1], 10.0), _q([1, 0, 0], 40.0)
    vol = _blank(q=A)
    c = (1, 1, 1)
    vol.quaternions[c] = _q([0.2, 0.5, 0.7], 33.0)
    vol.confidence[c] = 0.02
    # neighbours in order -z, +z, -y, +y, -x, +x: make -z and +y orientation B
    vol.quaternions[0, 1, 1] = B
    vol.quaternions[1, 2, 1] = B
    vol.confidence[2, 1, 1] = 0.77  # +z neighbour: the first A one in the order (-z is B)
    vol.image_quality[2, 1, 1] = 123.0
    out = neighbor_orientation_correlation(vol, min_confidence=0.1, tolerance_deg=5, level=4)
    assert torch.allclose(out.quaternions[c], A) and float(out.confidence[c]) == pytest.approx(0.77)
    assert float(out.image_quality[c]) == 123.0
    assert out.metadata["neighbor_orientation_correlation"]["replaced"] == 1
    # at level 5 (5 agreeing neighbours required) nothing changes: A has only 3 others agreeing
    out5 = neighbor_orientation_correlation(vol, min_confidence=0.1, tolerance_deg=5, level=5)
    assert torch.equal(out5.quaternions, vol.quaternions)


def test_fill_bad_data_hand_case():
    """A 2-voxel hole in a 1 x 4 x 5 map between grain 0 (left) and grain 1 (right); a 6-voxel hole is
    larger than min_defect_size=3 and stays."""
    A, B = _q([0, 0, 1], 10.0), _q([1, 0, 0], 40.0)
    vol = _blank((1, 4, 5), q=A)
    vol.quaternions[0, :, 3:] = B
    lab = torch.zeros((1, 4, 5), dtype=torch.int64)
    lab[0, :, 3:] = 1
    # hole 1: voxels (0, 0, 2) and (0, 0, 3): left one has neighbours 0 (left), 0 (below: (1,2)); right one 1, 1
    lab[0, 0, 2] = lab[0, 0, 3] = -1
    vol.valid[0, 0, 2] = vol.valid[0, 0, 3] = False
    new, lab2 = fill_bad_data(vol, lab, min_defect_size=3)
    assert lab2[0, 0, 2] == 0 and lab2[0, 0, 3] == 1
    assert torch.allclose(new.quaternions[0, 0, 2], A) and torch.allclose(new.quaternions[0, 0, 3], B)
    assert new.valid[0, 0, 2] and new.valid[0, 0, 3]
    # a bigger hole stays
    lab3 = lab.clone()
    lab3[0, 1:3, :3] = -1
    _, lab4 = fill_bad_data(vol, lab3, min_defect_size=3)
    assert (lab4[0, 1:3, :3] == -1).all()
    # numpy in -> numpy out
    _, ln = fill_bad_data(vol, lab.numpy(), min_defect_size=3)
    assert isinstance(ln, np.ndarray)


def test_remove_small_grains_merge_into_most_shared_boundary():
    """1 x 5 x 6 map: grain A (left, 3 columns), grain B (right, 2 columns); a 2-voxel grain S in column 3
    rows 0-1 touches A on 2 faces... built so that S shares 3 faces with A and 1 face with B."""
    A, B, S = _q([0, 0, 1], 5.0), _q([1, 0, 0], 40.0), _q([0, 1, 0], 25.0)
    vol = _blank((1, 5, 6), q=A)
    lab = torch.zeros((1, 5, 6), dtype=torch.int64)
    lab[0, :, 4:] = 1
    vol.quaternions[0, :, 4:] = B
    # S: (0,3) and (1,3): faces with A: (0,2),(1,2),(2,3) = 3; with B: (0,4),(1,4) = 2 -> make (1,4) A
    lab[0, 0:2, 3] = 2
    vol.quaternions[0, 0:2, 3] = S
    lab[0, 1, 4] = 0
    vol.quaternions[0, 1, 4] = A
    new, lab2, n = remove_small_grains(vol, lab, min_voxels=3)
    # S touches A on (0,2), (1,2), (2,3), (1,4) = 4 faces and B on (0,4) = 1 face -> merges into A
    assert n == 2
    assert lab2[0, 0, 3] == lab2[0, 0, 0] and lab2[0, 1, 3] == lab2[0, 0, 0]
    ang = misorientation_angle(new.quaternions[0, 0, 3].double(), A.double(), "m-3m")
    assert float(ang) < 1e-5
    # coarsen mode (DREAM.3D Minimum Size): voxel (0,3) has neighbours A (0,2), B (0,4) and (1,3) (removed):
    # tie between A and B -> the smaller id (A); (1,3): A (1,2), A (1,4), A (2,3) -> A
    _, lab3, n3 = remove_small_grains(vol, lab, min_voxels=3, mode="coarsen")
    assert n3 == 2 and lab3[0, 0, 3] == lab3[0, 0, 0] and lab3[0, 1, 3] == lab3[0, 0, 0]


# ------------------------------------------------------------------------------------------------ statistics
def test_grain_statistics_two_boxes():
    """Grain 0: a 2 x 4 x 8 box, grain 1: a 2 x 4 x 4 box beside it, 30 deg apart about z (cubic)."""
    A, B = _q([0, 0, 1], 0.0), _q([0, 0, 1], 30.0)
    vol = _blank((2, 4, 12), q=A)
    vol.quaternions[:, :, 8:] = B
    vol.spacing = (0.5, 1.0, 1.0)
    lab = torch.zeros((2, 4, 12), dtype=torch.int64)
    lab[:, :, 8:] = 1
    st = grain_statistics(vol, lab)
    assert st.n_voxels.tolist() == [64, 32]
    assert st.volume.tolist() == pytest.approx([32.0, 16.0])
    assert st.esd.tolist() == pytest.approx([(6 * 32 / math.pi) ** (1 / 3), (6 * 16 / math.pi) ** (1 / 3)])
    assert st.centroid[0].tolist() == pytest.approx([0.25, 1.5, 3.5])
    # box of extents (1, 4, 8) um: semi-axes proportional to the extents -> aspect (4/8, 1/8)
    assert st.aspect_ratios[0].tolist() == pytest.approx([0.5, 0.125])
    assert st.n_neighbours.tolist() == [1, 1] and st.shared_faces.tolist() == [8]
    assert st.misorientation_deg.tolist() == pytest.approx([30.0], abs=1e-3)
    dens, edges = st.misorientation_distribution(bins=63, max_deg=63)
    assert dens[30] * (edges[1] - edges[0]) == pytest.approx(1.0)
    assert st.touches_border.all()


# -------------------------------------------------------------------------------------------- reconstruct
def test_reconstruct_grain_sizes_within_10_percent_and_dream3d_output(tmp_path):
    vol, truth = synthetic_volume((32, 48, 48), mean_grain_size=10, seed=2, noise_deg=1.0, unindexed_fraction=0.03,
                                  speckle_fraction=0.05, return_truth=True)
    res = reconstruct(vol, steps=["mark_bad", "noc", "segment", "fill_bad_data", ("remove_small_grains",
                                                                                  {"min_voxels": 8}), "statistics"],
                      progress=False)
    st = res.statistics
    keep = ~st.touches_border & (st.n_voxels >= 8)
    t_keep = ~truth.touches_border.numpy() & (truth.grain_volumes.numpy() >= 8)
    ours, ref = st.esd[keep].mean(), truth.grain_esd.numpy()[t_keep].mean()
    assert abs(ours / ref - 1) < 0.10, (ours, ref)
    assert abs(keep.sum() / t_keep.sum() - 1) < 0.15
    out = res.save(tmp_path / "r.dream3d")
    with h5py.File(out) as f:
        dc = f["DataContainers/ImageDataContainer"]
        fid = dc["CellData/FeatureIds"][...]
        assert fid.shape == (32, 48, 48, 1) and fid.max() == res.n_grains
        fd = dc["CellFeatureData"]
        assert int(fd.attrs["AttributeMatrixType"][0]) == 7
        assert int(fd.attrs["TupleDimensions"][0]) == res.n_grains + 1
        for name in ("AvgQuats", "EquivalentDiameters", "NumElements", "Phases", "Volumes", "Centroids",
                     "AspectRatios", "NumNeighbors", "Active", "SurfaceFeatures"):
            assert name in fd, name
            assert fd[name].shape[0] == res.n_grains + 1
        n_el = fd["NumElements"][1:, 0]
        assert (n_el == np.bincount(fid.ravel(), minlength=res.n_grains + 1)[1:]).all()
        aq = fd["AvgQuats"][1:]  # (x, y, z, w) as DREAM.3D's Quats
        assert np.allclose(np.linalg.norm(aq, axis=1), 1, atol=1e-5)
        assert fd["AvgQuats"].attrs["ObjectType"].decode().startswith("DataArray<float>")
        assert json.loads(f["EBSDTK/Reconstruction/log"][()])
    back = ebsd.load_volume(out)
    assert back.shape == vol.shape
    with pytest.raises(ebsd.EBSDFileExistsError):
        res.save(out)


def test_reconstruct_with_alignment_and_steps_errors():
    d = random_drift(6, max_shift=3, jumps=0, seed=1)
    vol = synthetic_volume((6, 40, 40), mean_grain_size=8, seed=1, drift=d)
    res = reconstruct(vol, steps=[("align", {"max_shift": 4}), "segment"], progress=False)
    assert (res.alignment.shifts == d[0] - d).all() and res.n_grains > 0 and res.statistics is None
    with pytest.raises(ebsd.EBSDValueError, match="unknown reconstruction step"):
        reconstruct(vol, steps=["polish"], progress=False)


def test_cli_reconstruct_and_batch(tmp_path):
    from ebsd import batch
    from ebsd.cli import main

    d = random_drift(5, max_shift=3, jumps=0, seed=2)
    vol = synthetic_volume((5, 32, 32), mean_grain_size=8, seed=3, noise_deg=0.5, speckle_fraction=0.03, drift=d)
    inp = tmp_path / "in"
    inp.mkdir()
    ebsd.save_volume(vol, inp / "a.dream3d")
    ebsd.save_volume(vol, inp / "b.dream3d")
    out = tmp_path / "r.dream3d"
    assert main(["reconstruct", str(inp / "a.dream3d"), "--out", str(out), "--max-shift", "4", "--min-grain", "5",
                 "--quiet"]) == 0
    with h5py.File(out) as f:
        assert (f["EBSDTK/Reconstruction/alignment_shifts"][...] == d[0] - d).all()
        assert "CellFeatureData/EquivalentDiameters" in f["DataContainers/ImageDataContainer"]
    assert main(["reconstruct", str(inp / "a.dream3d"), "--out", str(out), "--quiet"]) == 2  # exists
    recs = batch.run("reconstruct", inp, tmp_path / "out", workers=1, processes=False, progress=False,
                     steps=[["mark_bad", {}], ["align", {"max_shift": 4}], "segment", "statistics"])
    assert [r["status"] for r in recs] == ["ok", "ok"]
    assert recs[0]["metrics"]["max_abs_shift"] == int(np.abs(d[0] - d).max())
    assert (tmp_path / "out" / "a.reconstructed.dream3d").exists()


def test_cli_reconstruct_recover_auto(tmp_path):
    """--recover auto: a missing section is bridged by the alignment, then found and recovered."""
    from ebsd.cli import main

    d = random_drift(8, max_shift=2, jumps=0, seed=5)
    vol = synthetic_volume((8, 32, 32), mean_grain_size=8, seed=6, drift=d, missing_slices=[4])
    ebsd.save_volume(vol, tmp_path / "m.dream3d")
    out = tmp_path / "r.dream3d"
    assert main(["reconstruct", str(tmp_path / "m.dream3d"), "--out", str(out), "--max-shift", "3",
                 "--recover", "auto", "--quiet"]) == 0
    with h5py.File(out) as f:
        log = json.loads(f["EBSDTK/Reconstruction/log"][()])
        shifts = f["EBSDTK/Reconstruction/alignment_shifts"][...]
    steps = {e["step"]: e for e in log}
    assert steps["align"]["damaged_sections"] == [4]
    assert steps["recover"]["recovered_slices"] == [4]
    good = [z for z in range(8) if z != 4]
    assert (shifts[good] == (d[0] - d)[good]).all()
    back = ebsd.load_volume(out)
    assert float(back.valid[4].float().mean()) > 0.5


@pytest.mark.gpu
def test_align_and_reconstruct_on_cuda_match_cpu():
    d = random_drift(6, max_shift=4, jumps=1, seed=8)
    vol = synthetic_volume((6, 48, 48), mean_grain_size=9, seed=9, noise_deg=0.5, speckle_fraction=0.05, drift=d)
    res = align_sections(vol.to("cuda"), max_shift=5, progress=False)
    assert res.volume.device.type == "cuda" and (res.shifts == d[0] - d).all()
    rec = reconstruct(vol, device="cuda", progress=False)
    assert rec.volume.device.type == "cuda" and rec.n_grains > 0
    assert (rec.alignment.shifts == d[0] - d).all()
