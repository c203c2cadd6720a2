"""Batch processing of a directory of EBSD volumes on ``dask.distributed``: one task per volume.

>>> from ebsd import batch
>>> records = batch.run("recover", "scans/", "out/", workers=2)          # a LocalCluster of 2 workers
>>> records = batch.run("rpca", "scans/", "out/", client="tcp://host:8786", ranks=(5, 5, 5), tile=256)
>>> [r["status"] for r in records]                                        # "ok" / "failed" / "skipped"

Inputs (:func:`discover`)
    Every ``.dream3d``, ``.h5``/``.hdf5``/``.h5ebsd`` file and every folder that holds ``.ang`` files (one
    folder of slices = one volume) under ``INPUT_DIR``, recursively (``OUT_DIR`` is never searched), in
    sorted order. ``pattern`` (a glob such as ``"*.dream3d"`` or ``"run2/*"``) keeps the inputs whose path
    relative to ``INPUT_DIR`` matches it.

Tasks and outputs (one output per input, named after the input's path relative to ``INPUT_DIR``)
    ``recover``  :func:`ebsd.recovery.recover_missing_slices` (bad slices found by
                 :func:`ebsd.recovery.find_bad_slices` unless ``missing`` is given) -> ``NAME.recovered.dream3d``.
    ``rpca``     :func:`tensorrpca.rpca` of one scalar field of the volume (``field="image_quality"`` or
                 ``"confidence"``, ``(Z, Y, X)`` float32) -> ``NAME.rpca.h5`` with datasets ``low_rank`` and
                 ``sparse`` (``(Z, Y, X)`` float32, same units as the field) and the parameters as attributes.
                 Not-indexed and not-measured voxels are missing (``observed="valid"``), not corrupted: left
                 out of the fit, ``low_rank`` fills them in, ``sparse`` is 0 there.
    ``info``     ``ebsdtk info``'s facts (:func:`ebsd.commands.info.describe`) -> ``NAME.info.json``.
    ``reconstruct`` :func:`ebsd.reconstruction.reconstruct` (align, clean, segment, statistics; ``steps``
                 as it takes them) -> ``NAME.reconstructed.dream3d`` with the grain arrays.
    ``enhance``  not available in batch: the diffusion model works on 2-D ``.npy`` maps with a PL stack, not
                 on volumes; asking for it raises :class:`~ebsd.errors.EBSDValueError` before any work.

Manifest and resuming
    ``OUT_DIR/manifest.json`` holds ``{"task", "params", "records": [...]}``, one record per input:
    ``input``, ``output``, ``status`` (``ok``, ``failed``, ``skipped``; ``interrupted`` after Ctrl-C),
    ``attempted`` (whether this run did work on it), ``error``, ``seconds`` (``load``, ``compute``,
    ``save``, ``total``), ``metrics`` (recover: ``recovered_slices``, ``n_recovered``, ``tiles``; rpca:
    ``n_iter`` (largest over tiles), ``converged``, ``sparse_fraction``, ``tiles``; info: ``shape``,
    ``fraction_indexed``), ``input_hash``, ``params_hash``, ``worker``. It is rewritten (atomically) after
    every finished input. Beside each output, ``OUTPUT.done.json`` records the input's content hash (BLAKE2b
    of its bytes; for a folder, of its ``.ang`` files' names and bytes), the input's file sizes and mtimes,
    the hash of the task parameters, and the output's size and mtime. A later run skips an input when
    ``.done.json`` exists, the output is there unchanged, and both hashes match (files whose size and mtime are unchanged are not read again), so a second run
    does no work, and removing one output redoes only that one. Every output, sidecar and the manifest is
    written to a temporary file and renamed into place, so a crash or Ctrl-C loses no finished output.
    A broken input is recorded as ``failed`` with its error and never stops the others. When the error is
    the input's own fault (an :class:`~ebsd.errors.EBSDError` or :class:`tensorrpca.RPCAInputError`),
    ``OUTPUT.failed.json`` remembers it, and later runs report the same failure without trying again until
    the input or the parameters change (``retry_failed=True`` tries again anyway); other errors (out of
    memory, a lost worker) are retried on every run.

Tiling (``tile=N``, for volumes whose working memory is too large for one worker)
    The volume is read once; the x-y plane is split into ``ceil(Y / N) x ceil(X / N)`` near-equal *core*
    blocks (full z), each processed in a *window* = its core plus a halo, and only the core of each result
    is kept, so the working memory of the algorithm is that of one window.

    * RPCA: each window is an independent tensor-RPCA problem with the same ranks and parameters (its
      thresholds derived from its own data), ``halo`` voxels (default 8) of overlap on each side. A sub-block
      of a tensor of Tucker rank ``(r1, r2, r3)`` has Tucker rank at most ``(r1, r2, r3)``, so when the
      volume is exactly low rank plus sparse corruption every window is too, and the tiled result equals
      the untiled one (tested); on real data tiling means a *locally* low-rank model.
    * Recovery: :func:`~ebsd.recovery.recover_missing_slices` already runs the transformer in x-y tiles of
      the checkpoint's ``tile`` with ``overlap``, each keeping its interior. Batch windows are placed on that
      same grid (:func:`recovery_windows`), so every voxel of a core is predicted by the same network tile
      as in the untiled run and the raw prediction is identical; the halo (at least ``halo`` voxels, >= the
      projection radius) gives the projection step the neighbouring grains. Grain means are then taken over
      the part of each grain inside the window, which moves the projected orientations by a fraction of the
      orientation noise (tested). Bad slices are detected once on the whole volume.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import math
import os
import socket
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Sequence

from .errors import EBSDError, EBSDValueError

__all__ = ["run", "discover", "TASKS", "input_hash", "tile_windows", "recovery_windows", "tiled_rpca",
           "recover_tiled", "process_one", "output_path"]

TASKS = ("recover", "rpca", "info", "enhance", "reconstruct")
VOLUME_SUFFIXES = (".dream3d", ".h5", ".hdf5", ".h5ebsd", ".h5oina")
SLICE_SUFFIXES = (".ang", ".ctf")  # a folder of these is one volume
_OUT_SUFFIX = {"recover": ".recovered.dream3d", "rpca": ".rpca.h5", "info": ".info.json",
               "reconstruct": ".reconstructed.dream3d"}
_DEFAULTS = {
    "recover": {"missing": None, "model": "default", "project": True, "batch_size": 16, "tile": None, "halo": 8},
    "rpca": {"field": "image_quality", "ranks": (5, 5, 5), "max_iter": 200, "tol": 1e-7, "sparsity": None,
             "step": None, "decay": None, "threshold": "hard", "tile": None, "halo": 8, "observed": "valid"},
    "info": {},
    # the steps of ebsd.reconstruction.reconstruct (None: its default chain), as JSON-able lists
    "reconstruct": {"steps": None},
}
_ENHANCE_MSG = ("batch 'enhance' is not available: the diffusion model (ebsdtk enhance) works on 2-D .npy maps "
                "(low-resolution EBSD quaternions + a PL stack), not on EBSD volumes; run `ebsdtk enhance` "
                "per map, or use the batch tasks recover, rpca or info")


# ------------------------------------------------------------------------------------------- small helpers
def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, Path):
        return str(v)
    return repr(v)


# ------------------------------------------------------------------------------------------------ discovery
def discover(input_dir, pattern: str | None = None, exclude: Sequence = ()) -> list[Path]:
    """The volumes under ``input_dir``, sorted: ``.dream3d``/``.h5``/``.hdf5``/``.h5ebsd``/``.h5oina`` files,
    and folders holding ``.ang`` or ``.ctf`` files (each such folder is one volume; ``input_dir`` itself when
    its slices lie directly in it). ``pattern`` is a glob matched against the path relative to ``input_dir``
    (and against the bare name); folders in ``exclude`` (e.g. the output folder) are not searched.

    Raises:
        EBSDValueError: ``input_dir`` is not a folder.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise EBSDValueError(f"{root}: not a folder; give the folder that holds the volumes")
    skip = {Path(e).resolve() for e in exclude}
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if (d / n).resolve() not in skip and not n.startswith("."))
        if any(f.lower().endswith(SLICE_SUFFIXES) for f in filenames):
            found.append(d)
        found.extend(d / f for f in sorted(filenames)
                     if f.lower().endswith(VOLUME_SUFFIXES) and not f.startswith("."))
    if pattern:
        found = [p for p in found if fnmatch.fnmatch(_rel(p, root), pattern) or fnmatch.fnmatch(p.name, pattern)]
    return sorted(found, key=lambda p: _rel(p, root))


