"""Paired synthetic training data: EBSD orientation channels + PL stack on the same 2-D section.

EBSD representation for hexagonal 6/mmm (proper group 622), ``EBSD_CHANNELS = 9`` channels, all in
``[-1, 1]``, continuous functions of the orientation that are invariant under the crystal symmetry:

* the headless c-axis ``c`` (sample frame) through the symmetric tensor ``c c^T`` (5 channels):
  ``cx^2 - cy^2``, ``2 cx cy``, ``2 cx cz``, ``2 cy cz``, ``2 cz^2 - 1`` (``c -> -c`` leaves them unchanged);
* the in-plane 6-fold angle ``alpha`` of the crystal a-axis ``[2-1-10]`` about ``c`` (4 channels):
  ``cos 6alpha`` and ``sin 6alpha * (cx, cy, cz)``. ``alpha`` is measured in the frame
  ``u = normalise(x - (x.c) c)``, ``v = c x u`` built from the raw ``c``; the 2-fold axes of 622 flip
  ``c`` and hence ``v`` and ``alpha``, so ``sin 6alpha`` is odd and ``sin 6alpha * c`` is even: invariant and
  continuous. (Continuity fails only on the measure-zero set ``c || x``, where ``u`` is undefined.)

:func:`quat_to_channels` and :func:`channels_to_quat` convert; the round trip is exact up to symmetry.
PL channels are the polariser stack of :func:`diffusion.pl.pl_images` mapped from ``[0, 1]`` to ``[-1, 1]``.
The model image is ``concat(EBSD channels, PL channels)`` along the channel axis, ``(C, H, W)``.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .errors import DiffusionInputError
from .pl import DEFAULT_ANGLES, gaussian_blur, pl_from_caxis_tensor

EBSD_CHANNELS = 9


@dataclass
class PLConfig:
    """Parameters of the PL forward model used for training data (see :mod:`diffusion.pl`)."""

    angles: tuple = DEFAULT_ANGLES
    analyser: float = math.radians(80.0)   # de-crossed by 10 degrees: psi seen modulo pi
    delta_n: float = 0.025
    thickness: float = 11.0
    wavelength: float = 0.55
    intensity: float = 1.0
    blur_sigma: float = 0.7

    def to_dict(self) -> dict:
        d = asdict(self)
        d["angles"] = list(self.angles)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PLConfig":
        d = dict(d)
        d["angles"] = tuple(d.get("angles", DEFAULT_ANGLES))
        return cls(**d)


def _axes(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from ebsd.orientation import quat_conjugate, quat_rotate

    qi = quat_conjugate(q)
    c = quat_rotate(qi, q.new_tensor([0.0, 0.0, 1.0]))
    a = quat_rotate(qi, q.new_tensor([1.0, 0.0, 0.0]))
    return c, a


def _frame(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.zeros_like(c)
    x[..., 0] = 1.0
    u = x - (c[..., :1]) * c
    n = u.norm(dim=-1, keepdim=True)
    # c || x: fall back to y (measure-zero set)
    y = torch.zeros_like(c)
    y[..., 1] = 1.0
    uy = y - c[..., 1:2] * c
    u = torch.where(n > 1e-6, u / n.clamp_min(1e-12), uy / uy.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    v = torch.cross(c, u, dim=-1)
    return u, v


def quat_to_channels(quaternions) -> torch.Tensor:
    """``(..., H, W, 4)`` quaternions -> ``(..., 9, H, W)`` EBSD channels (see module docstring)."""
    q = torch.as_tensor(quaternions, dtype=torch.float32)
    if q.shape[-1] != 4 or q.ndim < 3:
        raise DiffusionInputError(f"quaternions must have shape (..., H, W, 4), got {tuple(q.shape)}")
    c, a = _axes(q)
    cx, cy, cz = c.unbind(-1)
    u, v = _frame(c)
    alpha = torch.atan2((a * v).sum(-1), (a * u).sum(-1))
    s6, c6 = torch.sin(6 * alpha), torch.cos(6 * alpha)
    ch = torch.stack((cx * cx - cy * cy, 2 * cx * cy, 2 * cx * cz, 2 * cy * cz, 2 * cz * cz - 1,
                      c6, s6 * cx, s6 * cy, s6 * cz), dim=-1)
    return ch.movedim(-1, -3).contiguous()


def channels_to_caxis(ch: torch.Tensor) -> torch.Tensor:
    """``(..., 9 or 5, H, W)`` channels -> ``(..., H, W, 3)`` unit c-axis (sign arbitrary) from the
    principal eigenvector of the reconstructed ``c c^T``."""
    t = ch.movedim(-3, -1).to(torch.float32)
    czz = ((t[..., 4] + 1) / 2).clamp(0, 1)
    s = 1 - czz
    cxx, cyy = (s + t[..., 0]) / 2, (s - t[..., 0]) / 2
    cxy, cxz, cyz = t[..., 1] / 2, t[..., 2] / 2, t[..., 3] / 2
    M = torch.stack((torch.stack((cxx, cxy, cxz), -1), torch.stack((cxy, cyy, cyz), -1),
                     torch.stack((cxz, cyz, czz), -1)), -2)
    _, vecs = torch.linalg.eigh(M.double())
    return vecs[..., :, -1].to(torch.float32)


def channels_to_quat(channels) -> torch.Tensor:
    """``(..., 9, H, W)`` EBSD channels (any scale drift is tolerated) -> ``(..., H, W, 4)`` unit
    quaternions (one symmetry-equivalent representative, scalar part ``>= 0``)."""
    from ebsd.orientation import matrix_to_quat, positive_hemisphere

    ch = torch.as_tensor(channels, dtype=torch.float32)
    if ch.ndim < 3 or ch.shape[-3] < EBSD_CHANNELS:
        raise DiffusionInputError(f"channels must have shape (..., 9, H, W), got {tuple(ch.shape)}")
    ch = ch[..., :EBSD_CHANNELS, :, :]
    c = channels_to_caxis(ch)
    t = ch.movedim(-3, -1)
    s6 = (t[..., 6:9] * c).sum(-1)
    alpha = torch.atan2(s6, t[..., 5]) / 6
    u, v = _frame(c)
    a = torch.cos(alpha)[..., None] * u + torch.sin(alpha)[..., None] * v
    b = torch.cross(c, a, dim=-1)
    # passive matrix: rows are the crystal axes expressed in the sample frame (crystal = R @ sample)
    R = torch.stack((a, b, c), dim=-2)
    return positive_hemisphere(matrix_to_quat(R))


def pl_channels(ebsd_channels: torch.Tensor, cfg: PLConfig, blur: bool = True) -> torch.Tensor:
    """Differentiable PL forward model on EBSD channels: ``(..., 9, H, W)`` -> ``(..., n_angles, H, W)`` in
    the model's ``[-1, 1]`` scale."""
    t = ebsd_channels
    s = (1 - (t[..., 4, :, :] + 1) / 2).clamp(0, 1)
    img = pl_from_caxis_tensor(t[..., 0, :, :], t[..., 1, :, :], s, cfg.angles, cfg.analyser, cfg.delta_n,
                               cfg.thickness, cfg.wavelength, cfg.intensity)
    img = img.movedim(0, -3)
    if blur:
        img = gaussian_blur(img, cfg.blur_sigma)
    return 2 * img - 1


