"""Helpers shared by the readers and writers in :mod:`ebsd.io` (symmetry tables, error wrapping,
Euler -> quaternion conversion into preallocated buffers, JSON-safe metadata)."""
from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import EBSDError, EBSDFormatError, EBSDValueError

# ---------------------------------------------------------------------------------------------- symmetry
# EDAX/TSL Laue-group codes of the .ang "Symmetry" header line (EbsdLib AngConstants.h).
TSL_CODE_TO_LAUE: dict[int, str] = {
    43: "m-3m", 23: "m-3", 42: "4/mmm", 4: "4/m", 22: "mmm", 2: "2/m", 20: "2/m", 21: "2/m",
    62: "6/mmm", 6: "6/m", 32: "-3m", 3: "-3", 1: "-1",
}
LAUE_TO_TSL_CODE: dict[str, int] = {
    "m-3m": 43, "m-3": 23, "4/mmm": 42, "4/m": 4, "mmm": 22, "2/m": 2, "6/mmm": 62, "6/m": 6,
    "-3m": 32, "-3": 3, "-1": 1,
}
# DREAM.3D / EbsdLib CrystalStructure enumeration (EbsdLibConstants.h); 999 = unknown.
DREAM3D_CODE_TO_LAUE: dict[int, str] = {
    0: "6/mmm", 1: "m-3m", 2: "6/m", 3: "m-3", 4: "-1", 5: "2/m", 6: "mmm", 7: "4/m", 8: "4/mmm",
    9: "-3", 10: "-3m",
}
LAUE_TO_DREAM3D_CODE: dict[str, int] = {v: k for k, v in DREAM3D_CODE_TO_LAUE.items()}
DREAM3D_UNKNOWN = 999

# Point-group / Laue names (as orix and vendors write them) -> Laue class.
_NAME_TO_LAUE: dict[str, str] = {
    "m-3m": "m-3m", "m3m": "m-3m", "432": "m-3m", "-43m": "m-3m",
    "m-3": "m-3", "m3": "m-3", "23": "m-3",
    "4/mmm": "4/mmm", "422": "4/mmm", "4mm": "4/mmm", "-42m": "4/mmm", "-4m2": "4/mmm",
    "4/m": "4/m", "4": "4/m", "-4": "4/m",
    "mmm": "mmm", "222": "mmm", "mm2": "mmm",
    "2/m": "2/m", "2": "2/m", "m": "2/m", "121": "2/m", "112": "2/m", "211": "2/m",
    "6/mmm": "6/mmm", "622": "6/mmm", "6mm": "6/mmm", "-6m2": "6/mmm", "-62m": "6/mmm",
    "6/m": "6/m", "6": "6/m", "-6": "6/m",
    "-3m": "-3m", "32": "-3m", "321": "-3m", "312": "-3m", "3m": "-3m", "-3m1": "-3m", "-31m": "-3m",
    "-3": "-3", "3": "-3",
    "-1": "-1", "1": "-1",
}
LAUE_NAMES = tuple(LAUE_TO_TSL_CODE)


def _get_symmetry():
    """:func:`ebsd.orientation.get_symmetry` (the project's symmetry table), or ``None`` if unavailable."""
    try:
        from ..orientation import get_symmetry
    except Exception:  # pragma: no cover - only while ebsd.orientation is incomplete
        return None
    return get_symmetry


def laue_from_tsl(value: Any) -> str | None:
    """A TSL ``Symmetry`` value (code ``43`` or a name like ``"432"``/``"m-3m"``) -> Laue name, else ``None``.

    Digit strings are TSL codes (``"32"`` is -3m, ``"2"`` 2/m, ``"20"`` 2/m; these agree with the
    point-group reading). Uses :func:`ebsd.orientation.get_symmetry`; the local table is only a fallback.
    """
    s = str(value).strip()
    digits = re.fullmatch(r"[+-]?\d+", s) is not None
    get = _get_symmetry()
    if get is not None:
        for key in ([int(s), s] if digits else [s]):
            try:
                name = str(get(key).name)
            except Exception:
                continue
            name = name if name in LAUE_TO_TSL_CODE else _NAME_TO_LAUE.get(name)
            if name is not None:
                return name
    if digits and int(s) in TSL_CODE_TO_LAUE:
        return TSL_CODE_TO_LAUE[int(s)]
    return _NAME_TO_LAUE.get(s)