def _rel(p: Path, root: Path) -> str:
    r = p.resolve().relative_to(root.resolve()).as_posix() if p.resolve() != root.resolve() else "."
    return r


def _input_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(f for f in path.iterdir() if f.is_file() and f.name.lower().endswith(SLICE_SUFFIXES))
    return [path]


def input_stat(path) -> list[list]:
    """``[[name, size, mtime_ns], ...]`` of the file(s) that make up an input (cheap change detection)."""
    path = Path(path)
    out = []
    for f in _input_files(path):
        st = f.stat()
        out.append([f.name, st.st_size, st.st_mtime_ns])
    return out


def input_hash(path, chunk: int = 1 << 22) -> str:
    """BLAKE2b (hex) of an input's content: the file's bytes, or for a folder of ``.ang`` slices the sorted
    names and bytes of its ``.ang`` files. Raises ``OSError`` when a file cannot be read."""
    path = Path(path)
    h = hashlib.blake2b(digest_size=20)
    for f in _input_files(path):
        if path.is_dir():
            h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while True:
                b = fh.read(chunk)
                if not b:
                    break
                h.update(b)
        h.update(b"\1")
    return h.hexdigest()


def output_path(task: str, inp, input_dir, out_dir, taken: set | None = None) -> Path:
    """``OUT_DIR/<relative path with / -> __, suffix dropped><task suffix>``; when two inputs would give the
    same name (``a.dream3d`` and ``a.h5``) the input's suffix is kept (``a_h5``)."""
    rel = _rel(Path(inp), Path(input_dir))
    if rel == ".":
        rel = Path(input_dir).resolve().name
    p = Path(rel)
    stem = (p.with_suffix("") if p.suffix.lower() in VOLUME_SUFFIXES else p).as_posix().replace("/", "__")
    if taken is not None:
        if stem in taken:
            stem = p.as_posix().replace("/", "__").replace(".", "_")
        taken.add(stem)
    return Path(out_dir) / (stem + _OUT_SUFFIX[task])


