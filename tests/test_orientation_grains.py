"""Grain segmentation by misorientation threshold: against a breadth-first search that uses orix's angles."""
from __future__ import annotations

import math
import time
from collections import deque

import numpy as np
import pytest
import torch

from ebsd.errors import EBSDValueError
from ebsd.orientation import axis_angle_to_quat, quat_multiply, segment_grains
from ebsd.orientation.grains import neighbour_offsets

pytest.importorskip("orix")
from orix.quaternion import Orientation  # noqa: E402
from orix.quaternion import symmetry as osym  # noqa: E402


def voronoi_map(shape, n_grains, seed, noise_deg=0.5, dtype=torch.float64):
    """Nearest-seed grains with random orientations plus small per-voxel noise."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 1, size=(n_grains, len(shape))) * np.array(shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, len(shape))
    lab = np.argmin(((grid[:, None, :] - pts[None]) ** 2).sum(-1), axis=1)
    q = rng.normal(size=(n_grains, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g = torch.Generator().manual_seed(seed)
    noise = axis_angle_to_quat(torch.randn(*shape, 3, generator=g, dtype=torch.float64),
                               torch.rand(*shape, generator=g, dtype=torch.float64) * math.radians(noise_deg))
    return quat_multiply(noise, torch.from_numpy(q[lab].reshape(*shape, 4))).to(dtype)


def bfs_oracle(q: np.ndarray, osymmetry, thr_deg, valid, offsets):
    """Flood fill in raster order; neighbours linked when orix's symmetry-reduced angle < thr."""
    shape = q.shape[:-1]
    all_offsets = offsets + [tuple(-o for o in off) for off in offsets]
    labels = np.full(shape, -1, dtype=np.int64)
    # precompute angles with orix for every (voxel, offset) pair inside the map
    n = 0
    for start in np.ndindex(*shape):
        if not valid[start] or labels[start] >= 0:
            continue
        labels[start] = n
        todo = deque([start])
        while todo:
            p = todo.popleft()
            nbrs = []
            for off in all_offsets:
                r = tuple(a + b for a, b in zip(p, off))
                if all(0 <= r[i] < shape[i] for i in range(len(shape))) and valid[r] and labels[r] < 0:
                    nbrs.append(r)
            if not nbrs:
                continue
            o1 = Orientation(np.repeat(q[p][None], len(nbrs), 0), osymmetry)
            o2 = Orientation(np.stack([q[r] for r in nbrs]), osymmetry)
            ang = np.rad2deg(o1.angle_with(o2))
            for r, a in zip(nbrs, ang):
                if a < thr_deg and labels[r] < 0:
                    labels[r] = n
                    todo.append(r)
        n += 1
    return labels, n


@pytest.mark.parametrize("shape, conn, laue, osy", [
    ((7, 9, 11), 6, "m-3m", osym.Oh),
    ((6, 7, 8), 26, "m-3m", osym.Oh),
    ((5, 8, 9), 18, "6/mmm", osym.D6h),
    ((23, 29), 4, "6/mmm", osym.D6h),
    ((21, 25), 8, "-3m", osym.D3d),
])
def test_segment_grains_equals_oracle(shape, conn, laue, osy):
    q = voronoi_map(shape, 12, seed=sum(shape), noise_deg=2.0)
    valid = np.random.default_rng(1).uniform(size=shape) > 0.1
    labels, n = segment_grains(q, laue, threshold_deg=3.0, valid=torch.from_numpy(valid), connectivity=conn)
    ref, n_ref = bfs_oracle(q.numpy(), osy, 3.0, valid, neighbour_offsets(len(shape), conn))
    assert n == n_ref
    assert labels.dtype == torch.int64
    assert np.array_equal(labels.numpy(), ref)


def test_segment_grains_recovers_voronoi_grains_numpy_io():
    q = voronoi_map((10, 12, 14), 6, seed=3, noise_deg=0.5, dtype=torch.float32).numpy()
    labels, n = segment_grains(q, 43, threshold_deg=5.0)
    assert isinstance(labels, np.ndarray) and labels.shape == (10, 12, 14) and labels.min() == 0
    assert labels.max() == n - 1
    assert labels.reshape(-1)[0] == 0  # raster order numbering
    # every grain is one orientation up to the noise: at most n_seeds grains (+ possible 6-connectivity slivers)
    assert 4 <= n <= 8
    # no valid mask and a single orientation everywhere: one grain
    one = np.broadcast_to(q[:1, :1, :1], q.shape).copy()
    assert segment_grains(one, "m-3m")[1] == 1


def test_segment_grains_invalid_voxels_and_errors():
    q = torch.zeros(4, 5, 4)
    q[..., 0] = 1
    valid = torch.ones(4, 5, dtype=torch.bool)
    valid[:, 2] = False  # a column of bad points splits the map in two
    labels, n = segment_grains(q, "m-3m", valid=valid)
    assert n == 2 and (labels[:, 2] == -1).all() and (labels[:, :2] == 0).all() and (labels[:, 3:] == 1).all()
    labels8, n8 = segment_grains(q, "m-3m", valid=torch.zeros(4, 5, dtype=torch.bool), connectivity=8)
    assert n8 == 0 and (labels8 == -1).all()
    with pytest.raises(EBSDValueError):
        segment_grains(q, "m-3m", connectivity=6)  # 2-D map
    with pytest.raises(EBSDValueError):
        segment_grains(q[None], "m-3m", connectivity=4)
    with pytest.raises(EBSDValueError):
        segment_grains(q, "m-3m", threshold_deg=0)
    with pytest.raises(EBSDValueError):
        segment_grains(q, "m-3m", valid=valid[:, :3])
    with pytest.raises(EBSDValueError):
        segment_grains(q[0], "m-3m")


@pytest.mark.slow
def test_segment_grains_128_cubed_in_seconds():
    rng = np.random.default_rng(0)
    # blocky 8^3 grains are cheap to build at this size
    ori = rng.normal(size=(16, 16, 16, 4))
    ori /= np.linalg.norm(ori, axis=-1, keepdims=True)
    q = torch.from_numpy(ori.repeat(8, 0).repeat(8, 1).repeat(8, 2)).float()
    segment_grains(q[:8, :8, :8], "m-3m")  # warm-up (numba compile/cache load)
    t = time.perf_counter()
    labels, n = segment_grains(q, "m-3m", threshold_deg=5.0)
    dt = time.perf_counter() - t
    # all blocks, less a few merges: P(random m-3m pair < 5 deg) ~ 8.5e-4, ~12 000 neighbouring pairs
    assert 16 ** 3 - 40 <= n <= 16 ** 3
    assert dt < 30, f"segment_grains took {dt:.1f} s on 128^3"
