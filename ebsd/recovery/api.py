"""``recover_missing_slices``: the transformer + projection pipeline on a whole volume."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import EBSDValueError
from ._common import check_missing, filled_volume, gap_neighbours, gap_position, misorientation_deg, runs
from .baselines import adjacent_grains
from .model import SliceRecoveryTransformer, load_model, prepare_input

#: the bundled checkpoint (``model.safetensors`` + ``config.json``); ``$EBSDTK_RECOVERY_MODEL`` overrides
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "data" / "slice_recovery"

# inference settings used when the checkpoint's config.json does not say (keys of its "inference" entry)
DEFAULT_INFERENCE = {"tile": 48, "overlap": 8, "context": 2, "threshold_deg": 5.0, "radius": 3,
                     "spatial_weight": 1.0, "z_weight": 2.0, "smooth": 0}

_CACHE: dict = {}


def _resolve_model(model, device) -> tuple[SliceRecoveryTransformer, dict]:
    if isinstance(model, SliceRecoveryTransformer):
        settings = dict(DEFAULT_INFERENCE, **getattr(model, "inference_settings", {}))
        return model.to(device), settings
    if isinstance(model, torch.nn.Module):
        raise EBSDValueError(f"model must be a SliceRecoveryTransformer, got {type(model).__name__}")
    if model in (None, "default"):
        path = Path(os.environ.get("EBSDTK_RECOVERY_MODEL", DEFAULT_CHECKPOINT))
    else:
        path = Path(model)
    weights = path / "model.safetensors" if path.is_dir() else path
    key = (str(weights.resolve()), weights.stat().st_mtime_ns if weights.is_file() else None, str(device))
    if key not in _CACHE:
        net = load_model(path, device=device)
        _CACHE[key] = (net, dict(DEFAULT_INFERENCE, **net.inference_settings))
    return _CACHE[key]


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    step = max(1, tile - overlap)
    s = list(range(0, n - tile + 1, step))
    if s[-1] != n - tile:
        s.append(n - tile)
    return s


@torch.no_grad()
def predict_slices(net: SliceRecoveryTransformer, vol, run: tuple[int, int], missing: set[int], settings: dict,
                   batch_size: int = 16, progress=None) -> torch.Tensor:
    """The transformer's guess ``(G, Y, X, 4)`` for the missing slices ``run = (z0, z1)`` of ``vol``
    (tiles of ``settings["tile"]`` with ``settings["overlap"]``; each tile keeps its interior)."""
    Z, Y, X = vol.shape
    z0, z1 = run
    ctx = int(settings["context"])
    dev = next(net.parameters()).device
    za, zb = max(0, z0 - ctx), min(Z, z1 + ctx + 1)
    if zb - za > net.config.max_z:
        raise EBSDValueError(f"a run of {z1 - z0 + 1} missing slices is too long for this model "
                             f"(window {zb - za} > max_z {net.config.max_z})")
    q = vol.quaternions[za:zb].to(dev)
    x = prepare_input(q, vol.symmetry)
    zmiss = torch.tensor([z in missing for z in range(za, zb)], device=dev)
    mask = zmiss[:, None, None] | ~vol.valid[za:zb].to(dev)
    T = min(int(settings["tile"]), net.config.max_xy)
    ov = int(settings["overlap"])
    ty, tx = min(T, Y), min(T, X)
    tiles = [(y, xx) for y in _starts(Y, ty, ov) for xx in _starts(X, tx, ov)]
    out = torch.full((z1 - z0 + 1, Y, X, 4), float("nan"), device=dev)
    g0, g1 = z0 - za, z1 - za + 1
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    for b in range(0, len(tiles), batch_size):
        chunk = tiles[b:b + batch_size]
        xb = torch.stack([x[:, y:y + ty, xx:xx + tx] for y, xx in chunk])
        mb = torch.stack([mask[:, y:y + ty, xx:xx + tx] for y, xx in chunk])
        with autocast:
            pred = net(xb, mb, keep_z=slice(g0, g1)).float()
        for (y, xx), p in zip(chunk, pred):
            my0 = ov // 2 if y > 0 else 0
            my1 = ov // 2 if y + ty < Y else 0
            mx0 = ov // 2 if xx > 0 else 0
            mx1 = ov // 2 if xx + tx < X else 0
            out[:, y + my0:y + ty - my1, xx + mx0:xx + tx - mx1] = p[:, my0:ty - my1, mx0:tx - mx1]
        if progress is not None:
            progress.update(len(chunk))
    return out


def recover_missing_slices(vol, missing=None, model="default", project: bool = True, device=None,
                           batch_size: int = 16, progress: bool = True, return_details: bool = False, **settings):
    """Recover missing (or bad) slices of a volume with the axial transformer and the projection step.

    Args:
        vol: :class:`~ebsd.volume.EBSDVolume` (single phase; its dominant phase's symmetry is used).
        missing: slice indices to recover, or None to detect them with :func:`find_bad_slices`.
        model: ``"default"`` (the bundled checkpoint in ``data/slice_recovery/``), a checkpoint path
            (directory or ``model.safetensors``), or a :class:`SliceRecoveryTransformer`.
        project: snap each recovered voxel to the mean orientation of a grain of the adjacent known slices
            (:mod:`ebsd.recovery.projection`); False returns the network's raw prediction.
        device: where to run (None: where ``vol`` is). The result lives where ``vol`` is.
        batch_size: tiles per forward pass.
        progress: tqdm bar over tiles.
        return_details: also return a dict: ``"recovered_slices"`` (sorted list) and ``"disagreement_deg"``,
            a ``(n_recovered, Y, X)`` float32 numpy array of the misorientation between the network's raw
            prediction and the projected result (0 without projection): where it is large, the network and
            the neighbouring grains disagree and the result deserves a look.
        **settings: override inference settings (``tile``, ``overlap``, ``context``, ``threshold_deg``,
            ``radius``, ``spatial_weight``, ``z_weight``, ``smooth``).

    Returns:
        A new :class:`EBSDVolume`: recovered slices filled and marked valid, CI/IQ the mean of the adjacent
        known slices, ``metadata["recovered_slices"]`` (sorted list) and ``metadata["recovery_method"]``.
        With nothing to recover, an unchanged copy with ``recovered_slices = []``.
    """
    if missing is None:
        from .detect import find_bad_slices

        missing = find_bad_slices(vol)
    missing = check_missing(vol, missing)
    if not missing:
        new = vol.copy()
        new.metadata.setdefault("recovered_slices", [])
        if return_details:
            return new, {"recovered_slices": [], "disagreement_deg": np.zeros((0, *vol.shape[1:]), np.float32)}
        return new
    unknown = set(settings) - set(DEFAULT_INFERENCE)
    if unknown:
        raise EBSDValueError(f"unknown inference settings {sorted(unknown)}; known: {sorted(DEFAULT_INFERENCE)}")
    for key in ("tile", "radius"):
        if key in settings and not (isinstance(settings[key], int) and settings[key] >= 1):
            raise EBSDValueError(f"{key} must be an integer >= 1, got {settings[key]!r}")
    for key in ("overlap", "context", "smooth"):
        if key in settings and not (isinstance(settings[key], int) and settings[key] >= 0):
            raise EBSDValueError(f"{key} must be an integer >= 0, got {settings[key]!r}")
    if "overlap" in settings and settings["overlap"] >= settings.get("tile", DEFAULT_INFERENCE["tile"]):
        raise EBSDValueError(f"overlap ({settings['overlap']}) must be smaller than the tile")
    device = torch.device(device) if device is not None else vol.device
    net, cfg = _resolve_model(model, device)
    net.eval()
    cfg = dict(cfg, **settings)
    Y, X = vol.shape[1:]
    T = min(int(cfg["tile"]), net.config.max_xy)
    n_tiles = len(_starts(Y, min(T, Y), int(cfg["overlap"]))) * len(_starts(X, min(T, X), int(cfg["overlap"])))
    rr = runs(missing)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_tiles * len(rr), desc="recovering slices", unit="tile")
    work = vol.to(device)
    filled, disagreement = {}, {}
    mset = set(missing)
    try:
        for run in rr:
            guess = predict_slices(net, work, run, mset, cfg, batch_size, bar)
            zs = list(range(run[0], run[1] + 1))
            raw = guess
            if project:
                lo, hi = gap_neighbours(run, vol.shape[0], mset)
                grains = adjacent_grains(work, run, lo, hi, cfg["threshold_deg"])
                from .projection import project as _project

                guess, _ = _project(guess, [gap_position(z, lo, hi) for z in zs], grains, vol.symmetry,
                                    radius=int(cfg["radius"]), spatial_weight=cfg["spatial_weight"],
                                    z_weight=cfg["z_weight"], smooth=int(cfg["smooth"]))
            filled.update({z: g.to(vol.device) for z, g in zip(zs, guess)})
            if return_details:
                dis = misorientation_deg(raw, guess, vol.symmetry) if project else torch.zeros(raw.shape[:-1])
                disagreement.update(zip(zs, dis.float().cpu().numpy()))
    finally:
        if bar is not None:
            bar.close()
    new = filled_volume(vol, filled, "transformer+projection" if project else "transformer")
    if return_details:
        return new, {"recovered_slices": missing, "disagreement_deg": np.stack([disagreement[z] for z in missing])}
    return new