# ---------------------------------------------------------------------------------------------- parameters
def _model_fingerprint(model) -> Any:
    """What identifies a recovery model in the parameter hash: a file's path, size and mtime, or a hash of
    an in-memory model's weights."""
    import torch

    if isinstance(model, torch.nn.Module):
        h = hashlib.blake2b(digest_size=16)
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
        h.update(json.dumps(getattr(model, "inference_settings", {}), sort_keys=True).encode())
        return {"in_memory_model": h.hexdigest()}
    from .recovery import DEFAULT_CHECKPOINT

    path = Path(os.environ.get("EBSDTK_RECOVERY_MODEL", DEFAULT_CHECKPOINT)) if model in (None, "default") \
        else Path(model)
    files = [path / "model.safetensors", path / "config.json"] if path.is_dir() else [path, path.parent / "config.json"]
    return {"path": str(path.resolve()),
            "files": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] if f.is_file() else [f.name, None]
                      for f in files]}


def _normalise_params(task: str, params: dict) -> dict:
    if task == "enhance":
        raise EBSDValueError(_ENHANCE_MSG)
    if task not in _DEFAULTS:
        raise EBSDValueError(f"unknown batch task {task!r}; choose one of {', '.join(TASKS)}")
    unknown = set(params) - set(_DEFAULTS[task])
    extra_ok = {"overlap", "context", "threshold_deg", "radius", "spatial_weight", "z_weight"} if task == "recover" else set()
    if unknown - extra_ok:
        raise EBSDValueError(f"batch {task}: unknown parameters {sorted(unknown - extra_ok)}; "
                             f"known: {sorted(set(_DEFAULTS[task]) | extra_ok)}")
    p = dict(_DEFAULTS[task], **params)
    if p.get("tile") is not None:
        p["tile"] = int(p["tile"])
        if p["tile"] < 1:
            raise EBSDValueError(f"tile must be a positive number of voxels, got {p['tile']}")
    if "halo" in p and int(p["halo"]) < 0:
        raise EBSDValueError(f"halo must be >= 0 voxels, got {p['halo']}")
    if task == "rpca":
        r = p["ranks"]
        p["ranks"] = [int(r)] * 3 if isinstance(r, int) else [int(x) for x in r]
        if len(p["ranks"]) != 3:
            raise EBSDValueError(f"rpca ranks: give 3 Tucker ranks (z, y, x), got {p['ranks']}")
        if p["field"] not in ("image_quality", "confidence"):
            raise EBSDValueError(f"rpca field must be 'image_quality' or 'confidence', got {p['field']!r}")
        if p["observed"] not in ("valid", "measured", "all"):
            raise EBSDValueError(f"rpca observed must be 'valid' (not-indexed and not-measured voxels are missing), "
                                 f"'measured' (only not-measured ones are) or 'all', got {p['observed']!r}")
    if task == "recover" and p["missing"] is not None:
        p["missing"] = sorted(int(m) for m in p["missing"])
    return p


def _params_hash(task: str, params: dict) -> str:
    key = {k: v for k, v in params.items() if k not in ("batch_size",)}
    if task == "recover":
        key["model"] = _model_fingerprint(params["model"])
    blob = json.dumps({"task": task, "params": _jsonable(key)}, sort_keys=True)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


# -------------------------------------------------------------------------------------------------- tiling
def _split(n: int, tile: int) -> list[tuple[int, int]]:
    """``[0, n)`` cut into ``ceil(n / tile)`` near-equal consecutive blocks."""
    m = max(1, math.ceil(n / tile))
    b = [round(i * n / m) for i in range(m + 1)]
    return [(b[i], b[i + 1]) for i in range(m) if b[i + 1] > b[i]]


def tile_windows(n: int, tile: int | None, halo: int) -> list[tuple[int, int, int, int]]:
    """One axis of length ``n`` cut into near-equal cores of at most ``tile`` voxels, each with a window
    reaching ``halo`` voxels beyond it (clipped to the axis): ``[(c0, c1, a, b), ...]``, core ``[c0, c1)``
    inside window ``[a, b)``. ``tile=None`` gives one core, the whole axis."""
    if tile is None or tile >= n:
        return [(0, n, 0, n)]
    return [(c0, c1, max(0, c0 - halo), min(n, c1 + halo)) for c0, c1 in _split(n, tile)]


