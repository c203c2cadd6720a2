"""Tests of ebsd.synthetic: shapes, determinism, grain-size statistics, twins, noise and damage."""
from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
import torch
from scipy import ndimage

from ebsd import EBSDVolume
from ebsd.errors import EBSDValueError
from ebsd.synthetic import SIZE_SPREAD_RANGE, SyntheticTruth, random_quaternions, synthetic_volume


# ----------------------------------------------------------------------- independent numpy references
def _qmul(p, q):
    a1, b1, c1, d1 = np.moveaxis(p, -1, 0)
    a2, b2, c2, d2 = np.moveaxis(q, -1, 0)
    return np.stack((a1 * a2 - b1 * b2 - c1 * c2 - d1 * d2, a1 * b2 + b1 * a2 + c1 * d2 - d1 * c2,
                     a1 * c2 - b1 * d2 + c1 * a2 + d1 * b2, a1 * d2 + b1 * c2 - c1 * b2 + d1 * a2), -1)


def _cubic_group() -> np.ndarray:
    """The 24 rotations of 432 as quaternions (one of each +-q pair)."""
    ops = []
    for i in range(4):
        q = np.zeros(4)
        q[i] = 1
        ops.append(q)
    for s in itertools.product((1, -1), repeat=3):
        ops.append(np.array([1, *s]) / 2)
    for i, j in itertools.combinations(range(4), 2):
        for s in (1, -1):
            q = np.zeros(4)
            q[i], q[j] = 1, s
            ops.append(q / math.sqrt(2))
    ops = np.array(ops)
    assert len(ops) == 24
    return ops


def _disorientation(qa, qb):
    """Angle (deg) and axis of the m-3m misorientation qb qa^-1, minimised over the 24 operators."""
    conj = qa * np.array([1, -1, -1, -1])
    delta = _qmul(qb, conj)  # (N, 4)
    cand = _qmul(_cubic_group()[None, :, :], delta[:, None, :])  # (N, 24, 4)
    w = np.abs(cand[..., 0]).clip(0, 1)
    best = np.argmax(w, axis=1)
    q = cand[np.arange(len(delta)), best]
    ang = np.degrees(2 * np.arccos(np.abs(q[:, 0]).clip(0, 1)))
    axis = q[:, 1:] / np.linalg.norm(q[:, 1:], axis=1, keepdims=True)
    return ang, axis


def _ml_mean_esd(gid: np.ndarray) -> float:
    """Number-weighted mean ESD of the untruncated grains: Miles-Lantuejoul edge correction (interior
    grains weighted by 1 / prod(L - h + 1), h their bounding-box extents)."""
    shape = gid.shape
    cnt = np.bincount(gid.ravel())
    ds, ws = [], []
    for g, sl in enumerate(ndimage.find_objects(gid + 1)):
        if sl is None or any(s.start == 0 or s.stop == n for s, n in zip(sl, shape)):
            continue
        ws.append(1.0 / np.prod([n - (s.stop - s.start) + 1 for s, n in zip(sl, shape)]))
        ds.append((6 * cnt[g] / math.pi) ** (1 / 3))
    ds, ws = np.array(ds), np.array(ws)
    return float(np.sum(ws * ds) / ws.sum())


