"""``reconstruct``: the DREAM.3D-style reconstruction chain in one call, and its ``.dream3d`` output.

Steps (names for ``steps=``; each either a name or ``(name, {options})``), run in the order given:

``mark_bad``            :func:`~ebsd.reconstruction.mark_bad` (``ci_min=0.1``, ``iq_min=None``)
``align``               :func:`~ebsd.reconstruction.align_sections` (``method``, ``max_shift``, ...)
``recover``             :func:`ebsd.recover_missing_slices` on ``missing`` slices (``"auto"``: those
                        :func:`ebsd.recovery.find_bad_slices` finds; a list of z; options ``model``, ``project``)
``neighbor_orientation_correlation`` (alias ``noc``)  :func:`~ebsd.reconstruction.neighbor_orientation_correlation`
``segment``             :func:`~ebsd.orientation.segment_grains` on the volume (``threshold_deg=5``)
``fill_bad_data``       :func:`~ebsd.reconstruction.fill_bad_data` (``min_defect_size=1000``)
``remove_small_grains`` (alias ``min_size``)  :func:`~ebsd.reconstruction.remove_small_grains` (``min_voxels=10``)
``statistics``          :func:`~ebsd.reconstruction.grain_statistics`

``fill_bad_data``, ``remove_small_grains`` and ``statistics`` segment first when no ``segment`` step ran.
The default chain is DREAM.3D's usual one: mark_bad, align, noc, segment, fill_bad_data,
remove_small_grains, statistics.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import EBSDValueError
from ..volume import EBSDVolume

__all__ = ["reconstruct", "ReconstructionResult", "write_reconstruction", "DEFAULT_STEPS", "STEPS"]

DEFAULT_STEPS = ("mark_bad", "align", "neighbor_orientation_correlation", "segment", "fill_bad_data",
                 "remove_small_grains", "statistics")
STEPS = ("mark_bad", "align", "recover", "neighbor_orientation_correlation", "segment", "fill_bad_data",
         "remove_small_grains", "statistics")
_ALIASES = {"noc": "neighbor_orientation_correlation", "min_size": "remove_small_grains", "clean": None,
            "stats": "statistics", "threshold": "mark_bad"}


@dataclass
class ReconstructionResult:
    """What :func:`reconstruct` produced.

    Attributes:
        volume: the reconstructed :class:`EBSDVolume`.
        labels: ``(Z, Y, X)`` int64 torch grain labels ``0..n_grains-1`` (``-1``: none), or None.
        n_grains: number of grains (0 without segmentation).
        statistics: :class:`~ebsd.reconstruction.GrainStatistics` or None.
        alignment: :class:`~ebsd.reconstruction.AlignmentResult` or None.
        log: one dict per step: ``step``, ``options``, ``seconds`` and what it reported.
    """

    volume: EBSDVolume
    labels: torch.Tensor | None = None
    n_grains: int = 0
    statistics: Any = None
    alignment: Any = None
    log: list[dict] = field(default_factory=list)

    def save(self, path, overwrite: bool = False, progress: bool = False) -> Path:
        """Write one ``.dream3d`` (see :func:`write_reconstruction`)."""
        return write_reconstruction(self, path, overwrite=overwrite, progress=progress)


def _normalise_steps(steps) -> list[tuple[str, dict]]:
    out = []
    for s in (DEFAULT_STEPS if steps is None else steps):
        if isinstance(s, str):
            name, opts = s, {}
        else:
            try:
                name, opts = s
                opts = dict(opts)
            except (TypeError, ValueError):
                raise EBSDValueError(f"a step is a name or (name, {{options}}), got {s!r}") from None
        name = _ALIASES.get(name, name) if name != "clean" else name
        if name == "clean":  # the clean-up group
            out += [("neighbor_orientation_correlation", {}), ("fill_bad_data", {}), ("remove_small_grains", {})]
            continue
        if name not in STEPS:
            raise EBSDValueError(f"unknown reconstruction step {name!r}; steps: {', '.join(STEPS)} "
                                 f"(aliases: {', '.join(_ALIASES)})")
        out.append((name, opts))
    return out


def reconstruct(vol: EBSDVolume, steps=None, progress: bool = True, device=None) -> ReconstructionResult:
    """Run the reconstruction chain on ``vol`` (see the module docstring for the steps).

    Args:
        vol: the raw volume (not modified).
        steps: list of step names or ``(name, {options})``; None: :data:`DEFAULT_STEPS`.
        progress: tqdm bars (one over the steps, and the steps' own).
        device: run on this device (``"cuda"``); the result stays there (``result.volume.to("cpu")``).

    Returns:
        :class:`ReconstructionResult`.
    """
    from tqdm.auto import tqdm

    from ..orientation import segment_grains
    from .align import align_sections
    from .cleanup import fill_bad_data, mark_bad, neighbor_orientation_correlation, remove_small_grains
    from .stats import grain_statistics

    if not isinstance(vol, EBSDVolume):
        raise EBSDValueError(f"reconstruct needs an EBSDVolume, got {type(vol).__name__}")
    plan = _normalise_steps(steps)
    cur = vol.to(device) if device is not None else vol.copy()
    res = ReconstructionResult(volume=cur)
    seg_threshold = 5.0

    def ensure_labels():
        if res.labels is None:
            res.labels, res.n_grains = segment_grains(res.volume, threshold_deg=seg_threshold)

    bar = tqdm(plan, desc="reconstruct", unit="step", disable=not progress)
    for name, opts in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        info: dict[str, Any] = {}
        if name == "mark_bad":
            res.volume = mark_bad(res.volume, **opts)
            info = dict(res.volume.metadata["mark_bad"])
            res.labels = None
        elif name == "align":
            a = align_sections(res.volume, progress=progress, **opts)
            res.alignment, res.volume = a, a.volume
            info = {"method": a.method, "shifts": a.shifts.tolist(), "damaged_sections": a.outliers,
                    "bridged": a.bridged, "max_abs_shift": int(np.abs(a.shifts).max()) if len(a.shifts) else 0}
            res.labels = None
        elif name == "recover":
            from ..recovery import find_bad_slices, recover_missing_slices

            o = dict(opts)
            missing = o.pop("missing", "auto")
            if missing == "auto" or missing is None:
                missing = find_bad_slices(res.volume)
            missing = sorted(int(z) for z in missing)
            if missing:  # recovered voxels come back valid but not measured (their values are inferred)
                res.volume = recover_missing_slices(res.volume, missing=missing, model=o.pop("model", "default"),
                                                    project=o.pop("project", True), progress=progress, **o)
            info = {"recovered_slices": missing}
            res.labels = None
        elif name == "neighbor_orientation_correlation":
            res.volume = neighbor_orientation_correlation(res.volume, progress=progress, **opts)
            info = dict(res.volume.metadata["neighbor_orientation_correlation"])
            res.labels = None
        elif name == "segment":
            seg_threshold = float(opts.get("threshold_deg", seg_threshold))
            res.labels, res.n_grains = segment_grains(res.volume, **opts)
            info = {"threshold_deg": seg_threshold, "n_grains": res.n_grains}
        elif name == "fill_bad_data":
            ensure_labels()
            res.volume, res.labels = fill_bad_data(res.volume, res.labels, **opts)
            info = dict(res.volume.metadata["fill_bad_data"])
        elif name == "remove_small_grains":
            ensure_labels()
            o = dict(opts)
            o.setdefault("min_voxels", 10)
            res.volume, res.labels, res.n_grains = remove_small_grains(res.volume, res.labels, progress=progress, **o)
            info = dict(res.volume.metadata["remove_small_grains"], n_grains=res.n_grains)
        elif name == "statistics":
            ensure_labels()
            res.statistics = grain_statistics(res.volume, res.labels)
            info = res.statistics.summary()
        res.log.append({"step": name, "options": {k: (v if isinstance(v, (int, float, str, bool, type(None), list))
                                                      else repr(v)) for k, v in opts.items()},
                        "seconds": round(time.perf_counter() - t0, 3), **info})
    res.volume.metadata["reconstruction"] = [{k: v for k, v in e.items() if k != "shifts"} for e in res.log]
    return res


def write_reconstruction(res: ReconstructionResult, path, overwrite: bool = False, progress: bool = False) -> Path:
    """Write a :class:`ReconstructionResult` as one DREAM.3D ``.dream3d`` file.

    The cell data (orientations, phases, CI, IQ, Mask) are written by :func:`ebsd.io.dream3d.write_dream3d`;
    then, where DREAM.3D puts them: ``CellData/FeatureIds`` (``(Z, Y, X, 1)`` int32, grain label + 1, 0 = no
    grain) and the ``CellFeatureData`` attribute matrix (type 7, ``G + 1`` tuples, tuple 0 unused):
    ``Active``, ``Phases``, ``AvgQuats`` (``x, y, z, w``), ``AvgEulerAngles``, ``NumElements``, ``Volumes``,
    ``EquivalentDiameters``, ``Centroids`` (``x, y, z``), ``AxisLengths``, ``AspectRatios``,
    ``NumNeighbors``, ``SurfaceFeatures``. The boundary table (pairs, shared faces, misorientation) and the
    step log go to ``/EBSDTK/Reconstruction``. Temporary file + rename; no overwrite without ``overwrite``.
    """
    from ..io._atomic import atomic_file
    from ..io.dream3d import write_dream3d, write_feature_arrays
    from ..orientation import segment_grains
    from .stats import grain_statistics

    path = Path(path)
    if path.suffix.lower() != ".dream3d":
        raise EBSDValueError(f"{path}: the reconstruction is written as a .dream3d file; use that suffix")
    vol = res.volume.to("cpu")
    labels = res.labels
    if labels is None:
        labels, _ = segment_grains(vol, threshold_deg=5.0)
    labels = labels.cpu() if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
    st = res.statistics if res.statistics is not None and res.statistics.n_grains == int(labels.max()) + 1 \
        else grain_statistics(vol, labels)
    G = st.n_grains

    def pad(a, comps, dtype):
        a = np.asarray(a, dtype=dtype).reshape(G, comps)
        return np.concatenate([np.zeros((1, comps), dtype), a], 0)

    from ..io._common import quat_to_euler_np

    gq = st.mean_quaternion
    feats = {
        "Active": pad(np.ones(G), 1, np.bool_),
        "Phases": pad(st.phase, 1, np.int32),
        "AvgQuats": pad(gq[:, [1, 2, 3, 0]], 4, np.float32),
        "AvgEulerAngles": pad(quat_to_euler_np(torch.from_numpy(np.where(np.abs(gq).sum(1, keepdims=True) > 0, gq,
                                                                        np.array([1, 0, 0, 0], np.float32)))), 3,
                              np.float32),
        "NumElements": pad(st.n_voxels, 1, np.int32),
        "Volumes": pad(st.volume, 1, np.float32),
        "EquivalentDiameters": pad(st.esd, 1, np.float32),
        "Centroids": pad(st.centroid[:, ::-1], 3, np.float32),
        "AxisLengths": pad(st.axis_lengths, 3, np.float32),
        "AspectRatios": pad(np.nan_to_num(st.aspect_ratios, nan=1.0), 2, np.float32),
        "NumNeighbors": pad(st.n_neighbours, 1, np.int32),
        "SurfaceFeatures": pad(st.touches_border, 1, np.bool_),
    }
    fid = (labels.numpy().astype(np.int64) + 1).astype(np.int32)
    extra = {
        "boundary_pairs": (st.pairs + 1).astype(np.int32),
        "boundary_shared_faces": st.shared_faces.astype(np.int32),
        "boundary_misorientation_deg": st.misorientation_deg.astype(np.float32),
        "log": json.dumps(res.log, default=lambda o: o.tolist() if hasattr(o, "tolist") else repr(o)),
        "summary": json.dumps(st.summary()),
    }
    if res.alignment is not None:
        extra["alignment_shifts"] = res.alignment.shifts.astype(np.int32)
        extra["alignment_scores"] = res.alignment.scores.astype(np.float64)
    with atomic_file(path, overwrite=overwrite) as tmp:
        write_dream3d(vol, tmp, overwrite=True, progress=progress)
        write_feature_arrays(tmp, fid, feats, extra=extra)
    return path
