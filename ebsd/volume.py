"""The :class:`EBSDVolume` container: a 3-D EBSD map indexed ``(z, y, x)``, z the sectioning axis."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import EBSDValueError


@dataclass
class Phase:
    """One crystallographic phase.

    Attributes:
        name: material name, e.g. ``"Iron (Alpha)"``.
        symmetry: Laue class in Hermann-Mauguin notation as orix names it (``"m-3m"``, ``"6/mmm"``,
            ``"4/mmm"``, ``"-3m"``, ``"mmm"``, ``"2/m"``, ``"-1"``, ``"m-3"``, ``"4/m"``, ``"-3"``,
            ``"6/m"``). Orientation math uses its proper rotation subgroup (432 for m-3m, ...).
        lattice: ``(a, b, c, alpha, beta, gamma)`` in angstrom and degrees.
    """

    name: str = "unknown"
    symmetry: str = "m-3m"
    lattice: tuple[float, float, float, float, float, float] = (1.0, 1.0, 1.0, 90.0, 90.0, 90.0)


def _as_tensor(value, dtype, name, shape=None) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise EBSDValueError(f"{name} must be a numpy array or torch tensor, got {type(value).__name__}")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise EBSDValueError(f"{name} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    return value.to(dtype)


@dataclass
class EBSDVolume:
    """A 3-D (or single-slice, ``Z = 1``) EBSD map.

    Attributes:
        quaternions: ``(Z, Y, X, 4)`` float32 unit quaternions ``(a, b, c, d)``, scalar first, passive
            (sample -> crystal, Bunge convention, as orix).
        phases: ``(Z, Y, X)`` int32 phase id of each voxel (keys of ``phase_info``; ``0`` or ``-1`` can
            mean "not indexed" depending on the source, see ``valid``).
        confidence: ``(Z, Y, X)`` float32 confidence index (CI, 0..1, -1 for unindexed in some files).
        image_quality: ``(Z, Y, X)`` float32 image quality (IQ, arbitrary units).
        spacing: ``(dz, dy, dx)`` voxel size in micrometres.
        origin: ``(z0, y0, x0)`` position of voxel ``(0, 0, 0)`` in micrometres.
        phase_info: ``{phase id: Phase}``.
        valid: ``(Z, Y, X)`` bool, True where the voxel is indexed and trusted.
        measured: ``(Z, Y, X)`` bool, True where the voxel was measured at all. False marks points that were
            never written (a truncated scan's last row), lie outside a section after alignment, or belong to
            a missing section; readers and alignment leave such voxels not ``valid``. "Not indexed"
            (measured, but no solution) is ``measured & ~valid``. A voxel filled by slice recovery is
            ``valid & ~measured`` (its values are inferred; ``metadata["recovered_slices"]`` lists the
            slices). Defaults to all True.
        metadata: free-form provenance (``source``, ``format``, header lines, ``recovered_slices`` ...).

    Tensors given as float32 CPU torch tensors, or numpy arrays of the target dtype, are used without a copy
    (so large volumes are not duplicated); use :meth:`copy` for an independent volume.
    """

    quaternions: torch.Tensor
    phases: torch.Tensor | None = None
    confidence: torch.Tensor | None = None
    image_quality: torch.Tensor | None = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    phase_info: dict[int, Phase] = field(default_factory=lambda: {1: Phase()})
    valid: torch.Tensor | None = None
    measured: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        q = _as_tensor(self.quaternions, torch.float32, "quaternions")
        if q.ndim != 4 or q.shape[-1] != 4:
            raise EBSDValueError(f"quaternions must have shape (Z, Y, X, 4), got {tuple(q.shape)}")
        self.quaternions = q
        shp = tuple(q.shape[:3])
        dev = q.device
        if self.phases is None:
            self.phases = torch.full(shp, min(self.phase_info) if self.phase_info else 1, dtype=torch.int32)
        self.phases = _as_tensor(self.phases, torch.int32, "phases", shp).to(dev)
        if self.confidence is None:
            self.confidence = torch.ones(shp)
        self.confidence = _as_tensor(self.confidence, torch.float32, "confidence", shp).to(dev)
        if self.image_quality is None:
            self.image_quality = torch.ones(shp)
        self.image_quality = _as_tensor(self.image_quality, torch.float32, "image_quality", shp).to(dev)
        if self.valid is None:
            self.valid = torch.ones(shp, dtype=torch.bool)
        self.valid = _as_tensor(self.valid, torch.bool, "valid", shp).to(dev)
        if self.measured is None:
            self.measured = torch.ones(shp, dtype=torch.bool, device=dev)
        self.measured = _as_tensor(self.measured, torch.bool, "measured", shp).to(dev)
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(s) for s in self.origin)
        if len(self.spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise EBSDValueError(f"spacing must be three positive numbers (dz, dy, dx) in um, got {self.spacing}")
        if len(self.origin) != 3:
            raise EBSDValueError(f"origin must be three numbers (z0, y0, x0) in um, got {self.origin}")
        if not torch.isfinite(q).all():
            raise EBSDValueError("quaternions contain NaN or inf; mark such voxels invalid and give them (1,0,0,0)")
        norms = q.norm(dim=-1)
        if q.numel() and (norms - 1).abs().max() > 1e-3:
            raise EBSDValueError(
                "quaternions are not unit (max | |q| - 1 | = "
                f"{float((norms - 1).abs().max()):.3g}); normalise them first"
            )
        for pid, ph in list(self.phase_info.items()):
            if not isinstance(ph, Phase):
                raise EBSDValueError(f"phase_info[{pid}] must be an ebsd.Phase, got {type(ph).__name__}")

    # ------------------------------------------------------------------ views
    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``."""
        return tuple(self.quaternions.shape[:3])

    @property
    def device(self) -> torch.device:
        return self.quaternions.device

    @property
    def symmetry(self) -> str:
        """Laue class of the phase that covers the most valid voxels (the whole map if single-phase)."""
        if len(self.phase_info) == 1:
            return next(iter(self.phase_info.values())).symmetry
        ids, counts = torch.unique(self.phases[self.valid], return_counts=True)
        best = None
        for i, c in sorted(zip(ids.tolist(), counts.tolist()), key=lambda t: -t[1]):
            if i in self.phase_info:
                best = i
                break
        if best is None:
            best = min(self.phase_info)
        return self.phase_info[best].symmetry

    @property
    def symmetries(self) -> dict[int, str]:
        """``{phase id: Laue class}``."""
        return {k: v.symmetry for k, v in self.phase_info.items()}

    @property
    def fraction_indexed(self) -> float:
        return float(self.valid.float().mean()) if self.valid.numel() else 0.0

    # ------------------------------------------------------------------ copies
    def copy(self) -> "EBSDVolume":
        """Deep copy (tensors cloned)."""
        return dataclasses.replace(
            self,
            quaternions=self.quaternions.clone(),
            phases=self.phases.clone(),
            confidence=self.confidence.clone(),
            image_quality=self.image_quality.clone(),
            valid=self.valid.clone(),
            measured=self.measured.clone(),
            phase_info=copy.deepcopy(self.phase_info),
            metadata=copy.deepcopy(self.metadata),
        )

    def to(self, device) -> "EBSDVolume":
        """A copy whose tensors live on ``device`` (always a copy, also when already there)."""
        return dataclasses.replace(
            self,
            quaternions=self.quaternions.to(device, copy=True),
            phases=self.phases.to(device, copy=True),
            confidence=self.confidence.to(device, copy=True),
            image_quality=self.image_quality.to(device, copy=True),
            valid=self.valid.to(device, copy=True),
            measured=self.measured.to(device, copy=True),
            phase_info=copy.deepcopy(self.phase_info),
            metadata=copy.deepcopy(self.metadata),
        )

    def slices(self, z0: int, z1: int) -> "EBSDVolume":
        """Sub-volume of slices ``z0 <= z < z1`` (a copy), origin shifted accordingly."""
        Z = self.shape[0]
        if not (0 <= z0 < z1 <= Z):
            raise EBSDValueError(f"slice range [{z0}, {z1}) outside 0..{Z}")
        return dataclasses.replace(
            self,
            quaternions=self.quaternions[z0:z1].clone(),
            phases=self.phases[z0:z1].clone(),
            confidence=self.confidence[z0:z1].clone(),
            image_quality=self.image_quality[z0:z1].clone(),
            valid=self.valid[z0:z1].clone(),
            measured=self.measured[z0:z1].clone(),
            origin=(self.origin[0] + z0 * self.spacing[0], self.origin[1], self.origin[2]),
            phase_info=copy.deepcopy(self.phase_info),
            metadata=copy.deepcopy(self.metadata),
        )

    def equals(self, other: "EBSDVolume", atol: float = 0.0) -> bool:
        """Same shape, fields, phase ids with the same symmetries, and measured/valid flags; orientations equal up
        to ``q ~ -q`` within ``atol``. (Phase names and lattice constants are not compared: formats differ in
        how many digits and characters they keep.)"""
        if self.shape != other.shape:
            return False
        dq = torch.minimum(
            (self.quaternions - other.quaternions).abs().amax(-1),
            (self.quaternions + other.quaternions).abs().amax(-1),
        )
        return bool(
            (dq <= atol).all()
            and torch.equal(self.phases, other.phases)
            and torch.allclose(self.confidence, other.confidence, atol=max(atol, 1e-6))
            and torch.allclose(self.image_quality, other.image_quality, atol=max(atol, 1e-6), rtol=1e-6)
            and torch.equal(self.valid, other.valid)
            and torch.equal(self.measured, other.measured)
            and np.allclose(self.spacing, other.spacing)
            and self.symmetries == other.symmetries  # same phase ids with the same Laue classes
        )

    def __repr__(self) -> str:
        ph = ", ".join(f"{k}:{v.name}({v.symmetry})" for k, v in self.phase_info.items())
        return (
            f"EBSDVolume(shape={self.shape}, spacing={self.spacing} um, phases=[{ph}], "
            f"indexed={self.fraction_indexed:.1%}, device={self.device})"
        )