# --------------------------------------------------------------------------------------------- tests
def test_shapes_dtypes_and_truth():
    vol, truth = synthetic_volume((12, 20, 24), 6.0, "m-3m", seed=1, twins=True, return_truth=True)
    assert isinstance(vol, EBSDVolume) and isinstance(truth, SyntheticTruth)
    assert vol.shape == (12, 20, 24)
    assert vol.quaternions.dtype == torch.float32 and vol.quaternions.shape == (12, 20, 24, 4)
    assert torch.allclose(vol.quaternions.norm(dim=-1), torch.ones(12, 20, 24), atol=1e-5)
    assert (vol.quaternions[..., 0] >= 0).all()
    assert vol.confidence.dtype == torch.float32 and vol.image_quality.dtype == torch.float32
    assert vol.valid.dtype == torch.bool and vol.valid.all()
    assert vol.symmetry == "m-3m" and vol.phase_info[1].symmetry == "m-3m"
    G = truth.n_grains
    assert truth.grain_ids.dtype == torch.int64 and truth.grain_ids.shape == (12, 20, 24)
    assert int(truth.grain_ids.min()) == 0 and int(truth.grain_ids.max()) == G - 1
    assert truth.grain_quaternions.shape == (G, 4) and truth.grain_quaternions.dtype == torch.float32
    assert torch.equal(truth.clean_quaternions, truth.grain_quaternions[truth.grain_ids])
    # no noise: the observed field is the clean one
    assert torch.allclose(vol.quaternions, truth.clean_quaternions)
    assert truth.boundary_mask.shape == (12, 20, 24) and truth.boundary_mask.any()
    assert truth.grain_volumes.sum() == 12 * 20 * 24
    assert len(truth.parent_of_twin) > 0
    assert bool(truth.is_twin.any())
    # plain return without truth
    v2 = synthetic_volume((12, 20, 24), 6.0, "m-3m", seed=1, twins=True)
    assert isinstance(v2, EBSDVolume) and v2.equals(vol)


def test_determinism():
    kw = dict(twins=True, noise_deg=2.0, unindexed_fraction=0.05, missing_slices=(2,),
              misaligned_slice=(4, (1, -2)), texture=("fiber", (1, 1, 1), 10.0))
    a = synthetic_volume((10, 24, 24), 6.0, "m-3m", 7, **kw)
    b = synthetic_volume((10, 24, 24), 6.0, "m-3m", 7, **kw)
    c = synthetic_volume((10, 24, 24), 6.0, "m-3m", 8, **kw)
    assert torch.equal(a.quaternions, b.quaternions)
    assert torch.equal(a.confidence, b.confidence) and torch.equal(a.image_quality, b.image_quality)
    assert torch.equal(a.valid, b.valid) and torch.equal(a.phases, b.phases)
    assert not torch.equal(a.quaternions, c.quaternions)
    # the acquisition options do not change the grains or their orientations
    _, t1 = synthetic_volume((10, 24, 24), 6.0, "m-3m", 7, twins=True, return_truth=True)
    _, t2 = synthetic_volume((10, 24, 24), 6.0, "m-3m", 7, twins=True, noise_deg=3.0,
                             unindexed_fraction=0.1, return_truth=True)
    assert torch.equal(t1.grain_ids, t2.grain_ids)
    assert torch.equal(t1.clean_quaternions, t2.clean_quaternions)
    # a torch.Generator is accepted and reproducible
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(synthetic_volume((4, 8, 8), 4.0, seed=g1).quaternions,
                       synthetic_volume((4, 8, 8), 4.0, seed=g2).quaternions)


@pytest.mark.parametrize("size,spread", [(10.0, 0.3), (7.0, 0.15), (9.0, 0.45)])
def test_grain_size_statistics(size, spread):
    L = int(round(size * 9))
    t0 = time.perf_counter()
    _, truth = synthetic_volume((L, L, L), size, seed=11, size_spread=spread, return_truth=True)
    gid = truth.grain_ids.numpy()
    mean = _ml_mean_esd(gid)
    # spread of log(ESD) of interior grains (unweighted: a loose check)
    interior = ~truth.touches_border.numpy()
    logd = np.log(truth.grain_esd.numpy()[interior])
    print(f"\n{L}^3 d={size} spread={spread}: measured mean ESD {mean:.2f}, log-std {logd.std():.3f}, "
          f"{truth.n_grains} grains, {time.perf_counter() - t0:.2f} s")
    assert abs(mean / size - 1) < 0.2
    assert abs(logd.std() - spread) < 0.12


def test_elongation_keeps_size_and_stretches():
    _, truth = synthetic_volume((40, 40, 120), 8.0, seed=2, elongation=(1, 1, 3), return_truth=True)
    gid = truth.grain_ids.numpy()
    ext = []
    for sl in ndimage.find_objects(gid + 1):
        if sl is not None:
            ext.append([s.stop - s.start for s in sl])
    ext = np.array(ext, dtype=float)
    ratio = np.median(ext[:, 2] / ext[:, 1])
    assert ratio > 2.0, ratio
    assert abs(_ml_mean_esd(gid) / 8.0 - 1) < 0.25