def recovery_windows(n: int, tile: int | None, halo: int, net_tile: int, net_overlap: int
                     ) -> list[tuple[int, int, int, int]]:
    """Like :func:`tile_windows`, but each window ``[a, b)`` sits on the grid of network tiles that
    :func:`ebsd.recovery.api.predict_slices` uses on the whole axis (size ``T = net_tile``, step
    ``s = T - net_overlap``, starts ``0, s, 2s, ...`` and ``n - T``; each tile keeps its interior, i.e. loses
    ``net_overlap // 2`` voxels on the sides that have a neighbour, and later tiles overwrite earlier ones).

    Conditions met for every core ``[c0, c1)``: ``a`` is a multiple of ``s``; ``b = n``, or ``b - a - T`` is a
    multiple of ``s`` (so the window's tiles are exactly the whole-axis tiles inside it); the core lies at
    least ``max(halo, net_overlap - net_overlap // 2)`` voxels inside the window on sides that are not volume
    edges (so no tile outside the window, nor the window's own edge tiles' extra margin, writes into the
    core), and a core ending beyond ``n - T + net_overlap // 2`` gets ``b = n`` (the whole-axis last tile
    ``n - T`` owns those voxels). Hence each core voxel is predicted by the same network tile as untiled.
    """
    T, ov = int(net_tile), int(net_overlap)
    if tile is None or n <= T or tile >= n:  # one network tile spans the axis, or no tiling asked
        return [(0, n, 0, n)]
    s = max(1, T - ov)
    m = ov // 2
    pad = max(int(halo), ov - m)
    last_regular = s * ((n - T) // s)  # the largest multiple of s that is a valid start
    out = []
    for c0, c1 in _split(n, tile):
        a = 0 if c0 == 0 else max(0, s * math.floor((c0 - pad) / s))
        a = min(a, last_regular)
        if c1 >= n or c1 > n - T + m:
            b = n
        else:
            b = a + T + s * max(0, math.ceil((c1 + pad - a - T) / s))
            if b >= n:
                b = n
        out.append((c0, c1, a, b))
    return out


def tiled_rpca(Y, ranks, tile: int | None = None, halo: int = 8, progress: bool = False, mask=None, **kw):
    """Tensor RPCA of ``Y (Z, Y, X)`` in x-y tiles: each window (core + ``halo``) is an independent
    :func:`tensorrpca.rpca` problem with ``ranks`` and ``**kw``; the core of each window's low-rank and
    sparse parts is written into the result. ``tile=None``: one untiled problem.

    ``mask``: optional boolean ``(Z, Y, X)`` array, True where the voxel's value is observed; the others (not
    indexed, not measured) are missing, not corrupted (``rpca(..., mask=)``): ``low_rank`` fills them in and
    ``sparse`` is 0 there. A window with no observed voxel gets ``low_rank`` NaN (nothing to fit) and makes
    ``converged`` False; a mask with no observed voxel at all raises :class:`~ebsd.errors.EBSDValueError`.

    Returns:
        ``(low_rank, sparse, info)``: numpy float arrays of ``Y``'s shape and dtype, and a dict with
        ``n_iter`` (list per window), ``converged`` (all windows), ``tiles`` (number of windows),
        ``empty_tiles`` (windows without an observed voxel).
    """
    import numpy as np

    from tensorrpca import rpca

    Y = np.asarray(Y)
    if Y.ndim != 3:
        raise EBSDValueError(f"tiled_rpca needs a (Z, Y, X) array, got shape {Y.shape}")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != Y.shape:
            raise EBSDValueError(f"tiled_rpca mask has shape {mask.shape}, the field {Y.shape}")
        if not mask.any():
            raise EBSDValueError("tiled_rpca: the mask marks no voxel as observed, so there is nothing to fit; "
                                 "check the mask (or use observed='all' in batch rpca)")
    low = np.empty_like(Y)
    sparse = np.empty_like(Y)
    empty = 0
    wy = tile_windows(Y.shape[1], tile, halo)
    wx = tile_windows(Y.shape[2], tile, halo)
    n_iter, conv = [], True
    bar = None
    if progress and len(wy) * len(wx) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(wy) * len(wx), desc="rpca tiles", unit="tile", leave=False)
    try:
        for c0, c1, a, b in wy:
            for d0, d1, e, f in wx:
                m = None if mask is None else np.ascontiguousarray(mask[:, a:b, e:f])
                if m is not None and not m.any():
                    low[:, c0:c1, d0:d1] = np.nan
                    sparse[:, c0:c1, d0:d1] = 0
                    empty += 1
                    conv = False  # nothing was fitted there: the NaN window is not a converged answer
                    if bar is not None:
                        bar.update(1)
                    continue
                res = rpca(np.ascontiguousarray(Y[:, a:b, e:f]), ranks, mask=m, **kw)
                low[:, c0:c1, d0:d1] = res.low_rank[:, c0 - a:c1 - a, d0 - e:d1 - e]
                sparse[:, c0:c1, d0:d1] = res.sparse[:, c0 - a:c1 - a, d0 - e:d1 - e]
                n_iter.append(int(res.n_iter))
                conv = conv and bool(res.converged)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return low, sparse, {"n_iter": n_iter, "converged": conv, "tiles": len(wy) * len(wx), "empty_tiles": empty}


def _crop(vol, ys: slice, xs: slice):
    """An x-y window of ``vol`` (tensors are views; the origin moves to the window's corner)."""
    return dataclasses.replace(
        vol, quaternions=vol.quaternions[:, ys, xs], phases=vol.phases[:, ys, xs],
        confidence=vol.confidence[:, ys, xs], image_quality=vol.image_quality[:, ys, xs],
        valid=vol.valid[:, ys, xs], measured=vol.measured[:, ys, xs],
        origin=(vol.origin[0], vol.origin[1] + ys.start * vol.spacing[1], vol.origin[2] + xs.start * vol.spacing[2]),
    )


def _resolve_net(model, device):
    """``(net, settings)``: the recovery model (loaded once) and its inference settings."""
    from .recovery import SliceRecoveryTransformer, load_model
    from .recovery.api import DEFAULT_CHECKPOINT, DEFAULT_INFERENCE

    if isinstance(model, SliceRecoveryTransformer):
        net = model
    else:
        path = Path(os.environ.get("EBSDTK_RECOVERY_MODEL", DEFAULT_CHECKPOINT)) if model in (None, "default") \
            else Path(model)
        net = load_model(path, device=device)
    return net.eval(), dict(DEFAULT_INFERENCE, **getattr(net, "inference_settings", {}))