def resolve_phase0(phase_vals: np.ndarray, ci: np.ndarray, ids) -> tuple[np.ndarray, np.ndarray | None]:
    """TSL single-phase convention: in a single-phase file whose phase column never uses the phase's id,
    0 means "that phase" (EDAX writes 0 there). Those points (where CI >= 0) get the phase id; the mask of the
    points changed is returned (``None`` when nothing changed). Otherwise 0 means "not indexed"."""
    ids = set(ids)
    if len(ids) != 1 or 0 in ids:
        return phase_vals, None
    (only,) = ids
    if (phase_vals == only).any():
        return phase_vals, None
    mask = (phase_vals == 0) & (ci >= 0)
    if not mask.any():
        return phase_vals, None
    return np.where(mask, np.int32(only), phase_vals).astype(np.int32), mask


class FormatContext:
    """Turns any exception raised inside ``with FormatContext(path, what):`` into an
    :class:`EBSDFormatError` naming the file (our own :class:`EBSDError` s pass through unchanged)."""

    def __init__(self, path, what: str = "reading"):
        self.path = str(path)
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            return False
        if isinstance(exc, EBSDError) or isinstance(exc, (KeyboardInterrupt, SystemExit, MemoryError)):
            return False
        msg = str(exc).strip() or exc_type.__name__
        if len(msg) > 300:
            msg = msg[:300] + "..."
        raise EBSDFormatError(f"{self.path}: {self.what} failed: {exc_type.__name__}: {msg}") from exc


def fmt_error(path, msg: str) -> EBSDFormatError:
    return EBSDFormatError(f"{path}: {msg}")


# ---------------------------------------------------------------------------------------------- orientations
def euler_rows_to_quat(euler: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(..., 3)`` Bunge Euler angles (radians, any float dtype) -> float32 unit quaternions, computed in
    float64 (so they agree with orix to ~1e-7) and written into ``out`` when given."""
    from ..orientation import euler_to_quat

    q = euler_to_quat(torch.from_numpy(np.asarray(euler, dtype=np.float64)))
    if out is None:
        return q.to(torch.float32)
    out.copy_(q)
    return out


def quat_to_euler_np(q: torch.Tensor) -> np.ndarray:
    """float32/float64 quaternions -> float64 Euler angles in radians (computed in float64)."""
    from ..orientation import quat_to_euler

    return quat_to_euler(q.detach().to("cpu", torch.float64)).numpy()


def read_text_bytes(path, kind: str) -> bytes:
    """The bytes of a vendor text file (``kind``: ``".ang"``, ``".ctf"``), or :class:`EBSDFormatError` when
    it cannot be read, is empty, or is binary (NUL bytes in its first 4 KiB)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise fmt_error(path, f"cannot read: {exc}") from None
    if not raw.strip():
        raise fmt_error(path, "the file is empty")
    if b"\x00" in raw[:4096]:
        raise fmt_error(path, f"binary content (NUL bytes) where {kind} text was expected")
    return raw


def check_finite(path, name: str, arr: np.ndarray) -> None:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise fmt_error(path, f"{name} contains {bad} NaN/inf value(s); the file is damaged")


# ---------------------------------------------------------------------------------------------- metadata
def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, bool)) or obj is None:
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else str(f)
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().numpy())
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def metadata_to_json(metadata: dict) -> str:
    """JSON text of ``metadata`` (numpy/torch values become lists, unknown objects their ``str``)."""
    return json.dumps(_jsonable(metadata), allow_nan=False)