def test_twins_are_sigma3():
    from orix.quaternion import Orientation
    from orix.quaternion.symmetry import Oh

    vol, truth = synthetic_volume((24, 48, 48), 12.0, "m-3m", seed=5, twins=True, return_truth=True)
    pot = {t: p for t, p in truth.parent_of_twin.items() if p >= 0}
    assert len(pot) >= 5
    tw = np.array(list(pot.keys()))
    par = np.array(list(pot.values()))
    q = truth.grain_quaternions.double().numpy()
    ang, axis = _disorientation(q[par], q[tw])
    np.testing.assert_allclose(ang, 60.0, atol=1e-3)
    np.testing.assert_allclose(np.abs(axis), 1 / math.sqrt(3), atol=1e-4)  # <111>
    # orix agrees on the angle
    o_p = Orientation(q[par], symmetry=Oh)
    o_t = Orientation(q[tw], symmetry=Oh)
    np.testing.assert_allclose(o_p.angle_with(o_t, degrees=True), 60.0, atol=1e-3)
    # twin boundaries are marked, and they are grain boundaries
    assert truth.twin_boundary_mask.any()
    assert (truth.twin_boundary_mask <= truth.boundary_mask).all()
    assert truth.is_twin.sum() == len(truth.parent_of_twin)
    # every twin lamella (in the volume with its parent) touches its parent: face-adjacent voxel pairs
    gid = truth.grain_ids.numpy()
    pairs = set()
    for ax in range(3):
        a = np.moveaxis(gid, ax, 0)
        u, v = a[:-1].ravel(), a[1:].ravel()
        d = u != v
        pairs |= set(zip(np.minimum(u[d], v[d]).tolist(), np.maximum(u[d], v[d]).tolist()))
    for t, p in pot.items():
        assert (min(t, p), max(t, p)) in pairs, (t, p)
    # neighbouring grains that are not parent and twin are essentially never at 60<111> (random orientations:
    # the chance of a disorientation within 2 deg of 60<111> is ~1e-5 per pair)
    twin_pairs = {(min(t, p), max(t, p)) for t, p in pot.items()}
    twin_pairs |= {(min(a, b), max(a, b)) for a in pot for b in pot if pot[a] == pot[b] and a != b}  # sibling twins
    other = np.array(sorted(pairs - twin_pairs))
    assert len(other) > 50
    ang, axis = _disorientation(q[other[:, 0]], q[other[:, 1]])
    sigma3 = (np.abs(ang - 60.0) < 2.0) & (np.abs(np.abs(axis) - 1 / math.sqrt(3)).max(1) < 0.05)
    assert sigma3.sum() == 0, other[sigma3]


def test_twins_need_cubic():
    with pytest.raises(EBSDValueError, match="m-3m"):
        synthetic_volume((4, 8, 8), 4.0, "6/mmm", twins=True)


@pytest.mark.parametrize("noise", [0.5, 2.0, 5.0])
def test_noise_level(noise):
    vol, truth = synthetic_volume((16, 48, 48), 8.0, seed=3, noise_deg=noise, return_truth=True)
    q, qc = vol.quaternions.double(), truth.clean_quaternions.double()
    dot = (q * qc).sum(-1).abs().clamp(max=1)
    ang = torch.rad2deg(2 * torch.arccos(dot))
    assert abs(float(ang.mean()) / noise - 1) < 0.05
    np.testing.assert_allclose(ang.numpy(), truth.noise_angles.double().numpy(), atol=0.05)
    # CI is lower for a noisier acquisition
    quiet = synthetic_volume((16, 48, 48), 8.0, seed=3, noise_deg=0.0)
    assert float(vol.confidence.mean()) < float(quiet.confidence.mean())