def recover_tiled(vol, missing=None, model="default", tile: int | None = None, halo: int = 8,
                  project: bool = True, device=None, batch_size: int = 16, progress: bool = False,
                  method: str = "auto", **settings):
    """:func:`ebsd.recovery.recover_missing_slices` in x-y windows of at most ``tile`` voxels per core
    (see :func:`recovery_windows`); ``tile=None`` runs it once on the whole volume. With ``method="auto"``
    and windows, the self-check runs once, on the central window, and its choice (without test-time
    adaptation) is used in every window, so all windows use one method.

    Args:
        vol: :class:`~ebsd.volume.EBSDVolume` ``(Z, Y, X)``.
        missing: slice indices, or None: :func:`~ebsd.recovery.find_bad_slices` on the whole volume.
        model, project, device, batch_size, **settings: as for ``recover_missing_slices``.
        tile: core size in voxels (y and x). halo: least context beyond a core, voxels (>= projection radius).
        progress: tqdm bar over windows.

    Returns:
        ``(new_volume, n_windows)``; ``new_volume.metadata["recovered_slices"]`` lists the recovered slices.
    """
    from .recovery import find_bad_slices, recover_missing_slices

    if missing is None:
        missing = find_bad_slices(vol)
    net, cfg = _resolve_net(model, device)
    cfg = dict(cfg, **settings)
    kw = dict(project=project, device=device, batch_size=batch_size, progress=False, **settings)
    if tile is None or not missing:
        return recover_missing_slices(vol, list(missing), model=net, method=method, **kw), 1
    T = min(int(cfg["tile"]), net.config.max_xy)
    ov = int(cfg["overlap"])
    halo = max(int(halo), int(cfg["radius"]) + 1)
    Z, Y, X = vol.shape
    wy = recovery_windows(Y, tile, halo, min(T, Y), ov)
    wx = recovery_windows(X, tile, halo, min(T, X), ov)
    check = None
    if method == "auto":
        from .recovery.api import method_of

        (_, _, a, b), (_, _, e, f) = wy[len(wy) // 2], wx[len(wx) // 2]
        _, det = recover_missing_slices(_crop(vol, slice(a, b), slice(e, f)), list(missing), model=net,
                                        method="auto", return_details=True, adapt_seconds=0.0, **kw)
        check = det["self_check"]
        method = method_of(det["method"])
        kw.update((check or {}).get("settings") or {})
    out = vol.copy()
    used = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(wy) * len(wx), desc="recovery windows", unit="window", leave=False)
    try:
        for c0, c1, a, b in wy:
            for d0, d1, e, f in wx:
                part = recover_missing_slices(_crop(vol, slice(a, b), slice(e, f)), list(missing), model=net,
                                              method=method, self_check=0, **kw)
                cy, cx = slice(c0 - a, c1 - a), slice(d0 - e, d1 - e)
                for name in ("quaternions", "phases", "confidence", "image_quality", "valid", "measured"):
                    getattr(out, name)[:, c0:c1, d0:d1] = getattr(part, name)[:, cy, cx].to(getattr(out, name).device)
                used = part.metadata.get("recovery_method")
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    out.metadata["recovered_slices"] = sorted(set(out.metadata.get("recovered_slices", [])) | set(missing))
    out.metadata["recovery_method"] = used
    out.metadata["recovery_tiles"] = {"tile": tile, "windows": len(wy) * len(wx)}
    if check is not None:
        out.metadata["recovery_self_check"] = {k: check[k] for k in ("method", "mean_deg", "median_deg", "within5",
                                                                     "n_sections")} | {"window": "central"}
    return out, len(wy) * len(wx)


# ------------------------------------------------------------------------------------------ one input (worker)
def _write_rpca_h5(path: Path, low, sparse, attrs: dict) -> None:
    import h5py
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as g:
            g.create_dataset("low_rank", data=low, compression="gzip")
            g.create_dataset("sparse", data=sparse, compression="gzip")
            for k, v in attrs.items():
                g.attrs[k] = np.asarray(v) if isinstance(v, (list, tuple)) else ("" if v is None else v)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _deterministic(exc: BaseException) -> bool:
    """Errors that are the input's own fault (same input + parameters -> same error)."""
    try:
        from tensorrpca.errors import RPCAInputError
    except Exception:  # pragma: no cover
        RPCAInputError = ()  # noqa: N806
    return isinstance(exc, (EBSDError, RPCAInputError))


def process_one(task: str, inp: str, output: str, params: dict, params_hash: str,
                expected_hash: str | None = None, device=None, torch_threads: int | None = None) -> dict:
    """Run ``task`` on one input and write its output and ``OUTPUT.done.json`` (this is the dask task).

    Never raises for a bad input: the error goes into the returned record (``status="failed"``). When
    ``expected_hash`` equals the input's content hash and the output is in place, nothing is recomputed
    (``status="skipped"``: the input was touched but not changed).
    """
    import torch

    t_start = time.perf_counter()
    rec: dict[str, Any] = {"input": str(inp), "output": str(output), "status": "failed", "attempted": True,
                           "error": None, "seconds": {}, "metrics": {}, "params_hash": params_hash,
                           "worker": socket.gethostname() + f":{os.getpid()}"}
    out = Path(output)
    done, failed = Path(str(out) + ".done.json"), Path(str(out) + ".failed.json")
    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        return _process(task, inp, out, done, failed, params, expected_hash, device, rec, t_start, caught)


