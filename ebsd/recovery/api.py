"""``recover_missing_slices``: recover missing sections, choosing the method by a self-check on the volume.

Methods (``method=``):

* ``"blend"``: candidate blending (:mod:`ebsd.recovery.blend`): each recovered voxel carries the measured
  orientation of the voxel below or above (or their slerp inside one grain), chosen by shape-based
  interpolation of the grains of the two known sections. No network.
* ``"network"``: the axial transformer's prediction, snapped to grain means of the adjacent sections by the
  projection step when ``project=True`` (the first-wave method; ``"transformer+projection"``), raw otherwise.
* ``"network-blend"``: ``"blend"`` where the transformer's prediction also votes for the candidates.
* ``"slerp"``, ``"nearest"``: the interpolation baselines.
* ``"auto"`` (default): the self-check (:mod:`ebsd.recovery.selfcheck`) hides known sections of the user's own
  volume (runs of the same length as the gaps), recovers them with every method above (and, with
  ``adapt_seconds > 0``, with a copy of the network fine-tuned on the volume itself), measures the
  misorientation to the hidden measured sections, and uses the method with the lowest mean (keeping the plain
  blend when the winner beats it by less than 5 % and the blend is no worse than slerp and nearest). Since slerp and
  nearest are among the candidates, the choice is never worse than interpolation on those sections.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import EBSDValueError
from ._common import check_missing, filled_volume, gap_neighbours, gap_position, misorientation_deg, runs
from .baselines import adjacent_grains, slerp
from .model import SliceRecoveryTransformer, load_model, prepare_input

#: the bundled checkpoint (``model.safetensors`` + ``config.json``); ``$EBSDTK_RECOVERY_MODEL`` overrides
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "data" / "slice_recovery"

# inference settings used when the checkpoint's config.json does not say (keys of its "inference" entry)
DEFAULT_INFERENCE = {"tile": 48, "overlap": 8, "context": 2, "threshold_deg": 5.0, "radius": 3,
                     "spatial_weight": 1.0, "z_weight": 2.0, "smooth": 0,
                     "blend_threshold_deg": 5.0, "blend_radius": 4, "blend_outer_weight": 0.5, "guess_weight": 1.0,
                     "z_ratio": None}

METHODS = ("auto", "blend", "network-blend", "network", "slerp", "nearest")

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


def n_tiles(net: SliceRecoveryTransformer, shape, settings: dict) -> int:
    """Number of tiles :func:`predict_slices` uses per run for a volume of ``shape``."""
    Y, X = shape[1:]
    T = min(int(settings["tile"]), net.config.max_xy)
    ov = int(settings["overlap"])
    return len(_starts(Y, min(T, Y), ov)) * len(_starts(X, min(T, X), ov))


def _phase_count(vol) -> int:
    ids = torch.unique(vol.phases[vol.valid]).tolist() if bool(vol.valid.any()) else []
    return len([i for i in ids if i in vol.phase_info])


def blend_radius(vol, cfg: dict, ratio: float | None = None) -> int:
    """Search radius (in-plane voxels) of the blend: ``blend_radius`` scaled by the section spacing in units
    of the in-plane step (``ratio``, default ``dz / dx`` of ``vol.spacing``; sections further apart move
    boundaries further)."""
    if ratio is None:
        ratio = vol.spacing[0] / max(vol.spacing[1], vol.spacing[2])
    return int(max(1, math.ceil(int(cfg["blend_radius"]) * max(1.0, float(ratio)))))


def run_method(method: str, vol, missing: list[int], cfg: dict, net: SliceRecoveryTransformer | None = None,
               project: bool = True, batch_size: int = 16, progress=None, raw_cache: dict | None = None):
    """Recover ``missing`` with one ``method`` (not ``"auto"``). Returns ``(filled, sources, raw)``:
    ``{z: (Y, X, 4)}``, ``{z: (Y, X) int8 source}`` (blend only; see :func:`~ebsd.recovery._common.filled_volume`)
    and ``{z: (Y, X, 4)}`` raw network predictions (network methods only). ``raw_cache`` (a dict) reuses
    network predictions between calls on the same ``vol``/``missing``/``net``."""
    from .blend import blend_sections

    mset = set(missing)
    Z = vol.shape[0]
    filled, sources, raw = {}, {}, {}
    sym = vol.symmetry
    for run in runs(missing):
        lo, hi = gap_neighbours(run, Z, mset)
        zs = list(range(run[0], run[1] + 1))
        ts = [gap_position(z, lo, hi) for z in zs]
        if method in ("network", "network-blend"):
            key = (id(net), run)
            if raw_cache is not None and key in raw_cache:
                guess = raw_cache[key]
            else:
                guess = predict_slices(net, vol, run, mset, cfg, batch_size, progress)
                if raw_cache is not None:
                    raw_cache[key] = guess
            raw.update(zip(zs, guess))
        if method in ("nearest", "slerp") or ((lo is None or hi is None) and method != "network"):
            for z, t in zip(zs, ts):
                q, src = _copy_or_slerp(vol, lo, hi, t, "slerp" if method == "slerp" else "nearest", sym)
                filled[z], sources[z] = q, src
            continue
        if method in ("blend", "network-blend"):
            from .selfcheck import _trusted

            def outer(k):  # the known section one further out, if it is known and trustworthy
                if 0 <= k < Z and k not in mset and _trusted(vol, k):
                    return vol.quaternions[k], vol.valid[k], vol.phases[k]
                return None

            res = blend_sections(
                vol.quaternions[lo], vol.valid[lo], vol.quaternions[hi], vol.valid[hi], ts, vol.symmetries,
                phases_lo=vol.phases[lo], phases_hi=vol.phases[hi], threshold_deg=float(cfg["blend_threshold_deg"]),
                radius=blend_radius(vol, cfg, cfg.get("z_ratio")),
                guess=guess if method == "network-blend" else None,
                guess_weight=float(cfg["guess_weight"]), outer_lo=outer(lo - 1), outer_hi=outer(hi + 1),
                outer_weight=float(cfg["blend_outer_weight"]))
            filled.update(zip(zs, res.quaternions))
            sources.update(zip(zs, res.source))
        elif method == "network":
            out = guess
            if project:
                from .projection import project as _project

                grains = adjacent_grains(vol, run, lo, hi, cfg["threshold_deg"])
                out, _ = _project(guess, ts, grains, sym, radius=int(cfg["radius"]),
                                  spatial_weight=cfg["spatial_weight"], z_weight=cfg["z_weight"],
                                  smooth=int(cfg["smooth"]))
            filled.update(zip(zs, out))
        else:
            raise EBSDValueError(f"unknown method {method!r}; choose one of {METHODS}")
    return filled, sources, raw


def _copy_or_slerp(vol, lo, hi, t: float, mode: str, sym: str):
    """``(q (Y, X, 4), source (Y, X) int8)`` for one recovered slice at gap position ``t``: ``"nearest"``
    copies the nearer known neighbour (0 = ``lo``, 1 = ``hi``), ``"slerp"`` interpolates where both are indexed
    (source 2); where the preferred side is not indexed the other side's voxel is used, and voxels indexed in
    neither take the result of the nearest in-plane voxel that has one (so an unindexed voxel is never
    passed off as a recovered orientation)."""
    from .blend import _fill_from_neighbours

    Y, X = vol.shape[1:]
    dev = vol.device
    sides = [(c, k) for c, k in ((0, lo), (1, hi)) if k is not None]
    if len(sides) == 2 and t > 0.5:
        sides = sides[::-1]
    q = torch.zeros(Y, X, 4, dtype=vol.quaternions.dtype, device=dev)
    q[..., 0] = 1
    src = torch.full((Y, X), -1, dtype=torch.int8, device=dev)
    for code, k in reversed(sides):  # the preferred side is written last
        v = vol.valid[k]
        q = torch.where(v[..., None], vol.quaternions[k], q)
        src = torch.where(v, torch.full_like(src, code), src)
    if mode == "slerp" and lo is not None and hi is not None:
        both = vol.valid[lo] & vol.valid[hi]
        sl = slerp(vol.quaternions[lo], vol.quaternions[hi], t, sym)
        q = torch.where(both[..., None], sl, q)
        src = torch.where(both, torch.full_like(src, 2), src)
    have = src >= 0
    if bool(have.any()) and not bool(have.all()):
        q = _fill_from_neighbours(q, have)
    return q, src


def method_of(label: str) -> str:
    """The ``method=`` value that reproduces a self-check label (``"blend (dz/dx = 2.0 estimated)"`` ->
    ``"blend"``, ``"transformer+projection (adapted)"`` -> ``"network"``; the adaptation is not kept)."""
    base = label.split(" (")[0]
    return {"transformer+projection": "network", "transformer": "network"}.get(base, base)


def _method_name(method: str, project: bool) -> str:
    if method == "network":
        return "transformer+projection" if project else "transformer"
    return method


def recover_missing_slices(vol, missing=None, model="default", project: bool = True, device=None,
                           batch_size: int = 16, progress: bool = True, return_details: bool = False,
                           method: str = "auto", self_check: int = 8, adapt_seconds: float | None = None,
                           seed: int = 0, unknown=(), **settings):
    """Recover missing (or bad) slices of a volume; by default the method is chosen by a self-check on the
    volume itself (see the module docstring).

    Args:
        vol: :class:`~ebsd.volume.EBSDVolume` ``(Z, Y, X)``; ``vol.spacing`` ``(dz, dy, dx)`` um is used (a
            section twice as far away moves boundaries twice as far).
        missing: slice indices to recover (a list of ints, or a string like ``"12,13"`` / ``"12-14"``), or
            None to detect them with :func:`find_bad_slices`.
        model: ``"default"`` (the bundled checkpoint in ``data/slice_recovery/``), a checkpoint path
            (directory or ``model.safetensors``), or a :class:`SliceRecoveryTransformer`.
        project: for ``method="network"``: snap to grain means of the adjacent slices (True) or return the
            network's raw prediction (False).
        device: where to run (None: where ``vol`` is). The result lives where ``vol`` is.
        batch_size: tiles per forward pass.
        progress: tqdm bars.
        return_details: also return a dict (see Returns).
        method: ``"auto"`` (self-check), ``"blend"``, ``"network-blend"``, ``"network"``, ``"slerp"``,
            ``"nearest"``.
        self_check: how many known runs (of each gap's length) to hide for the self-check (``0``: no
            self-check; ``"auto"`` then uses ``"blend"``). Runs with ``method="auto"``, and with any other
            method when ``return_details`` asks for its expected error.
        adapt_seconds: seconds of test-time adaptation (fine-tuning a copy of the network on the volume's own
            known sections, self-supervised; the self-check's hidden sections are never used). None: 5 s on
            CUDA, 0 on CPU. The self-check then also measures the adapted network and says whether it helped.
        seed: seed of the adaptation.
        unknown: other slice indices to treat as unknown (never used as neighbours, context or self-check
            truth) but not to recover here: for callers that recover the gaps of one volume run by run.
        **settings: override inference settings (``tile``, ``overlap``, ``context``, ``threshold_deg``,
            ``radius``, ``spatial_weight``, ``z_weight``, ``smooth`` for the network and projection;
            ``blend_threshold_deg`` (deg), ``blend_radius`` (voxels at ``dz = dx``), ``blend_outer_weight``
            (weight of the sections one further out), ``guess_weight``, ``z_ratio`` (section spacing in
            in-plane steps; None: from ``vol.spacing``) for the blend).

    Returns:
        A new :class:`EBSDVolume`: recovered slices filled; each recovered voxel is ``valid`` and not
        ``measured`` and carries the phase, CI and IQ of the measured voxel its orientation came from (see
        :func:`ebsd.recovery._common.filled_volume`); ``metadata["recovered_slices"]`` (sorted list),
        ``metadata["recovery_method"]`` and, after a self-check, ``metadata["recovery_self_check"]``.
        With ``return_details``, ``(volume, details)``: ``details["recovered_slices"]``, ``details["method"]``,
        ``details["disagreement_deg"]`` (``(n_recovered, Y, X)`` float32: misorientation between the
        network's raw prediction and the result when a network method was used, else between the two known
        neighbours; large values deserve a look), ``details["self_check"]`` (``method``, ``mean_deg``,
        ``median_deg``, ``within5`` (fraction), ``n_sections``, ``sections``, per-method ``table``,
        ``adaptation``) or None, and ``details["spacing"]`` (given and estimated ``dz / dx``).
    """
    from .selfcheck import estimate_section_ratio, self_check as _self_check

    if missing is None:
        from .detect import find_bad_slices

        missing = find_bad_slices(vol)
    missing = check_missing(vol, missing)
    unknown = [z for z in (check_missing(vol, unknown) if len(unknown) else []) if z not in set(missing)]
    if method not in METHODS:
        raise EBSDValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not (isinstance(self_check, int) and self_check >= 0):
        raise EBSDValueError(f"self_check must be an integer >= 0 (hidden runs), got {self_check!r}")
    if adapt_seconds is not None and not (adapt_seconds >= 0 and math.isfinite(adapt_seconds)):
        raise EBSDValueError(f"adapt_seconds must be >= 0, got {adapt_seconds!r}")
    if not missing:
        new = vol.copy()
        new.metadata.setdefault("recovered_slices", [])
        if return_details:
            return new, {"recovered_slices": [], "method": None, "self_check": None, "spacing": None,
                         "disagreement_deg": np.zeros((0, *vol.shape[1:]), np.float32)}
        return new
    bad_keys = set(settings) - set(DEFAULT_INFERENCE)
    if bad_keys:
        raise EBSDValueError(f"unknown inference settings {sorted(bad_keys)}; known: {sorted(DEFAULT_INFERENCE)}")
    for key in ("tile", "radius", "blend_radius"):
        if key in settings and not (isinstance(settings[key], int) and settings[key] >= 1):
            raise EBSDValueError(f"{key} must be an integer >= 1, got {settings[key]!r}")
    for key in ("overlap", "context", "smooth"):
        if key in settings and not (isinstance(settings[key], int) and settings[key] >= 0):
            raise EBSDValueError(f"{key} must be an integer >= 0, got {settings[key]!r}")
    if "overlap" in settings and settings["overlap"] >= settings.get("tile", DEFAULT_INFERENCE["tile"]):
        raise EBSDValueError(f"overlap ({settings['overlap']}) must be smaller than the tile")
    device = torch.device(device) if device is not None else vol.device
    multi = _phase_count(vol) > 1
    net, cfg = None, dict(DEFAULT_INFERENCE)
    net_note = None
    if method in ("network", "network-blend") and multi:
        raise EBSDValueError(
            f"this volume has {_phase_count(vol)} indexed phases; the network methods use one symmetry. Use "
            "method='blend' (each voxel keeps its own phase and symmetry) or method='auto'")
    if method in ("network", "network-blend") or (method == "auto" and not multi):
        try:
            net, cfg = _resolve_model(model, device)
            net.eval()
        except EBSDValueError as exc:
            if method != "auto":
                raise
            net_note = f"network methods skipped: {exc}"
    elif multi:
        net_note = "network methods skipped: the volume has several phases (they use one symmetry)"
    cfg = dict(cfg, **settings)
    if adapt_seconds is None:
        adapt_seconds = 5.0 if device.type == "cuda" else 0.0
    work = vol.to(device)
    mset = set(missing)
    every = sorted(mset | set(unknown))  # gaps as the methods see them (unknown slices are gaps too)
    given_ratio = vol.spacing[0] / max(vol.spacing[1], vol.spacing[2])
    est_ratio = estimate_section_ratio(work, exclude=every)
    spacing_info = {"given_ratio": given_ratio, "estimated_ratio": est_ratio}

    report = None
    chosen, chosen_net = method, net
    if self_check > 0 and (method == "auto" or return_details):
        report = _self_check(work, every, net if method in ("auto", "network", "network-blend") else None,
                             cfg, methods=None if method == "auto" else [method], n_runs=self_check,
                             project=project, batch_size=batch_size, adapt_seconds=adapt_seconds if
                             method == "auto" else 0.0, seed=seed, progress=progress)
        if report is not None and net_note:
            report["note"] = "; ".join(n for n in (report.get("note"), net_note) if n)
        if method == "auto" and report is not None:
            best = report["_best"]
            chosen, chosen_net = best["method"], best["net"]
            cfg = dict(cfg, **best["settings"])
    if method == "auto" and report is None:
        chosen = "blend"
    if chosen in ("network", "network-blend") and chosen_net is None:
        chosen_net = net
    bar = None
    if progress and chosen in ("network", "network-blend"):
        from tqdm.auto import tqdm

        bar = tqdm(total=n_tiles(chosen_net, vol.shape, cfg) * len(runs(every)), desc="recovering slices",
                   unit="tile")
    try:
        filled, sources, raw = run_method(chosen, work, every, cfg, chosen_net, project, batch_size, bar)
        keep = set(missing)  # the unknown slices were gaps for the methods; only the asked ones are filled
        filled = {z: q for z, q in filled.items() if z in keep}
        sources = {z: q for z, q in sources.items() if z in keep}
        raw = {z: q for z, q in raw.items() if z in keep}
    finally:
        if bar is not None:
            bar.close()
    filled = {z: q.to(vol.device) for z, q in filled.items()}
    sources = {z: s.to(vol.device) for z, s in sources.items()}
    name = _method_name(chosen, project)
    new = filled_volume(vol, filled, name, sources)
    public = None
    if report is not None:
        public = {k: v for k, v in report.items() if not k.startswith("_")}
        if method != "auto":
            public["method"] = name
        new.metadata["recovery_self_check"] = {k: public[k] for k in ("method", "mean_deg", "median_deg",
                                                                      "within5", "n_sections")}
    if not return_details:
        return new
    dis = []
    for z in missing:
        if z in raw:
            dis.append(misorientation_deg(raw[z].to(vol.device), filled[z], vol.symmetry))
        else:
            lo, hi = gap_neighbours(next(r for r in runs(every) if r[0] <= z <= r[1]), vol.shape[0], set(every))
            if lo is None or hi is None:
                dis.append(torch.zeros(vol.shape[1:], device=vol.device))
            else:
                dis.append(misorientation_deg(vol.quaternions[lo], vol.quaternions[hi], vol.symmetry))
    details = {"recovered_slices": missing, "method": name, "self_check": public, "spacing": spacing_info,
               "disagreement_deg": torch.stack(dis).float().cpu().numpy()}
    return new, details


def choose_method(vol, missing, model="default", project: bool = True, device=None, self_check: int = 8,
                  adapt_seconds: float = 0.0, batch_size: int = 16, **settings) -> tuple[str, dict | None]:
    """Run only the self-check of :func:`recover_missing_slices` (``method="auto"``) and return
    ``(method, report)``: the ``method=`` value to pass for the real gaps (``"blend"`` when no self-check is
    possible; an adapted network's choice maps to its plain method) and the public report (None without a
    self-check). For callers that recover run by run (the napari widget) and want one choice for all."""
    from .selfcheck import self_check as _self_check

    missing = check_missing(vol, missing)
    device = torch.device(device) if device is not None else vol.device
    net, cfg = None, dict(DEFAULT_INFERENCE)
    if _phase_count(vol) <= 1:
        try:
            net, cfg = _resolve_model(model, device)
        except EBSDValueError:
            net = None
    cfg = dict(cfg, **settings)
    work = vol.to(device)
    if not missing or self_check <= 0:
        return "blend", None
    report = _self_check(work, missing, net, cfg, n_runs=self_check, project=project, batch_size=batch_size,
                         adapt_seconds=adapt_seconds)
    if report is None:
        return "blend", None
    # the winner's blend settings (report["settings"]) must be passed on as **settings
    return method_of(report["method"]), {k: v for k, v in report.items() if not k.startswith("_")}


def expected_error_line(check: dict | None) -> str:
    """The one-line summary the CLI and the napari widget print for a self-check report."""
    if not check:
        return "expected error on this volume: unknown (no self-check: too few known sections to hide)"
    return (f"expected error on this volume: {check['mean_deg']:.2f} deg mean, {check['median_deg']:.2f} deg "
            f"median, {100 * check['within5']:.0f}% within 5 deg (self-check on {check['n_sections']} known "
            f"sections; method {check['method']})")