def test_missing_slices_invalid():
    vol, truth = synthetic_volume((10, 16, 16), 5.0, seed=0, missing_slices=(3, 7), noise_deg=1.0,
                                  return_truth=True)
    for z in (3, 7):
        assert not vol.valid[z].any()
        assert (vol.confidence[z] == 0).all() and (vol.image_quality[z] == 0).all()
        assert torch.equal(vol.quaternions[z], torch.tensor([1.0, 0, 0, 0]).expand(16, 16, 4))
        assert (vol.phases[z] == 0).all()
        assert (truth.observed_grain_ids[z] == -1).all()
    others = [z for z in range(10) if z not in (3, 7)]
    assert vol.valid[others].all()
    assert (vol.confidence[others] > 0).float().mean() > 0.99
    # the truth still has the real content of the missing slices
    assert torch.equal(truth.clean_quaternions[3], truth.grain_quaternions[truth.grain_ids[3]])
    with pytest.raises(EBSDValueError):
        synthetic_volume((4, 8, 8), 4.0, missing_slices=(4,))


def test_unindexed_fraction_and_quality_fields():
    vol, truth = synthetic_volume((16, 40, 40), 8.0, seed=4, unindexed_fraction=0.1, noise_deg=1.0,
                                  return_truth=True)
    frac = 1 - vol.fraction_indexed
    assert abs(frac - 0.1) < 0.002
    un = truth.unindexed_mask
    assert torch.equal(un, ~vol.valid)
    assert (vol.confidence[un] <= 0.05).all() and (vol.confidence[~un].mean() > 0.6)
    assert (vol.phases[un] == 0).all()
    # more unindexed points at boundaries than elsewhere (per voxel)
    b = truth.boundary_mask
    assert un[b].float().mean() > un[~b].float().mean()
    # IQ lower near grain boundaries
    clean = synthetic_volume((16, 40, 40), 8.0, seed=4)
    _, t0 = synthetic_volume((16, 40, 40), 8.0, seed=4, return_truth=True)
    iq, bb = clean.image_quality, t0.boundary_mask
    assert float(iq[bb].mean()) < 0.85 * float(iq[~bb].mean())
    assert float(clean.confidence[bb].mean()) < float(clean.confidence[~bb].mean())
    assert (clean.confidence >= 0).all() and (clean.confidence <= 1).all() and (iq >= 0).all()


def test_misaligned_slice():
    z, (dy, dx) = 5, (2, -3)
    vol, truth = synthetic_volume((10, 32, 32), 6.0, seed=9, misaligned_slice=(z, (dy, dx)), return_truth=True)
    obs = truth.observed_grain_ids[z]
    ref = truth.grain_ids[z]
    q_obs = vol.quaternions[z]
    q_ref = truth.clean_quaternions[z]
    # content moved by (+dy, +dx): obs[y, x] == ref[y - dy, x - dx] where both are inside
    assert torch.allclose(q_obs[dy:, : 32 + dx], q_ref[: 32 - dy, -dx:])
    assert not torch.allclose(q_obs, q_ref)
    # the other slices are untouched
    others = [k for k in range(10) if k != z]
    assert torch.equal(vol.quaternions[others], truth.clean_quaternions[others])
    assert torch.equal(truth.observed_grain_ids[others], truth.grain_ids[others])
    assert obs.min() >= 0 and obs.max() < truth.n_grains


def test_damaged_slices():
    vol, truth = synthetic_volume((10, 32, 32), 6.0, seed=9, damaged_slices=(4,), noise_deg=0.5,
                                  return_truth=True)
    ci_z = vol.confidence.mean(dim=(1, 2))
    iq_z = vol.image_quality.mean(dim=(1, 2))
    assert ci_z[4] < 0.5 * ci_z[[0, 1, 2, 3, 5]].min()
    assert iq_z[4] < 0.5 * iq_z[[0, 1, 2, 3, 5]].min()
    assert 0.1 < 1 - float(vol.valid[4].float().mean()) < 0.4