def _process(task, inp, out, done, failed, params, expected_hash, device, rec, t_start, caught) -> dict:
    try:
        stat = input_stat(inp)
        h = input_hash(inp)
        rec["input_hash"] = h
        old = _read_json(done) or {}
        if expected_hash is not None and h == expected_hash and _output_stat(out) == old.get("output_stat"):
            old.update(input_stat=stat)
            _atomic_write_text(done, json.dumps(old, indent=1))
            rec.update(status="skipped", attempted=False, metrics=old.get("metrics", {}))
            return rec
        from .io import load_volume, save_volume

        t0 = time.perf_counter()
        vol = load_volume(inp)
        rec["seconds"]["load"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if task == "recover":
            p = params
            extra = {k: p[k] for k in ("overlap", "context", "threshold_deg", "radius", "spatial_weight", "z_weight")
                     if k in p}
            new, n_win = recover_tiled(vol, p["missing"], model=p["model"], tile=p["tile"], halo=p["halo"],
                                       project=p["project"], device=device, batch_size=p["batch_size"], **extra)
            new = new.to("cpu")
            rec["seconds"]["compute"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            save_volume(new, out, overwrite=True)
            rs = list(new.metadata.get("recovered_slices", []))
            rec["metrics"] = {"recovered_slices": rs, "n_recovered": len(rs), "tiles": n_win,
                              "shape": list(vol.shape)}
        elif task == "rpca":
            p = params
            Yf = getattr(vol, p["field"]).numpy()
            # "valid": indexed AND measured (slice recovery fills voxels that are valid but not measured, with
            # estimated values: those are missing here too, as the docstring says)
            observed = {"valid": vol.valid & vol.measured, "measured": vol.measured, "all": None}[p["observed"]]
            observed = None if observed is None else observed.cpu().numpy().astype(bool)
            low, sparse, info = tiled_rpca(Yf, p["ranks"], tile=p["tile"], halo=p["halo"], sparsity=p["sparsity"],
                                           max_iter=p["max_iter"], tol=p["tol"], step=p["step"], decay=p["decay"],
                                           device=device, threshold=p["threshold"], mask=observed)
            rec["seconds"]["compute"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            _write_rpca_h5(out, low, sparse, {
                "source": str(inp), "field": p["field"], "ranks": p["ranks"], "n_iter": info["n_iter"],
                "converged": info["converged"], "tile": p["tile"] or 0, "halo": p["halo"],
                "threshold": p["threshold"], "max_iter": p["max_iter"], "tol": p["tol"], "observed": p["observed"],
                "n_missing": 0 if observed is None else int(observed.size - observed.sum())})
            sp = sparse != 0 if observed is None else (sparse != 0)[observed]
            rec["metrics"] = {"n_iter": max(info["n_iter"], default=0), "n_iter_per_tile": info["n_iter"],
                              "converged": info["converged"], "tiles": info["tiles"],
                              # over the observed voxels (as `ebsdtk rpca` reports it): missing ones are 0 by design
                              "sparse_fraction": float(sp.mean()) if sp.size else 0.0, "shape": list(vol.shape),
                              "n_missing": 0 if observed is None else int(observed.size - observed.sum()),
                              "empty_tiles": info["empty_tiles"]}
        elif task == "reconstruct":
            from .reconstruction import reconstruct

            res = reconstruct(vol, steps=params["steps"], progress=False, device=device)
            rec["seconds"]["compute"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            res.save(out, overwrite=True)
            s = res.statistics.summary() if res.statistics is not None else {}
            a = res.alignment
            rec["metrics"] = {"n_grains": res.n_grains, "mean_esd_um": s.get("mean_esd_um"),
                              "damaged_sections": a.outliers if a is not None else [],
                              "max_abs_shift": int(abs(a.shifts).max()) if a is not None and len(a.shifts) else 0,
                              "shape": list(vol.shape)}
        elif task == "info":
            from .commands.info import describe

            d = describe(vol)
            rec["seconds"]["compute"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            _atomic_write_text(out, json.dumps(d, indent=1))
            rec["metrics"] = {"shape": d["shape"], "fraction_indexed": d["fraction_indexed"]}
        else:
            raise EBSDValueError(_ENHANCE_MSG if task == "enhance" else f"unknown batch task {task!r}")
        rec["seconds"]["save"] = time.perf_counter() - t0
        rec["status"] = "ok"
        rec["seconds"]["total"] = time.perf_counter() - t_start
        _atomic_write_text(done, json.dumps({
            "input": str(inp), "input_hash": h, "input_stat": stat, "params_hash": rec["params_hash"], "task": task,
            "output_stat": _output_stat(out),
            "metrics": rec["metrics"], "seconds": rec["seconds"],
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1))
        if failed.exists():
            failed.unlink()
    except Exception as exc:  # a broken input must not stop the others
        rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["seconds"]["total"] = time.perf_counter() - t_start
        if done.exists() and rec.get("input_hash") != (_read_json(done) or {}).get("input_hash"):
            done.unlink()  # the output there is from an older version of this input: no longer up to date
        if _deterministic(exc) and rec.get("input_hash"):
            try:
                _atomic_write_text(failed, json.dumps({
                    "input": str(inp), "input_hash": rec["input_hash"], "input_stat": input_stat(inp),
                    "params_hash": rec["params_hash"], "error": rec["error"]}, indent=1))
            except OSError:
                pass
        else:
            rec["traceback"] = traceback.format_exc(limit=8)
    rec["seconds"].setdefault("total", time.perf_counter() - t_start)
    if caught:
        rec["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})[:10]
    return rec


# --------------------------------------------------------------------------------------------- the driver
def _output_stat(out: Path) -> list | None:
    """``[size, mtime_ns]`` of an output file (None when absent): a truncated or replaced output is redone."""
    try:
        st = out.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _plan(inp: Path, out: Path, params_hash: str, retry_failed: bool) -> tuple[str, dict | None, str | None]:
    """``("skip", sidecar, None)``, ``("failed", sidecar, None)`` or ``("run", None, expected_hash)``."""
    done = _read_json(Path(str(out) + ".done.json"))
    try:
        stat = input_stat(inp)
    except OSError:
        return "run", None, None
    if done and _output_stat(out) == done.get("output_stat") and done.get("params_hash") == params_hash:
        if done.get("input_stat") == stat:
            return "skip", done, None
        return "run", None, done.get("input_hash")  # the worker re-hashes; unchanged content -> skipped
    if not retry_failed:
        bad = _read_json(Path(str(out) + ".failed.json"))
        if bad and bad.get("params_hash") == params_hash and bad.get("input_stat") == stat:
            return "failed", bad, None
    return "run", None, None


def _is_main_guard(test) -> bool:
    """``__name__ == "__main__"`` (either order)."""
    import ast

    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return (any(isinstance(x, ast.Name) and x.id == "__name__" for x in sides)
            and any(isinstance(x, ast.Constant) and x.value == "__main__" for x in sides))


def unguarded_main_script() -> str | None:
    """The path of the ``__main__`` script when the current call comes from its top-level code outside an
    ``if __name__ == "__main__":`` block, else None (a call from such a block, from an interactive session,
    ``python -c`` or a notebook, or when the script's source cannot be read).

    Worker *processes* are started with ``spawn``, which runs the main script again in every worker: without
    the guard the script would start a cluster inside each worker ("Nanny failed to start")."""
    import ast
    import sys

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path:
        return None
    spec_name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    if spec_name.endswith(".__main__"):  # `python -m package`: spawn does not run a package's __main__ again
        return None
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if frame is None:
        return None
    line = frame.f_lineno
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_main_guard(node.test) and node.lineno <= line <= node.end_lineno:
            return None
    return str(path)


def _make_client(client, workers, processes, threads_per_worker):
    """``(client, cluster_we_own)``. Called from the top level of a script without the
    ``if __name__ == "__main__":`` guard, a local cluster runs its workers as threads (with a warning),
    since worker processes would re-run the script."""
    from distributed import Client, LocalCluster

    if client is None:
        import logging

        script = unguarded_main_script() if processes else None
        if script is not None:
            warnings.warn(
                f"ebsd.batch.run is called from the top level of {script} without `if __name__ == \"__main__\":`; "
                "worker processes would run the script again, so the local workers run as threads of this "
                "process instead. Put the call under that guard to get worker processes (or pass "
                "processes=False to say you want threads).", stacklevel=3)
            processes = False
        try:
            cluster = LocalCluster(n_workers=int(workers or 1), threads_per_worker=int(threads_per_worker or 1),
                                   processes=processes, dashboard_address=None, silence_logs=logging.ERROR)
        except Exception as exc:
            if not processes:
                raise
            raise EBSDError(
                f"the local dask workers failed to start ({type(exc).__name__}: {exc}). In a script, call "
                "ebsd.batch.run under `if __name__ == \"__main__\":` (worker processes run the script again), or "
                "pass processes=False for thread workers") from exc
        return Client(cluster), cluster
    if isinstance(client, str):
        return Client(client), None
    return client, None


def run(task: str, inputs, out_dir, client=None, workers: int | None = None, pattern: str | None = None,
        device=None, progress: bool = True, *, processes: bool = True, retry_failed: bool = False,
        torch_threads: int | None = None, **params) -> list[dict]:
    """Run ``task`` on every volume of ``inputs`` with dask.distributed; write one output per input and
    ``out_dir/manifest.json``; return the manifest's records (in input order).

    Args:
        task: ``"recover"``, ``"rpca"``, ``"info"`` (``"enhance"`` raises: see the module docstring).
        inputs: a folder (searched by :func:`discover`), or a list of volume paths (files or ``.ang`` folders).
        out_dir: output folder (created).
        client: None (a ``LocalCluster`` of ``workers`` workers, closed at the end), a
            ``distributed.Client``, or a scheduler address such as ``"tcp://host:8786"``.
        workers: LocalCluster workers (default 1; one per core is the fastest layout for many volumes).
        pattern: glob filter of :func:`discover`.
        device: ``"cuda"``/``"cpu"``/None, passed to the recovery or RPCA of each volume.
        progress: tqdm bar over finished inputs.
        processes: LocalCluster workers as processes (True) or threads of this process (False, lighter).
            Worker processes run the calling script again (``spawn``): in a script, call ``run`` under
            ``if __name__ == "__main__":``. Called from a script's top level without that guard, the
            workers run as threads, with a warning saying so.
        retry_failed: try inputs again that failed before with an error of their own (see module docstring).
        torch_threads: torch threads per task (default: 1 on a LocalCluster, unset on a given cluster).
            On 2 busy cores, 1 worker x 2 threads ran 2.5x (recovery) to 16x (RPCA) slower than 1 x 1.
        **params: task parameters. recover: ``missing`` (list or None = detect), ``model``, ``project``,
            ``batch_size``, ``tile``, ``halo`` and inference settings (``overlap``, ``radius`` ...).
            rpca: ``field``, ``ranks``, ``max_iter``, ``tol``, ``sparsity``, ``step``, ``decay``,
            ``threshold``, ``tile``, ``halo``, ``observed`` (``"valid"``: default, not-indexed and
            not-measured voxels are missing, left out of the fit; ``"measured"``; ``"all"``).

    Returns:
        ``list[dict]``: one record per input (fields in the module docstring).

    Raises:
        EBSDValueError: unknown task or parameters, ``enhance``, or ``inputs`` is not a folder or a list.
        KeyboardInterrupt: after writing the manifest (finished outputs are kept; unfinished ones are
            recorded as ``interrupted``).
    """
    params = _normalise_params(task, params)
    out_dir = Path(out_dir)
    if isinstance(inputs, (str, os.PathLike)):
        root = Path(inputs)
        paths = discover(root, pattern, exclude=[out_dir])
    else:
        paths = [Path(p) for p in inputs]
        if pattern:
            paths = [p for p in paths if fnmatch.fnmatch(p.name, pattern)]
        root = Path(os.path.commonpath([str(p.resolve().parent) for p in paths])) if paths else Path(".")
    out_dir.mkdir(parents=True, exist_ok=True)
    phash = _params_hash(task, params)
    taken: set = set()
    outs = [output_path(task, p, root, out_dir, taken) for p in paths]
    records: list[dict | None] = [None] * len(paths)
    todo: list[tuple[int, str | None]] = []
    for i, (p, o) in enumerate(zip(paths, outs)):
        what, side, expected = _plan(p, o, phash, retry_failed)
        if what == "skip":
            records[i] = {"input": str(p), "output": str(o), "status": "skipped", "attempted": False, "error": None,
                          "seconds": {}, "metrics": side.get("metrics", {}), "input_hash": side.get("input_hash"),
                          "params_hash": phash}
        elif what == "failed":
            records[i] = {"input": str(p), "output": None, "status": "failed", "attempted": False,
                          "error": side.get("error"), "seconds": {}, "metrics": {},
                          "input_hash": side.get("input_hash"), "params_hash": phash}
        else:
            todo.append((i, expected))
    meta = {"task": task, "params": _jsonable(params), "params_hash": phash,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    manifest = out_dir / "manifest.json"

    def write_manifest():
        recs = [r if r is not None else {"input": str(paths[i]), "output": str(outs[i]), "status": "interrupted",
                                          "attempted": False, "error": None, "seconds": {}, "metrics": {}}
                for i, r in enumerate(records)]
        _atomic_write_text(manifest, json.dumps(
            dict(meta, updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), records=recs), indent=1))
        return recs

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(paths), initial=len(paths) - len(todo), desc=f"batch {task}", unit="volume")
    if not todo:
        if bar is not None:
            bar.close()
        return write_manifest()
    n_workers = int(workers or 1)
    cl, cluster = _make_client(client, n_workers, processes, 1)
    if torch_threads is None and cluster is not None:
        torch_threads = 1  # parallelism across volumes; intra-op threads stall on busy cores (benchmarks/batch.py)
    try:
        from distributed import as_completed

        futs = {}
        for i, expected in todo:
            f = cl.submit(process_one, task, str(paths[i]), str(outs[i]), params, phash, expected, device,
                          torch_threads, pure=False, key=f"ebsdtk-batch-{task}-{i}-{os.urandom(4).hex()}")
            futs[f] = i
        try:
            for fut in as_completed(list(futs)):
                i = futs[fut]
                try:
                    rec = fut.result()
                except Exception as exc:  # the worker died, or the task could not run at all
                    msg = f"{type(exc).__name__}: {exc}"
                    if type(exc).__name__ == "KilledWorker":
                        msg += " (the worker died, often from running out of memory: try tile=N / --tile N, or fewer workers)"
                    rec = {"input": str(paths[i]), "output": str(outs[i]), "status": "failed", "attempted": True,
                           "error": msg, "seconds": {}, "metrics": {}, "params_hash": phash}
                records[i] = rec
                write_manifest()
                if bar is not None:
                    bar.update(1)
                    nf = sum(r is not None and r["status"] == "failed" for r in records)
                    if nf:
                        bar.set_postfix(failed=nf)
        except KeyboardInterrupt:
            for f, i in futs.items():
                if records[i] is None:
                    f.cancel()
            write_manifest()
            raise
    finally:
        if bar is not None:
            bar.close()
        if cluster is not None:
            cl.close()
            cluster.close()
    return write_manifest()
