"""Synthetic 3-D EBSD microstructures with a known ground truth.

:func:`synthetic_volume` builds a grain structure, gives the grains orientations and then simulates an
acquisition. It is the training data of the slice-recovery transformer (:mod:`ebsd.recovery`) and of the
PL/EBSD diffusion model (:mod:`diffusion`), and the test data of most of :mod:`ebsd`.

Model
-----
Grains
    A power (Laguerre, weighted Voronoi) tessellation. Each seed gets a target equivalent-sphere diameter
    ``d_i ~ LogNormal`` with mean ``mean_grain_size`` and the weight ``w_i = (d_i / 2)^2``; a voxel belongs to the seed that minimises ``|x - s_i|^2 - w_i``.
    The power diagram is computed exactly as a nearest-neighbour query in 4-D (seed ``i`` lifted to
    ``(s_i, sqrt(W - w_i))``, voxels to ``(x, 0)``) with :class:`scipy.spatial.cKDTree`. Seeds fill the
    volume plus a margin of about one grain, so grains at the faces are cut, not swollen. ``elongation``
    stretches the whole tessellation along ``(z, y, x)`` (grain volume kept, so ``mean_grain_size``
    stays the mean equivalent-sphere diameter). The seed density is calibrated (:data:`_DENSITY_CAL`) so
    that the number-weighted mean equivalent-sphere diameter of the (untruncated) grains is
    ``mean_grain_size``, and the lognormal sigma of the weights is calibrated (:data:`_CAL_REALISED`) so
    that the standard deviation of log(ESD) of the grains is ``size_spread``. A random power diagram
    spans 0.15 (Poisson-Voronoi, equal weights) to about 0.57 (:data:`SIZE_SPREAD_RANGE`); requests
    outside are clipped to that range.
Twins (``twins=True``, m-3m only)
    Annealing twins (Sigma-3, 60 deg about a <111> of the parent) as lamellae: a twinned grain gets one
    or two parallel slabs on one of its four {111} planes (coherent twin boundaries), thickness 10-30 %
    of its diameter. Each lamella is a grain of its own (``SyntheticTruth.parent_of_twin``); the twin
    orientation is ``q_twin = r (x) q_parent`` with ``r`` the 60 deg rotation about that <111> in the
    crystal frame, so the twin shares the {111} plane with its parent.
Orientations
    Uniform on SO(3) (Shoemake's sampler), or a texture: ``("cube", spread_deg)``,
    ``("goss", spread_deg)``, ``("euler", (phi1, Phi, phi2) in degrees, spread_deg)``, or
    ``("fiber", crystal_dir, spread_deg[, sample_dir])`` (crystal direction, Cartesian crystal frame as
    orix: hexagonal c along z, parallel to a sample direction, default the sample z / sectioning axis).
    ``spread_deg`` is the mean rotation angle away from the ideal component.
Acquisition
    ``noise_deg``: every voxel is rotated by a random small rotation whose rotation vector is isotropic
    Gaussian, scaled so that the *mean* misorientation to the clean field is ``noise_deg``.
    Image quality (IQ, TSL-like units, about 2000-3000 inside grains) drops by up to 50 % near in-plane
    grain boundaries, varies per grain (+-12 %) and per slice (+-3 %), and falls with the noise level.
    Confidence index (CI) is about 0.9 inside grains, lower at boundaries and at voxels with a large noise
    rotation. CI is rounded to 3 decimals and IQ to 1, as in EDAX/TSL ``.ang`` files. ``unindexed_fraction`` of the voxels (drawn with 4x the weight at grain boundaries, as in
    real scans) get CI <= 0.05, low IQ, a random (mis-indexed) orientation, phase 0 and ``valid = False``.
    ``misaligned_slice = (z, (dy, dx))`` re-samples slice ``z`` from the structure shifted by whole
    pixels (content moves by ``+dy, +dx``; no wrap-around: the structure outside the box is real).
    ``missing_slices``: voxels get CI 0, IQ 0, the identity quaternion, phase 0, ``valid = False``.
    ``damaged_slices`` (an extension): slices with strong extra noise (8 deg), 25 % unindexed voxels,
    low CI and IQ; the other 75 % stay marked valid (what :func:`ebsd.recovery.find_bad_slices` must find).

Randomness comes only from ``seed`` (independent streams for structure, orientations, twins, noise and
damage, derived with :class:`numpy.random.SeedSequence`): the same seed gives an identical volume, and the
same seed with different acquisition options gives the same grains and orientations.

Quaternion helpers here are numpy (float64) and private; the torch orientation math lives in
:mod:`ebsd.orientation`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .errors import EBSDValueError
from .volume import EBSDVolume, Phase

__all__ = ["synthetic_volume", "SyntheticTruth", "random_quaternions", "LAUE_CLASSES", "SIZE_SPREAD_RANGE"]

# ---------------------------------------------------------------------------------------------- phases
#: Laue class -> (default phase name, lattice (a, b, c, alpha, beta, gamma))
LAUE_CLASSES: dict[str, tuple[str, tuple[float, float, float, float, float, float]]] = {
    "m-3m": ("Nickel", (3.524, 3.524, 3.524, 90.0, 90.0, 90.0)),
    "m-3": ("Cubic (m-3)", (4.0, 4.0, 4.0, 90.0, 90.0, 90.0)),
    "6/mmm": ("Titanium (Alpha)", (2.951, 2.951, 4.686, 90.0, 90.0, 120.0)),
    "6/m": ("Hexagonal (6/m)", (3.0, 3.0, 5.0, 90.0, 90.0, 120.0)),
    "-3m": ("Trigonal (-3m)", (4.76, 4.76, 12.99, 90.0, 90.0, 120.0)),
    "-3": ("Trigonal (-3)", (5.0, 5.0, 14.0, 90.0, 90.0, 120.0)),
    "4/mmm": ("Tetragonal (4/mmm)", (3.0, 3.0, 4.0, 90.0, 90.0, 90.0)),
    "4/m": ("Tetragonal (4/m)", (3.0, 3.0, 4.0, 90.0, 90.0, 90.0)),
    "mmm": ("Orthorhombic (mmm)", (3.0, 4.0, 5.0, 90.0, 90.0, 90.0)),
    "2/m": ("Monoclinic (2/m)", (3.0, 4.0, 5.0, 90.0, 100.0, 90.0)),
    "-1": ("Triclinic (-1)", (3.0, 4.0, 5.0, 80.0, 85.0, 95.0)),
}
#: proper point group (as orix names them) -> its Laue class
_PROPER_TO_LAUE = {
    "432": "m-3m", "23": "m-3", "622": "6/mmm", "6": "6/m", "32": "-3m", "3": "-3",
    "422": "4/mmm", "4": "4/m", "222": "mmm", "2": "2/m", "1": "-1",
}

IQ_MAX = 3000.0  # TSL-like image quality inside a grain of a good scan

# Calibration of the power diagram (measured with the Miles-Lantuejoul edge-corrected estimator on two
# 160^3 volumes per point, mean_grain_size 10; scripts in tests/test_synthetic.py):
#   internal lognormal sigma of the weights -> realised log-std of the grain ESDs, and the ratio
#   (measured mean ESD) / mean_grain_size at the uncorrected density 6 / (pi E[d^3]).
# A random power diagram cannot go below Poisson-Voronoi's own spread (0.15) and saturates near 0.57
# (large weights swallow their neighbours).
_CAL_INTERNAL = np.array([0.0, 0.1, 0.15, 0.2, 0.3, 0.4, 0.45, 0.6])
_CAL_REALISED = np.array([0.149, 0.226, 0.278, 0.340, 0.414, 0.470, 0.486, 0.567])
_CAL_MEAN_RATIO = np.array([0.9776, 0.9737, 0.975, 0.9773, 1.0014, 1.0427, 1.082, 1.216])
_BETA = 1.0  # power-diagram weight strength (w = (beta d / 2)^2)
SIZE_SPREAD_RANGE = (float(_CAL_REALISED[0]), float(_CAL_REALISED[-1]))


def _internal_sigma(spread: float) -> float:
    """Requested log-std of the grain ESDs -> lognormal sigma of the power-diagram weights."""
    return float(np.interp(spread, _CAL_REALISED, _CAL_INTERNAL))


def _density_factor(sigma_internal: float) -> float:
    """Multiplier of the seed density so that the measured mean ESD is mean_grain_size."""
    return float(np.interp(sigma_internal, _CAL_INTERNAL, _CAL_MEAN_RATIO)) ** 3


# ------------------------------------------------------------------------------------------- truth
@dataclass
class SyntheticTruth:
    """The ground truth behind a synthetic volume (all tensors on the volume's device).

    Attributes:
        grain_ids: ``(Z, Y, X)`` int64 grain of each voxel of the *undamaged, aligned* volume, ``0..G-1``
            (twin lamellae are grains of their own).
        grain_quaternions: ``(G, 4)`` float32 orientation of each grain (unit, scalar first, ``a >= 0``).
        clean_quaternions: ``(Z, Y, X, 4)`` float32 ``grain_quaternions[grain_ids]``: the field before
            noise, misalignment and damage.
        parent_of_twin: ``{twin grain id: parent grain id}``; ``-1`` when the lamella is in the volume but
            its parent's matrix is not (cut by a face).
        parent_ids: ``(G,)`` int64, the parent grain of each grain (itself when not a twin, ``-1`` as above).
        is_twin: ``(G,)`` bool.
        boundary_mask: ``(Z, Y, X)`` bool, True where a 6-neighbour belongs to another grain.
        twin_boundary_mask: ``(Z, Y, X)`` bool, the part of ``boundary_mask`` between a twin and its parent
            (or two lamellae of one parent).
        grain_volumes: ``(G,)`` int64 voxel count of each grain in the volume.
        grain_esd: ``(G,)`` float32 equivalent-sphere diameter (voxels) from ``grain_volumes``.
        touches_border: ``(G,)`` bool, grain cut by a face of the volume (for a 2-D section, ``Z = 1``,
            by an edge of the section).
        unindexed_mask: ``(Z, Y, X)`` bool voxels made unindexed (CI low, invalid).
        missing_slices: z indices blanked.
        damaged_slices: z indices degraded (still marked valid).
        misaligned_slice: ``(z, (dy, dx))`` or ``None``.
        observed_grain_ids: ``(Z, Y, X)`` int64 grain ids as acquired (differs from ``grain_ids`` only in a
            misaligned slice), ``-1`` in missing slices.
        noise_angles: ``(Z, Y, X)`` float32 rotation (degrees) applied by the orientation noise.
        params: the arguments of the call.
    """

    grain_ids: torch.Tensor
    grain_quaternions: torch.Tensor
    clean_quaternions: torch.Tensor
    parent_of_twin: dict[int, int]
    parent_ids: torch.Tensor
    is_twin: torch.Tensor
    boundary_mask: torch.Tensor
    twin_boundary_mask: torch.Tensor
    grain_volumes: torch.Tensor
    grain_esd: torch.Tensor
    touches_border: torch.Tensor
    unindexed_mask: torch.Tensor
    missing_slices: tuple[int, ...]
    damaged_slices: tuple[int, ...]
    misaligned_slice: tuple[int, tuple[int, int]] | None
    observed_grain_ids: torch.Tensor
    noise_angles: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)
    drift: Any = None
    speckle_mask: Any = None

    @property
    def n_grains(self) -> int:
        return int(self.grain_quaternions.shape[0])


# -------------------------------------------------------------------------------- quaternion helpers
def _qmul(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hamilton product ``p (x) q`` of ``(..., 4)`` numpy arrays (:func:`ebsd.orientation.quat_multiply`)."""
    from .orientation import quat_multiply

    return quat_multiply(torch.from_numpy(np.asarray(p)), torch.from_numpy(np.asarray(q))).numpy()


def _qconj(q: np.ndarray) -> np.ndarray:
    from .orientation import quat_conjugate

    return quat_conjugate(torch.from_numpy(np.asarray(q))).numpy()


def _qrotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Active rotation of vectors ``v (..., 3)`` by ``q (..., 4)``: ``q v q*`` (orix's ``q * v``)."""
    vq = np.concatenate((np.zeros(v.shape[:-1] + (1,), dtype=v.dtype), v), axis=-1)
    return _qmul(_qmul(q, vq), _qconj(q))[..., 1:]


def _rotvec_to_quat(w: np.ndarray) -> np.ndarray:
    """Rotation vectors ``(..., 3)`` (axis * angle, radians) -> unit quaternions ``(..., 4)``."""
    ang = np.linalg.norm(w, axis=-1, keepdims=True)
    half = 0.5 * ang
    # sin(x/2)/x, stable at 0
    k = np.where(ang > 1e-12, np.sin(half) / np.where(ang > 1e-12, ang, 1.0), 0.5 - ang * ang / 48.0)
    return np.concatenate((np.cos(half), w * k), axis=-1)


def _axis_angle_to_quat(axis, angle: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis, axis=-1, keepdims=True)
    return np.concatenate((np.full(axis.shape[:-1] + (1,), math.cos(angle / 2)), axis * math.sin(angle / 2)), -1)


def _positive(q: np.ndarray) -> np.ndarray:
    return np.where(q[..., :1] < 0, -q, q)


def random_quaternions(n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """``n`` rotations uniform on SO(3) (Shoemake 1992) as ``(n, 4)`` float64 unit quaternions, ``a >= 0``."""
    rng = np.random.default_rng(rng)
    u1, u2, u3 = rng.random((3, n))
    s1, s2 = np.sqrt(1.0 - u1), np.sqrt(u1)
    t2, t3 = 2 * np.pi * u2, 2 * np.pi * u3
    q = np.stack((s2 * np.cos(t3), s1 * np.sin(t2), s1 * np.cos(t2), s2 * np.sin(t3)), axis=-1)
    return _positive(q)


def _small_rotations(n: int, mean_deg: float, rng: np.random.Generator, dtype=np.float64) -> np.ndarray:
    """``(n, 3)`` isotropic Gaussian rotation vectors whose mean angle is ``mean_deg`` (Maxwell: the mean
    of |w| for w ~ N(0, s^2 I_3) is 2 s sqrt(2/pi))."""
    s = math.radians(mean_deg) / (2.0 * math.sqrt(2.0 / math.pi))
    if dtype == np.float32:
        w = rng.standard_normal((n, 3), dtype=np.float32)
        w *= np.float32(s)
        return w
    return rng.standard_normal((n, 3)) * s


def _euler_deg_to_quat(e) -> np.ndarray:
    """Bunge Euler (degrees) -> quaternion, orix convention (same formula as ebsd.orientation.euler_to_quat)."""
    phi1, Phi, phi2 = np.radians(np.asarray(e, dtype=np.float64))
    s, d = 0.5 * (phi1 + phi2), 0.5 * (phi1 - phi2)
    c, sn = math.cos(0.5 * Phi), math.sin(0.5 * Phi)
    return _positive(np.array([c * math.cos(s), -sn * math.cos(d), -sn * math.sin(d), -c * math.sin(s)]))


def _quat_between(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shortest active rotation taking unit vector ``u`` to unit vector ``v``."""
    u = u / np.linalg.norm(u)
    v = v / np.linalg.norm(v)
    c = float(np.dot(u, v))
    if c < -1 + 1e-12:  # opposite: any perpendicular axis
        perp = np.cross(u, [1.0, 0, 0])
        if np.linalg.norm(perp) < 1e-6:
            perp = np.cross(u, [0, 1.0, 0])
        return _axis_angle_to_quat(perp, math.pi)
    q = np.concatenate(([1.0 + c], np.cross(u, v)))
    return q / np.linalg.norm(q)


def _texture_orientations(n: int, texture, rng: np.random.Generator) -> np.ndarray:
    if texture is None or (isinstance(texture, str) and texture.lower() in ("random", "none")):
        return random_quaternions(n, rng)
    if isinstance(texture, str):
        texture = (texture,)
    kind = str(texture[0]).lower()
    if kind == "cube":
        spread = float(texture[1]) if len(texture) > 1 else 5.0
        ideal = np.tile(np.array([1.0, 0, 0, 0]), (n, 1))
    elif kind == "goss":
        spread = float(texture[1]) if len(texture) > 1 else 5.0
        ideal = np.tile(_euler_deg_to_quat((0.0, 45.0, 0.0)), (n, 1))
    elif kind == "euler":
        if len(texture) < 2:
            raise EBSDValueError('texture ("euler", (phi1, Phi, phi2) degrees, spread_deg) needs the angles')
        spread = float(texture[2]) if len(texture) > 2 else 5.0
        ideal = np.tile(_euler_deg_to_quat(texture[1]), (n, 1))
    elif kind == "fiber":
        if len(texture) < 2:
            raise EBSDValueError('texture ("fiber", crystal_dir, spread_deg[, sample_dir]) needs crystal_dir')
        cdir = np.asarray(texture[1], dtype=np.float64)
        spread = float(texture[2]) if len(texture) > 2 else 5.0
        sdir = np.asarray(texture[3] if len(texture) > 3 else (0.0, 0.0, 1.0), dtype=np.float64)
        if cdir.shape != (3,) or sdir.shape != (3,) or np.linalg.norm(cdir) == 0 or np.linalg.norm(sdir) == 0:
            raise EBSDValueError(f"fiber texture directions must be non-zero 3-vectors, got {cdir}, {sdir}")
        sdir = sdir / np.linalg.norm(sdir)
        q_align = _quat_between(sdir, cdir)  # passive g with g . sdir = cdir, before the free rotation
        psi = rng.random(n) * 2 * np.pi
        q_psi = _axis_angle_to_quat(np.tile(sdir, (n, 1)), 0.0)
        q_psi[:, 0] = np.cos(psi / 2)
        q_psi[:, 1:] = sdir[None, :] * np.sin(psi / 2)[:, None]
        ideal = _qmul(q_align[None, :], q_psi)
    else:
        raise EBSDValueError(
            f"unknown texture {texture!r}: use None, ('cube', spread_deg), ('goss', spread_deg), "
            "('euler', (phi1, Phi, phi2), spread_deg) or ('fiber', crystal_dir, spread_deg[, sample_dir])"
        )
    if spread < 0:
        raise EBSDValueError(f"texture spread must be >= 0 degrees, got {spread}")
    delta = _rotvec_to_quat(_small_rotations(n, spread, rng)) if spread > 0 else np.array([1.0, 0, 0, 0])
    return _positive(_qmul(delta, ideal))


_FCC_111 = np.array([[1.0, 1, 1], [-1, 1, 1], [1, -1, 1], [1, 1, -1]]) / math.sqrt(3.0)


def laue_class(symmetry: str) -> str:
    """Normalise a symmetry name to its Laue class (``"432"`` -> ``"m-3m"``)."""
    s = str(symmetry).strip()
    if s in LAUE_CLASSES:
        return s
    if s in _PROPER_TO_LAUE:
        return _PROPER_TO_LAUE[s]
    raise EBSDValueError(
        f"unknown symmetry {symmetry!r}: use a Laue class ({', '.join(LAUE_CLASSES)}) "
        f"or a proper point group ({', '.join(_PROPER_TO_LAUE)})"
    )


# ------------------------------------------------------------------------------------ the structure
class _Structure:
    """Seeds of a power diagram plus twin lamellae; evaluates the grain label of arbitrary points."""

    def __init__(self, shape, mean_grain_size, size_spread, elongation, twin_prob, rng_struct, rng_twin,
                 n_orient_rng, texture):
        from scipy.spatial import cKDTree

        Z, Y, X = shape
        e = np.asarray(elongation, dtype=np.float64)
        self.scale = e / np.prod(e) ** (1.0 / 3.0)  # volume-preserving stretch along (z, y, x)
        D = float(mean_grain_size)
        sig = _internal_sigma(float(size_spread))
        # lognormal ESD with E[d] = D; E[d^3] = D^3 exp(3 sig^2)
        mu = math.log(D) - 0.5 * sig * sig
        ed3 = math.exp(3 * mu + 4.5 * sig * sig)
        density = _density_factor(sig) * 6.0 / (math.pi * ed3)  # grains per voxel (real space)
        # seed box in the stretched frame: the volume (voxel centres 0..N-1) plus a margin of ~1.5 grains
        pad = 1.5 * D * math.exp(2 * sig)  # in the unstretched frame, generous for large grains
        lo = -0.5 / self.scale - pad
        hi = (np.array([Z, Y, X], dtype=np.float64) - 0.5) / self.scale + pad
        box = hi - lo
        n = max(int(round(density * float(np.prod(box)))), 1)
        self.seeds = lo + rng_struct.random((n, 3)) * box  # stretched frame
        d = D * np.exp(mu - math.log(D) + sig * rng_struct.standard_normal(n)) if sig > 0 else np.full(n, D)
        self.diam = d
        w = (_BETA * 0.5 * d) ** 2
        lift = np.sqrt(np.maximum(w.max() - w, 0.0))
        self.tree = cKDTree(np.concatenate((self.seeds, lift[:, None]), axis=1))
        self.n_seeds = n
        # orientations
        self.q_seed = _texture_orientations(n, texture, n_orient_rng)
        # twin lamellae: per seed up to 2 slabs on one {111} plane
        self.twin_lo = np.full((n, 2), np.inf)
        self.twin_hi = np.full((n, 2), -np.inf)
        self.twin_normal = np.zeros((n, 3))
        self.q_twin = np.zeros((n, 4))
        self.has_twin = np.zeros(n, dtype=bool)
        if twin_prob > 0:
            has = rng_twin.random(n) < twin_prob
            variant = rng_twin.integers(0, 4, n)
            n_lam = 1 + (rng_twin.random(n) < 0.4)
            frac_c = rng_twin.uniform(-0.35, 0.35, (n, 2))
            frac_t = rng_twin.uniform(0.10, 0.30, (n, 2))
            nc = _FCC_111[variant]  # crystal-frame twin plane normal / rotation axis
            ns = _qrotate(_qconj(self.q_seed), nc)  # sample frame: v_s = q* v_c q (passive q)
            r = _axis_angle_to_quat(nc, math.pi / 3)
            self.q_twin = _positive(_qmul(r, self.q_seed))
            self.twin_normal = ns
            self.has_twin = has
            for j in range(2):
                use = has & (j < n_lam)
                c = frac_c[:, j] * d
                t = frac_t[:, j] * d
                # the second lamella is placed away from the first
                if j == 1:
                    c = np.where(np.abs(c - frac_c[:, 0] * d) < 0.5 * (t + frac_t[:, 0] * d) + 1.0,
                                 -np.sign(frac_c[:, 0] + 1e-9) * (0.25 * d + 0.5 * t), c)
                self.twin_lo[:, j] = np.where(use, c - 0.5 * t, np.inf)
                self.twin_hi[:, j] = np.where(use, c + 0.5 * t, -np.inf)
        self.seeds_real = self.seeds * self.scale  # seed positions in voxel coordinates (z, y, x)

    def labels(self, pts: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
        """Labels of points ``(N, 3)`` in voxel coordinates ``(z, y, x)``: seed id ``i`` for the parent
        part, ``n_seeds + 2 i + j`` for lamella ``j`` of seed ``i``."""
        out = np.empty(len(pts), dtype=np.int64)
        for s in range(0, len(pts), chunk):
            p = pts[s:s + chunk]
            p4 = np.zeros((len(p), 4))
            p4[:, :3] = p / self.scale
            _, idx = self.tree.query(p4, k=1, workers=-1)
            idx = idx.astype(np.int64)
            lab = idx.copy()
            tw = self.has_twin[idx]
            if tw.any():
                ii = idx[tw]
                proj = np.einsum("nk,nk->n", p[tw] - self.seeds_real[ii], self.twin_normal[ii])
                for j in range(2):
                    inside = (proj >= self.twin_lo[ii, j]) & (proj < self.twin_hi[ii, j])
                    sub = lab[tw]
                    sub[inside] = self.n_seeds + 2 * ii[inside] + j
                    lab[tw] = sub
            out[s:s + chunk] = lab
        return out

    def label_quaternions(self) -> np.ndarray:
        """``(3 n_seeds, 4)`` orientation of every possible label."""
        qt = np.repeat(self.q_twin, 2, axis=0)
        return np.concatenate((self.q_seed, qt), axis=0)

    def label_parent(self) -> np.ndarray:
        n = self.n_seeds
        return np.concatenate((np.arange(n), np.repeat(np.arange(n), 2)))


def _grid_points(shape, z_list=None, shift=(0, 0)) -> np.ndarray:
    Z, Y, X = shape
    zs = np.arange(Z) if z_list is None else np.asarray(z_list)
    zz, yy, xx = np.meshgrid(zs.astype(np.float64), np.arange(Y, dtype=np.float64) - shift[0],
                             np.arange(X, dtype=np.float64) - shift[1], indexing="ij")
    return np.stack((zz.ravel(), yy.ravel(), xx.ravel()), axis=1)


def _boundary(g: np.ndarray, axes=(0, 1, 2)) -> np.ndarray:
    """True where a neighbour along one of ``axes`` carries another label."""
    b = np.zeros(g.shape, dtype=bool)
    for ax in axes:
        if g.shape[ax] < 2:
            continue
        sl0 = [slice(None)] * 3
        sl1 = [slice(None)] * 3
        sl0[ax] = slice(0, -1)
        sl1[ax] = slice(1, None)
        d = g[tuple(sl0)] != g[tuple(sl1)]
        b[tuple(sl0)] |= d
        b[tuple(sl1)] |= d
    return b


def _resolve_seed(seed) -> np.random.SeedSequence:
    if isinstance(seed, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=seed).item())
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(0, 2**62))
    if seed is None:
        raise EBSDValueError("seed must be an int (or a numpy/torch Generator); None would not be reproducible")
    if isinstance(seed, (bool, float)) or not isinstance(seed, (int, np.integer)):
        raise EBSDValueError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise EBSDValueError(f"seed must be >= 0, got {seed}")
    return np.random.SeedSequence(int(seed))


def _check_shape(shape) -> tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise EBSDValueError(f"shape must be (Z, Y, X) or (Y, X), got {shape!r}") from None
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise EBSDValueError(f"shape must be three positive ints (Z, Y, X), got {shape}")
    return shape


# ----------------------------------------------------------------------------------------- the API
def synthetic_volume(
    shape: Sequence[int] = (64, 64, 64),
    mean_grain_size: float = 12.0,
    symmetry: str = "m-3m",
    seed: int = 0,
    *,
    size_spread: float = 0.3,
    elongation: Sequence[float] = (1.0, 1.0, 1.0),
    twins: bool | float = False,
    texture=None,
    noise_deg: float = 0.0,
    unindexed_fraction: float = 0.0,
    misaligned_slice: tuple[int, tuple[int, int]] | None = None,
    missing_slices: Sequence[int] = (),
    damaged_slices: Sequence[int] = (),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    device=None,
    return_truth: bool = False,
    drift=None,
    speckle_fraction: float = 0.0,
):
    """A seeded synthetic EBSD volume (see the module docstring for the model).

    Args:
        shape: ``(Z, Y, X)`` voxels (``(Y, X)`` or ``Z = 1`` gives a 2-D section of a 3-D structure, whose
            mean equivalent-circle diameter is smaller than ``mean_grain_size``, about 0.75x, as in real
            sections).
        mean_grain_size: mean equivalent-sphere diameter of the grains (parents, before twinning), voxels.
        symmetry: Laue class of the phase (``"m-3m"``, ``"6/mmm"``, ``"4/mmm"``, ...; proper point-group
            names such as ``"432"`` are accepted and stored as their Laue class).
        seed: int (or a numpy/torch Generator, from which one int is drawn).
        size_spread: standard deviation of log(ESD) of the grains (achievable 0.15..0.57, clipped).
        elongation: stretch of the grains along ``(z, y, x)`` (volume-preserving, only ratios matter).
        twins: ``True`` (half of the grains get lamellae) or a probability in ``[0, 1]``; m-3m only.
        texture: ``None`` (uniform), ``("cube", spread_deg)``, ``("goss", spread_deg)``,
            ``("euler", (phi1, Phi, phi2), spread_deg)``, ``("fiber", crystal_dir, spread_deg[, sample_dir])``.
        noise_deg: mean misorientation (degrees) of the per-voxel orientation noise.
        unindexed_fraction: fraction of voxels made unindexed (CI <= 0.05, invalid).
        misaligned_slice: ``(z, (dy, dx))``: slice ``z`` acquired shifted by whole pixels.
        missing_slices: z indices blanked (CI 0, IQ 0, identity quaternion, phase 0, invalid).
        damaged_slices: z indices degraded (extra 8 deg noise, 25 % unindexed, low CI/IQ; the rest valid).
        spacing: ``(dz, dy, dx)`` micrometres (metadata only: the structure is built in voxels).
        device: torch device of the returned tensors (default CPU).
        return_truth: also return a :class:`SyntheticTruth`.
        drift: ``(Z, 2)`` integers: section ``z`` acquired with its content displaced by ``drift[z] = (dy, dx)``
            (stage drift of serial sectioning; the structure outside the box is real, no wrap-around), e.g.
            from :func:`ebsd.reconstruction.random_drift` (a random walk with jumps). Combines with
            ``misaligned_slice`` (added). ``truth.drift`` holds it; ``truth.observed_grain_ids`` the
            displaced labels. :func:`ebsd.reconstruction.align_sections` should return ``drift[0] - drift``.
        speckle_fraction: fraction of indexed voxels turned into low-CI speckle (CI <= 0.08, random
            orientation, IQ halved) that stays marked *valid*, as raw scans before a CI threshold
            (``truth.speckle_mask``); what :func:`ebsd.reconstruction.mark_bad` removes.

    Returns:
        :class:`~ebsd.volume.EBSDVolume` (phase 1 with the given symmetry), or ``(volume, truth)``.
    """
    shape = _check_shape(shape)
    Z, Y, X = shape
    sym = laue_class(symmetry)
    D = float(mean_grain_size)
    if not np.isfinite(D) or D <= 0:
        raise EBSDValueError(f"mean_grain_size must be > 0 voxels, got {mean_grain_size}")
    if not (0.0 <= float(size_spread) <= 1.5):
        raise EBSDValueError(f"size_spread must be in [0, 1.5], got {size_spread}")
    elong = tuple(float(v) for v in elongation)
    if len(elong) != 3 or any(not np.isfinite(v) or v <= 0 for v in elong):
        raise EBSDValueError(f"elongation must be three positive factors (z, y, x), got {elongation}")
    if twins is True:
        twin_prob = 0.5
    elif twins is False or twins is None:
        twin_prob = 0.0
    else:
        twin_prob = float(twins)
        if not 0.0 <= twin_prob <= 1.0:
            raise EBSDValueError(f"twins must be True/False or a probability in [0, 1], got {twins}")
    if twin_prob > 0 and sym != "m-3m":
        raise EBSDValueError(f"annealing twins (Sigma-3, 60 deg about <111>) are for fcc, m-3m; got {sym!r}")
    noise_deg = float(noise_deg)
    if not np.isfinite(noise_deg) or noise_deg < 0:
        raise EBSDValueError(f"noise_deg must be >= 0, got {noise_deg}")
    unindexed_fraction = float(unindexed_fraction)
    if not 0.0 <= unindexed_fraction <= 1.0:
        raise EBSDValueError(f"unindexed_fraction must be in [0, 1], got {unindexed_fraction}")
    missing = sorted({int(z) for z in missing_slices})
    damaged = sorted({int(z) for z in damaged_slices})
    for name, zs in (("missing_slices", missing), ("damaged_slices", damaged)):
        bad = [z for z in zs if not 0 <= z < Z]
        if bad:
            raise EBSDValueError(f"{name} {bad} outside 0..{Z - 1}")
    mis = None
    if misaligned_slice is not None:
        try:
            mz, (mdy, mdx) = misaligned_slice
            mis = (int(mz), (int(mdy), int(mdx)))
        except (TypeError, ValueError):
            raise EBSDValueError(f"misaligned_slice must be (z, (dy, dx)), got {misaligned_slice!r}") from None
        if not 0 <= mis[0] < Z:
            raise EBSDValueError(f"misaligned_slice z={mis[0]} outside 0..{Z - 1}")

    drift_arr = None
    if drift is not None:
        drift_arr = np.asarray(drift)
        if drift_arr.shape != (Z, 2) or not np.all(np.isfinite(drift_arr)) or not np.allclose(drift_arr, np.round(drift_arr)):
            raise EBSDValueError(f"drift must be (Z, 2) = ({Z}, 2) whole voxel shifts (dy, dx), got shape {drift_arr.shape}")
        drift_arr = np.round(drift_arr).astype(np.int64)
    speckle_fraction = float(speckle_fraction)
    if not 0.0 <= speckle_fraction <= 1.0:
        raise EBSDValueError(f"speckle_fraction must be in [0, 1], got {speckle_fraction}")

    ss = _resolve_seed(seed)
    # spawn(8): the first 7 streams are those of spawn(7), so volumes without speckle are unchanged
    r_struct, r_orient, r_twin, r_noise, r_unidx, r_iq, r_damage, r_speckle = (
        np.random.default_rng(s) for s in ss.spawn(8))

    # ---- structure and labels
    st = _Structure(shape, D, float(size_spread), elong, twin_prob, r_struct, r_twin, r_orient, texture)
    lab_true = np.empty(shape, dtype=np.int64)
    step = max(1, (1 << 20) // (Y * X))  # z-slabs of about 1M voxels: no whole-volume coordinate arrays
    for z0 in range(0, Z, step):
        z1 = min(Z, z0 + step)
        lab_true[z0:z1] = st.labels(_grid_points((z1 - z0, Y, X), np.arange(z0, z1))).reshape(z1 - z0, Y, X)
    lab_obs = lab_true
    shift_z = np.zeros((Z, 2), np.int64)
    if drift_arr is not None:
        shift_z += drift_arr
    if mis is not None:
        shift_z[mis[0]] += np.asarray(mis[1])
    if shift_z.any():
        lab_obs = lab_true.copy()
        for z in np.nonzero(shift_z.any(1))[0]:
            lab_obs[z] = st.labels(_grid_points((1, Y, X), [z], tuple(int(v) for v in shift_z[z]))).reshape(Y, X)
    # consecutive grain ids over the labels present (truth first, then extra ones of a misaligned slice)
    present = np.unique(lab_true)
    extra = np.setdiff1d(np.unique(lab_obs), present) if lab_obs is not lab_true else np.zeros(0, np.int64)
    used = np.concatenate((present, extra))
    remap = np.full(3 * st.n_seeds, -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    gid = remap[lab_true]
    gid_obs = remap[lab_obs] if lab_obs is not lab_true else gid
    all_q = st.label_quaternions()
    gq = _positive(all_q[used])
    parents_lab = st.label_parent()[used]
    is_twin = used >= st.n_seeds
    # parent id in the consecutive numbering; a parent absent from the volume gets a new id at the end
    parent_ids = np.arange(len(used), dtype=np.int64)
    parent_of_twin: dict[int, int] = {}
    absent_parents = []
    for g in np.nonzero(is_twin)[0]:
        p = remap[parents_lab[g]]
        if p < 0:  # the lamella is in the volume, its parent's matrix is not: record it
            absent_parents.append(parents_lab[g])
            p = -1
        parent_ids[g] = p
        parent_of_twin[int(g)] = int(p)

    # ---- orientation field
    gq32 = gq.astype(np.float32)
    q_clean = gq32[gid]  # (Z, Y, X, 4) float32
    q_obs = gq32[gid_obs] if gid_obs is not gid else q_clean.copy()
    nvox = Z * Y * X
    noise_ang = np.zeros(shape, dtype=np.float32)
    if noise_deg > 0:
        w = _small_rotations(nvox, noise_deg, r_noise, np.float32).reshape(shape + (3,))
        noise_ang = np.degrees(np.linalg.norm(w, axis=-1))
        q_obs = _qmul(_rotvec_to_quat(w), q_obs)
    dmg_w = None
    if damaged:
        dmg_w = _small_rotations(len(damaged) * Y * X, 8.0, r_damage, np.float32).reshape((len(damaged), Y, X, 3))
        q_obs[damaged] = _qmul(_rotvec_to_quat(dmg_w), q_obs[damaged])
        noise_ang[damaged] = np.degrees(
            2 * np.arccos(np.clip(np.abs(np.sum(q_obs[damaged] * q_clean[damaged], -1)), 0, 1)))

    # ---- IQ and CI
    bnd2 = _boundary(gid_obs, axes=(1, 2))
    if Y > 1 or X > 1:
        from scipy.ndimage import gaussian_filter

        prox = np.clip(gaussian_filter(bnd2.astype(np.float32), sigma=(0, 1.0, 1.0), mode="nearest") / 0.6, 0, 1)
    else:
        prox = bnd2.astype(np.float32)
    g_iq = r_iq.uniform(0.76, 1.0, len(used))
    z_iq = 1.0 + 0.03 * r_iq.standard_normal(Z)
    noise_iq = 1.0 - 0.35 * (1.0 - math.exp(-noise_deg / 4.0))
    iq = IQ_MAX * g_iq[gid_obs] * z_iq[:, None, None] * noise_iq * (1.0 - 0.5 * prox)
    iq *= 1.0 + 0.03 * r_iq.standard_normal(shape)
    ci = (0.93 - 0.35 * prox) / (1.0 + (noise_ang / 6.0) ** 2) + 0.03 * r_iq.standard_normal(shape)
    phases = np.ones(shape, dtype=np.int32)
    valid = np.ones(shape, dtype=bool)

    # ---- unindexed points (weighted to boundaries)
    unidx = np.zeros(shape, dtype=bool)
    k = int(round(unindexed_fraction * nvox))
    if k > 0:
        wgt = np.where(bnd2, 4.0, 1.0).ravel()
        key = np.log(r_unidx.random(nvox)) / wgt  # Efraimidis-Spirakis weighted sampling w/o replacement
        pick = np.argpartition(-key, k - 1)[:k] if k < nvox else np.arange(nvox)
        unidx.ravel()[pick] = True
    if damaged:
        for z in damaged:
            unidx[z] |= r_damage.random((Y, X)) < 0.25
    n_un = int(unidx.sum())
    if n_un:
        q_obs[unidx] = random_quaternions(n_un, r_unidx)
        ci[unidx] = r_unidx.uniform(0.0, 0.05, n_un)
        iq[unidx] *= 0.4
        phases[unidx] = 0
        valid[unidx] = False
    if damaged:
        for z in damaged:
            iq[z] *= 0.35
            ci[z] *= 0.3
    speckle = np.zeros(shape, dtype=bool)
    if speckle_fraction > 0:
        speckle = (r_speckle.random(shape) < speckle_fraction) & ~unidx
        n_sp = int(speckle.sum())
        if n_sp:
            q_obs[speckle] = random_quaternions(n_sp, r_speckle)
            ci[speckle] = r_speckle.uniform(0.0, 0.08, n_sp)
            iq[speckle] *= 0.5
    # as EDAX/TSL .ang files store them: CI with 3 decimals, IQ with 1
    ci = np.round(np.clip(ci, 0.0, 1.0), 3)
    iq = np.round(np.maximum(iq, 0.0), 1)

    # ---- missing slices
    for z in missing:
        q_obs[z] = np.array([1.0, 0.0, 0.0, 0.0])
        ci[z] = 0.0
        iq[z] = 0.0
        phases[z] = 0
        valid[z] = False
        unidx[z] = False
    gid_obs_out = gid_obs.copy() if gid_obs is gid else gid_obs
    for z in missing:
        gid_obs_out[z] = -1

    q_obs = _positive(q_obs)
    if noise_deg > 0 or damaged:  # rotated in float32: renormalise (untouched voxels stay bit-exact)
        q_obs /= np.linalg.norm(q_obs, axis=-1, keepdims=True)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    name, lattice = LAUE_CLASSES[sym]
    params = dict(
        shape=shape, mean_grain_size=D, symmetry=sym, seed=int(seed) if isinstance(seed, (int, np.integer)) else None,
        size_spread=float(size_spread), elongation=elong, twins=twin_prob, texture=texture, noise_deg=noise_deg,
        unindexed_fraction=unindexed_fraction, misaligned_slice=mis, missing_slices=tuple(missing),
        damaged_slices=tuple(damaged), spacing=tuple(float(s) for s in spacing),
    )
    if drift_arr is not None:
        params["drift"] = drift_arr.tolist()
    if speckle_fraction > 0:
        params["speckle_fraction"] = speckle_fraction
    vol = EBSDVolume(
        quaternions=torch.from_numpy(q_obs.astype(np.float32)).to(dev),
        phases=torch.from_numpy(phases).to(dev),
        confidence=torch.from_numpy(ci.astype(np.float32)).to(dev),
        image_quality=torch.from_numpy(iq.astype(np.float32)).to(dev),
        spacing=tuple(float(s) for s in spacing),
        phase_info={1: Phase(name=name, symmetry=sym, lattice=lattice)},
        valid=torch.from_numpy(valid).to(dev),
        metadata={
            "source": "ebsd.synthetic.synthetic_volume",
            "format": "synthetic",
            "synthetic": {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()
                          if k != "texture"} | {"texture": repr(texture)},
        },
    )
    if not return_truth:
        return vol

    counts = np.bincount(gid.ravel(), minlength=len(used)).astype(np.int64)
    esd = (6.0 * counts / math.pi) ** (1.0 / 3.0)
    border = np.zeros(len(used), dtype=bool)
    for ax in range(3):
        if shape[ax] == 1:  # a 2-D section: only its in-plane edges count
            continue
        for end in (0, -1):
            border[np.unique(np.take(gid, [end], axis=ax))] = True
    bnd3 = _boundary(gid)
    # twin boundaries: neighbours sharing a parent
    pid = parent_ids.copy()
    pid[pid < 0] = np.arange(len(pid))[pid < 0] + len(pid)  # absent parent: unique key
    fam = np.where(is_twin, pid, np.arange(len(used)))[gid]
    tb = np.zeros(shape, dtype=bool)
    for ax in range(3):
        if shape[ax] < 2:
            continue
        sl0 = [slice(None)] * 3
        sl1 = [slice(None)] * 3
        sl0[ax] = slice(0, -1)
        sl1[ax] = slice(1, None)
        d = (gid[tuple(sl0)] != gid[tuple(sl1)]) & (fam[tuple(sl0)] == fam[tuple(sl1)])
        tb[tuple(sl0)] |= d
        tb[tuple(sl1)] |= d

    def T(a, dtype=None):
        t = torch.from_numpy(np.ascontiguousarray(a))
        return (t.to(dtype) if dtype is not None else t).to(dev)

    truth = SyntheticTruth(
        grain_ids=T(gid, torch.int64),
        grain_quaternions=T(gq.astype(np.float32)),
        clean_quaternions=T(q_clean.astype(np.float32)),
        parent_of_twin=parent_of_twin,
        parent_ids=T(parent_ids, torch.int64),
        is_twin=T(is_twin),
        boundary_mask=T(bnd3),
        twin_boundary_mask=T(tb),
        grain_volumes=T(counts),
        grain_esd=T(esd.astype(np.float32)),
        touches_border=T(border),
        unindexed_mask=T(unidx),
        missing_slices=tuple(missing),
        damaged_slices=tuple(damaged),
        misaligned_slice=mis,
        observed_grain_ids=T(gid_obs_out, torch.int64),
        noise_angles=T(noise_ang.astype(np.float32)),
        params=params,
        drift=drift_arr,
        speckle_mask=T(speckle),
    )
    return vol, truth