def pl_to_model(pl) -> torch.Tensor:
    """PL intensities ``[0, 1]`` -> model scale ``[-1, 1]``."""
    return 2 * torch.as_tensor(pl, dtype=torch.float32) - 1


def pl_from_model(x: torch.Tensor) -> torch.Tensor:
    return (x + 1) / 2


def make_pair(quaternions, cfg: PLConfig) -> torch.Tensor:
    """Sections ``(..., H, W, 4)`` -> model images ``(..., 9 + n_angles, H, W)`` (noiseless PL with the
    optics blur of ``cfg``)."""
    e = quat_to_channels(quaternions)
    return torch.cat((e, pl_channels(e, cfg)), dim=-3)


@dataclass
class DataConfig:
    size: int = 64
    depth: int = 16                 # z-depth of each synthetic volume; sections every ``stride`` slices
    stride: int = 2
    grain_sizes: tuple = (6.0, 14.0)   # mean grain size range (pixels), drawn per volume
    pl: PLConfig = field(default_factory=PLConfig)


def _volume_sections(args) -> np.ndarray:
    seed, dcfg = args
    from ebsd.synthetic import synthetic_volume

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    g = float(rng.uniform(*dcfg.grain_sizes))
    res = synthetic_volume((dcfg.depth, dcfg.size, dcfg.size), mean_grain_size=g, symmetry="6/mmm", seed=int(seed))
    vol = res[0] if isinstance(res, tuple) else res
    q = torch.as_tensor(getattr(vol, "quaternions", vol), dtype=torch.float32)
    return q[:: dcfg.stride].numpy()


def quaternion_sections(n_volumes: int, dcfg: DataConfig | None = None, seed: int = 0, workers: int | None = None,
                        progress: bool = False) -> torch.Tensor:
    """``(N, size, size, 4)`` orientation sections of ``n_volumes`` hexagonal synthetic volumes
    (:func:`ebsd.synthetic.synthetic_volume`, seeds ``seed * 1000003 + i``), every ``stride``-th z-slice,
    generated with ``workers`` processes (default: all CPU cores)."""
    dcfg = dcfg or DataConfig()
    jobs = [(seed * 1_000_003 + i, dcfg) for i in range(n_volumes)]
    workers = min(workers or os.cpu_count() or 1, n_volumes)
    if workers <= 1:
        parts = [_volume_sections(j) for j in jobs]
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            it = ex.map(_volume_sections, jobs, chunksize=max(1, n_volumes // (4 * workers)))
            if progress:
                from tqdm import tqdm

                it = tqdm(it, total=n_volumes, desc="synthetic sections")
            parts = list(it)
    return torch.from_numpy(np.concatenate(parts))


def synthetic_sections(n_volumes: int, dcfg: DataConfig | None = None, seed: int = 0, workers: int | None = None,
                       progress: bool = False) -> torch.Tensor:
    """Paired training images ``(N, 9 + n_angles, size, size)`` from :func:`quaternion_sections`."""
    dcfg = dcfg or DataConfig()
    return make_pair(quaternion_sections(n_volumes, dcfg, seed, workers, progress), dcfg.pl)


def heldout_sections(n: int, size: int = 64, seed: int = 12345, grain_size: float = 10.0, depth: int = 16) -> torch.Tensor:
    """Held-out ``(n, size, size, 4)`` quaternion sections: the middle z-slice of ``n`` synthetic volumes
    (seeds disjoint from training's ``0 .. n_volumes - 1``)."""
    from ebsd.synthetic import synthetic_volume

    out = []
    for i in range(n):
        res = synthetic_volume((depth, size, size), mean_grain_size=grain_size, symmetry="6/mmm", seed=seed + 7919 * i)
        vol = res[0] if isinstance(res, tuple) else res
        out.append(torch.as_tensor(getattr(vol, "quaternions", vol), dtype=torch.float32)[depth // 2])
    return torch.stack(out)