def test_hexagonal_and_other_symmetries():
    vol = synthetic_volume((1, 32, 32), 6.0, "6/mmm", seed=0)
    assert vol.symmetry == "6/mmm" and vol.phase_info[1].lattice[5] == 120.0
    assert synthetic_volume((2, 8, 8), 3.0, "622", seed=0).symmetry == "6/mmm"
    for sym in ("m-3", "4/mmm", "-3m", "mmm", "2/m", "-1"):
        assert synthetic_volume((2, 8, 8), 3.0, sym, seed=0).symmetry == sym
    with pytest.raises(EBSDValueError, match="symmetry"):
        synthetic_volume((2, 8, 8), 3.0, "cubic")


def test_2d_sections():
    vol, truth = synthetic_volume((48, 48), 8.0, "6/mmm", seed=2, noise_deg=1.0, return_truth=True)
    assert vol.shape == (1, 48, 48)
    assert truth.n_grains > 10
    vol2 = synthetic_volume((1, 48, 48), 8.0, "6/mmm", seed=2, noise_deg=1.0)
    assert vol2.equals(vol)
    # a section through the 3-D structure: mean equivalent-circle diameter about 0.75 x the 3-D ESD
    _, t = synthetic_volume((240, 240), 8.0, seed=4, return_truth=True)
    inner = ~t.touches_border.numpy()
    assert inner.sum() > 300
    ecd = np.sqrt(4 * t.grain_volumes.numpy()[inner] / math.pi).mean()
    assert 0.6 < ecd / 8.0 < 0.9, ecd


def test_textures():
    # cube: orientations close to the identity (up to cubic symmetry)
    _, t = synthetic_volume((8, 32, 32), 6.0, seed=1, texture=("cube", 5.0), return_truth=True)
    q = t.grain_quaternions.double().numpy()
    ang, _ = _disorientation(np.tile([1.0, 0, 0, 0], (len(q), 1)), q)
    assert 3.0 < ang.mean() < 7.0
    # fiber <111> // sample z: the crystal <111> direction of each grain is within a few degrees of z
    _, t = synthetic_volume((8, 32, 32), 6.0, seed=1, texture=("fiber", (1, 1, 1), 3.0), return_truth=True)
    q = t.grain_quaternions.double().numpy()
    z = np.zeros((len(q), 4))
    z[:, 3] = 1
    conj = q * np.array([1, -1, -1, -1])
    zc = _qmul(_qmul(q, z), conj)[:, 1:]  # sample z in crystal coordinates (passive q: v_c = q v_s q*)
    c = (zc @ (np.array([1, 1, 1]) / math.sqrt(3)))
    assert np.degrees(np.arccos(np.clip(c, -1, 1))).mean() < 6.0
    # uniform on S^3: E|q_i| = Gamma(2) / (sqrt(pi) Gamma(5/2)) = 4 / (3 pi) for each component
    qr = random_quaternions(20000, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(qr, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.abs(qr).mean(axis=0), 4 / (3 * math.pi), atol=0.01)
    with pytest.raises(EBSDValueError, match="texture"):
        synthetic_volume((2, 8, 8), 3.0, texture=("brass",))


def test_bad_arguments():
    for kw in (dict(shape=(0, 4, 4)), dict(mean_grain_size=-1), dict(noise_deg=-1),
               dict(unindexed_fraction=1.5), dict(elongation=(1, 0, 1)), dict(misaligned_slice=(99, (0, 1))),
               dict(seed=None), dict(seed=1.5)):
        args = dict(shape=(4, 8, 8), mean_grain_size=3.0) | kw
        with pytest.raises(EBSDValueError):
            synthetic_volume(**args)
    assert SIZE_SPREAD_RANGE[0] < SIZE_SPREAD_RANGE[1]


def test_device_and_speed_report():
    t0 = time.perf_counter()
    vol = synthetic_volume((64, 64, 64), 12.0, seed=0, twins=True, noise_deg=1.0, unindexed_fraction=0.02)
    print(f"\nsynthetic 64^3 with twins and noise: {time.perf_counter() - t0:.2f} s on CPU")
    assert vol.device.type == "cpu"
    if torch.cuda.is_available():
        assert synthetic_volume((4, 8, 8), 3.0, device="cuda").device.type == "cuda"