# ---------------------------------------------------------------------------------------------- sorting
def natural_key(s: str) -> list:
    """Sort key so that ``S2`` sorts before ``S10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool) -> Iterator:
    if not enabled:
        class _Null:
            def update(self, n=1):
                pass
        yield _Null()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="slice")
    try:
        yield bar
    finally:
        bar.close()


def assemble_volume(*, quaternions: torch.Tensor, phases: torch.Tensor, confidence: torch.Tensor,
                    image_quality: torch.Tensor, valid: torch.Tensor, spacing, origin, phase_info, metadata,
                    measured: torch.Tensor | None = None):
    """Build an :class:`EBSDVolume` from preallocated full-size tensors without the whole-volume temporaries
    of ``EBSDVolume.__post_init__`` (its finite/unit-norm checks allocate ~0.9x the tensors again for big
    volumes). The same checks run here slab by slab; the dataclass validates everything else on a one-voxel
    stand-in, then the full tensors are put in place."""
    from ..errors import EBSDValueError
    from ..volume import EBSDVolume

    shp = tuple(quaternions.shape[:3])
    if quaternions.ndim != 4 or quaternions.shape[-1] != 4 or quaternions.dtype != torch.float32:
        raise EBSDValueError(f"quaternions must be float32 (Z, Y, X, 4), got {tuple(quaternions.shape)}")
    for name, t, dt in (("phases", phases, torch.int32), ("confidence", confidence, torch.float32),
                        ("image_quality", image_quality, torch.float32), ("valid", valid, torch.bool)):
        if tuple(t.shape) != shp or t.dtype != dt:
            raise EBSDValueError(f"{name} has shape {tuple(t.shape)} / {t.dtype}, expected {shp} / {dt}")
    if measured is None:
        measured = torch.ones(shp, dtype=torch.bool, device=quaternions.device)
    if tuple(measured.shape) != shp or measured.dtype != torch.bool:
        raise EBSDValueError(f"measured has shape {tuple(measured.shape)} / {measured.dtype}, expected {shp} / bool")
    flat = quaternions.reshape(-1, 4)
    step = 1 << 22
    for i in range(0, flat.shape[0], step):
        blk = flat[i:i + step]
        if not torch.isfinite(blk).all():
            raise EBSDValueError("quaternions contain NaN or inf")
        if (blk.norm(dim=-1) - 1).abs().max() > 1e-3:
            raise EBSDValueError("quaternions are not unit")
    if not all(shp):
        return EBSDVolume(quaternions=quaternions, phases=phases, confidence=confidence,
                          image_quality=image_quality, spacing=spacing, origin=origin, phase_info=phase_info,
                          valid=valid, measured=measured, metadata=metadata)
    vol = EBSDVolume(quaternions=quaternions[:1, :1, :1].clone(), phases=phases[:1, :1, :1].clone(),
                     confidence=confidence[:1, :1, :1].clone(), image_quality=image_quality[:1, :1, :1].clone(),
                     spacing=spacing, origin=origin, phase_info=phase_info, valid=valid[:1, :1, :1].clone(),
                     metadata=metadata)
    vol.quaternions, vol.phases, vol.confidence, vol.image_quality, vol.valid, vol.measured = (
        quaternions, phases, confidence, image_quality, valid, measured)
    return vol


def check_z_spacing(z_spacing) -> float:
    """``z_spacing`` (micrometres) as a float; :class:`EBSDValueError` unless it is a positive finite number."""
    if isinstance(z_spacing, bool) or not (isinstance(z_spacing, (int, float)) and math.isfinite(z_spacing)
                                          and z_spacing > 0):
        raise EBSDValueError(f"z_spacing must be a positive number of micrometres, got {z_spacing!r}")
    return float(z_spacing)


# ---------------------------------------------------------------------------------------------- space groups
# International Tables space-group number ranges -> Laue class (Bruker ESPRIT stores "IT", the number).
_SG_LAUE = ((2, "-1"), (15, "2/m"), (74, "mmm"), (88, "4/m"), (142, "4/mmm"), (148, "-3"), (167, "-3m"),
            (176, "6/m"), (194, "6/mmm"), (206, "m-3"), (230, "m-3m"))


def laue_from_space_group(number: int) -> str | None:
    """Laue class of space group ``number`` (1..230), else ``None``."""
    if not 1 <= int(number) <= 230:
        return None
    for last, laue in _SG_LAUE:
        if number <= last:
            return laue
    return None  # pragma: no cover
