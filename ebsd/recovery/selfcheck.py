"""Self-check and test-time adaptation on the user's own volume.

* :func:`hidden_runs` picks known sections to hide: runs of the same lengths as the gaps, each with known
  neighbours on both sides, spread over the volume, never next to a real gap or to each other.
* :func:`self_check` recovers the hidden sections with every candidate method and measures the
  misorientation to the measured sections (mean, median, fraction within 5 deg); the lowest mean wins
  (the plain blend is kept when the winner is less than 5 % better and it is no worse than interpolation).
  The winner's numbers are the expected error on the real gaps.
* :func:`adapt_network` fine-tunes a copy of the slice-recovery network on the volume's known sections,
  self-supervised (hide a run of known sections, learn to recover it), within a time budget; the self-check's
  hidden sections are masked out of its input and never used as targets, so the self-check stays fair.
* :func:`estimate_section_ratio` estimates the section spacing in units of the in-plane step from the data.
"""
from __future__ import annotations

import copy
import math
import random
import time

import numpy as np
import torch

from ._common import misorientation_deg, runs


def _trusted(vol, z: int, min_valid: float = 0.5) -> bool:
    """A known section fit to serve as truth: mostly indexed, measured, not itself recovered."""
    if z in set(vol.metadata.get("recovered_slices", []) or []):
        return False
    ok = vol.valid[z] & vol.measured[z]
    return float(ok.float().mean()) >= min_valid


def hidden_runs(vol, missing, n_runs: int, lengths=None) -> list[tuple[int, int]]:
    """Up to ``n_runs`` runs per gap length (``lengths``: default the lengths of the runs of ``missing``)
    of known, trusted sections to hide; inclusive ``(z0, z1)`` pairs, sorted. Each run's neighbours are
    known and trusted, and no hidden section touches a real gap or another hidden run."""
    Z = vol.shape[0]
    mset = set(int(m) for m in missing)
    if lengths is None:
        lengths = [b - a + 1 for a, b in runs(missing)] or [1]
    ok = [z not in mset and _trusted(vol, z) for z in range(Z)]
    blocked = set()
    for m in mset:
        blocked.update((m - 1, m, m + 1))
    chosen: list[tuple[int, int]] = []
    cands, targets = {}, {}
    for g in sorted(set(lengths)):
        c = [k for k in range(1, Z - g) if all(ok[z] for z in range(k - 1, k + g + 1))
             and not any(z in blocked for z in range(k, k + g))]
        if c:
            cands[g] = c
            targets[g] = list(np.linspace(c[0], c[-1], num=n_runs)) if n_runs > 1 else [c[len(c) // 2]]
    for i in range(max(0, n_runs)):  # round robin over the gap lengths: each gets its share of runs
        for g in cands:
            t = targets[g][i]
            for k in sorted(cands[g], key=lambda c: (abs(c - t), c)):
                # the new run with its neighbours must not touch a chosen run (nor the other way round)
                if any(k - 1 <= b and a <= k + g for a, b in chosen):
                    continue
                chosen.append((k, k + g - 1))
                break
    return sorted(chosen)


def estimate_section_ratio(vol, exclude=(), angle_deg: float = 5.0, max_pairs: int = 20_000) -> float | None:
    """Section spacing in units of the in-plane step, estimated from the data: the in-plane distance ``d``
    (voxels) at which neighbouring voxels are as often misoriented by more than ``angle_deg`` as voxels of
    adjacent sections (boundary-crossing probability, interpolated linearly in ``d``). None when the volume
    has too few valid pairs. A value near ``dz / dx`` of ``vol.spacing`` confirms the given spacing."""
    Z, Y, X = vol.shape
    sym = vol.symmetry
    ex = set(int(e) for e in exclude)
    ok = vol.valid & vol.measured
    gen = torch.Generator().manual_seed(0)

    def frac(qa, qb, m):
        idx = m.reshape(-1).nonzero().squeeze(-1).cpu()
        if idx.numel() < 20:
            return None
        if idx.numel() > max_pairs:
            idx = idx[torch.randperm(idx.numel(), generator=gen)[:max_pairs]]
        idx = idx.to(qa.device)
        a, b = qa.reshape(-1, 4)[idx], qb.reshape(-1, 4)[idx]
        return float((misorientation_deg(a, b, sym) > angle_deg).float().mean())

    zs = [z for z in range(Z - 1) if z not in ex and z + 1 not in ex]
    if not zs:
        return None
    zi = torch.tensor(zs, device=vol.device)
    pz = frac(vol.quaternions[zi], vol.quaternions[zi + 1], ok[zi] & ok[zi + 1])
    if pz is None:
        return None
    keep = [z for z in range(Z) if z not in ex]
    q, m = vol.quaternions[keep], ok[keep]
    D = max(1, min(10, max(Y, X) - 1))
    pd = []
    for d in range(1, D + 1):
        num, den = 0.0, 0
        for axis, n in ((2, X), (1, Y)):
            if d >= n:
                continue
            qa, qb = q.narrow(axis, 0, n - d), q.narrow(axis, d, n - d)
            mm = m.narrow(axis, 0, n - d) & m.narrow(axis, d, n - d)
            f = frac(qa, qb, mm)
            if f is not None:
                w = int(mm.sum())
                num += f * w
                den += w
        if den == 0:
            break
        pd.append(num / den)
    if not pd or pd[0] <= 0:
        return None
    if pz <= pd[0]:
        return max(0.05, pz / pd[0])
    for d in range(1, len(pd)):
        if pd[d] >= pz:
            lo, hi = pd[d - 1], pd[d]
            return d + (pz - lo) / max(hi - lo, 1e-9)
    return float(min(50.0, len(pd) * pz / max(pd[-1], 1e-9)))


def adapt_network(net, vol, exclude, lengths, seconds: float, cfg: dict, seed: int = 0, lr: float = 2e-4,
                  batch_size: int = 8, visible_weight: float = 0.1,
                  max_steps: int | None = None) -> tuple[torch.nn.Module, dict]:
    """A copy of ``net`` fine-tuned for ``seconds`` on ``vol``: windows of ``2 * context + g`` sections
    (``g`` from ``lengths``) in which a run of ``g`` known sections is hidden and recovered, loss
    :func:`~ebsd.recovery.model.symmetric_quaternion_loss` against the measured orientations (indexed voxels
    only). Sections in ``exclude`` (real gaps, self-check sections) are masked in every input and never a
    target. ``max_steps`` caps the steps (the time budget still applies). Returns ``(model in eval mode, info)``, ``info``: ``steps``, ``seconds``, ``loss_first``,
    ``loss_last`` (mean over the first / last 10 steps, or a third of them when fewer than 30)."""
    from .model import prepare_input, symmetric_quaternion_loss

    t0 = time.perf_counter()
    dev = next(net.parameters()).device
    Z, Y, X = vol.shape
    sym = vol.symmetry
    ctx = int(cfg["context"])
    T = min(int(cfg["tile"]), net.config.max_xy)
    ty, tx = min(T, Y), min(T, X)
    ex = set(int(e) for e in exclude)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    lengths = sorted(set(int(g) for g in lengths)) or [1]
    options = {}
    for g in lengths:
        Zw = g + 2 * ctx
        if Zw > min(Z, net.config.max_z):
            continue
        ks = [k for k in range(ctx, Z - g - ctx + 1) if all(z not in ex and _trusted(vol, z) for z in range(k, k + g))]
        if ks:
            options[g] = ks
    info = {"steps": 0, "seconds": 0.0, "loss_first": None, "loss_last": None}
    model = copy.deepcopy(net)
    if not options or seconds <= 0:
        return model.eval(), info
    x_all = prepare_input(vol.quaternions.to(dev), sym)
    q_all = vol.quaternions.to(dev)
    ok_all = (vol.valid & vol.measured).to(dev)
    exm = torch.tensor([z in ex for z in range(Z)], device=dev)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    losses = []
    t0 = time.perf_counter()  # the budget counts training steps (not the one-off import of torch.optim)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    while time.perf_counter() - t0 < seconds and (max_steps is None or len(losses) < max_steps):
        g = rng.choice(list(options))
        xs, ms, ws, ts = [], [], [], []
        for _ in range(batch_size):
            k = rng.choice(options[g])
            za, zb = k - ctx, k + g + ctx
            y0, x0 = rng.randrange(Y - ty + 1), rng.randrange(X - tx + 1)
            sl = (slice(za, zb), slice(y0, y0 + ty), slice(x0, x0 + tx))
            hid = torch.zeros(zb - za, ty, tx, dtype=torch.bool, device=dev)
            hid[ctx:ctx + g] = True
            ok = ok_all[sl]
            mask = hid | ~ok | exm[za:zb, None, None]
            w = (hid & ok).float() + visible_weight * (~hid & ok & ~exm[za:zb, None, None]).float()
            xx, qq = x_all[sl], q_all[sl]
            if rng.random() < 0.5:
                xx, qq, mask, w = xx.flip(1), qq.flip(1), mask.flip(1), w.flip(1)
            if rng.random() < 0.5:
                xx, qq, mask, w = xx.flip(2), qq.flip(2), mask.flip(2), w.flip(2)
            if rng.random() < 0.5:
                xx, qq, mask, w = xx.flip(0), qq.flip(0), mask.flip(0), w.flip(0)
            xs.append(xx); ms.append(mask); ws.append(w); ts.append(qq)
        with autocast:
            pred = model(torch.stack(xs), torch.stack(ms))
        loss = symmetric_quaternion_loss(pred.float(), torch.stack(ts), sym, torch.stack(ws))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    k = max(1, min(10, len(losses) // 3))
    info = {"steps": len(losses), "seconds": round(time.perf_counter() - t0, 2),
            "loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:]))}
    return model.eval(), info


def _score(filled: dict, vol, hidden: list[int]) -> dict:
    """Misorientation (deg) of ``filled[z]`` to the measured section ``z`` over its indexed, measured voxels,
    each with the symmetry of its own (measured) phase."""
    errs = []
    syms = vol.symmetries
    for z in hidden:
        m = vol.valid[z] & vol.measured[z]
        if not bool(m.any()):
            continue
        if len(syms) <= 1:
            errs.append(misorientation_deg(filled[z][m], vol.quaternions[z][m], vol.symmetry).float().reshape(-1))
            continue
        for pid, sym in syms.items():
            mp = m & (vol.phases[z] == pid)
            if bool(mp.any()):
                errs.append(misorientation_deg(filled[z][mp], vol.quaternions[z][mp], sym).float().reshape(-1))
    e = torch.cat(errs) if errs else torch.zeros(0)
    if e.numel() == 0:
        return {"mean_deg": float("nan"), "median_deg": float("nan"), "within5": float("nan"), "n_voxels": 0}
    return {"mean_deg": float(e.mean()), "median_deg": float(e.median()), "within5": float((e <= 5).float().mean()),
            "n_voxels": int(e.numel())}


def self_check(vol, missing, net, cfg: dict, methods=None, n_runs: int = 8, project: bool = True,
               batch_size: int = 16, adapt_seconds: float = 0.0, seed: int = 0, progress: bool = False,
               adapt_lr: float = 2e-4, prefer_margin: float = 0.05) -> dict | None:
    """Hide known runs (:func:`hidden_runs`), recover them with each candidate method, score against the
    measured sections. ``methods``: None for all candidates (nearest, slerp, blend, blend at the estimated
    spacing when it differs from the given one, and, with ``net``, network and network-blend, and their
    adapted versions when ``adapt_seconds > 0``), or a list of method names to score only those.

    The lowest mean wins, except that the plain ``"blend"`` is kept when the winner is less than
    ``prefer_margin`` (relative) better and the blend is no worse than slerp and nearest (a few hidden sections
    cannot separate methods that close; preferring one default lowers the chance of a lucky pick).

    Returns None when no run can be hidden, else a dict: ``method`` (label of the best), ``mean_deg``,
    ``median_deg``, ``within5``, ``n_sections``, ``sections`` (the hidden slice indices), ``table``
    (``{label: {mean_deg, median_deg, within5, n_voxels}}``), ``adaptation`` (info or None), and
    ``settings`` (blend settings the winner changed), ``note`` (why candidates were skipped, or None),
    ``_best`` (``method``, ``net``, ``settings``: what to run on the real gaps)."""
    from .api import _method_name, blend_radius, run_method

    lengths = [b - a + 1 for a, b in runs(missing)] or [1]
    hr = hidden_runs(vol, missing, n_runs, lengths)
    if not hr:
        return None
    hidden = sorted(z for a, b in hr for z in range(a, b + 1))
    all_missing = sorted(set(int(m) for m in missing) | set(hidden))
    given = vol.spacing[0] / max(vol.spacing[1], vol.spacing[2])
    # (label, method, network, settings overriding cfg)
    cands: list[tuple[str, str, object, dict]] = []
    note = None
    if methods is None:
        thr, rad = float(cfg["blend_threshold_deg"]), int(cfg["blend_radius"])
        cands += [("nearest", "nearest", None, {}), ("slerp", "slerp", None, {}), ("blend", "blend", None, {}),
                  (f"blend (grains at {2 * thr:g} deg)", "blend", None, {"blend_threshold_deg": 2 * thr}),
                  (f"blend (radius {2 * rad})", "blend", None, {"blend_radius": 2 * rad}),
                  ("blend (2 sections)", "blend", None, {"blend_outer_weight": 0.0})]
        est_ratio = estimate_section_ratio(vol, exclude=all_missing)  # never reads the hidden sections
        if est_ratio is not None and blend_radius(vol, cfg, est_ratio) != blend_radius(vol, cfg):
            cands.append((f"blend (dz/dx = {est_ratio:.2f} estimated)", "blend", None, {"z_ratio": est_ratio}))
        ctx = int(cfg["context"])
        longest = max(b - a + 1 for a, b in runs(all_missing))
        if net is not None and longest + 2 * ctx > net.config.max_z:  # the network cannot see such a gap
            note = (f"network methods skipped: a gap of {longest} slices is longer than the network's window "
                    f"(max_z {net.config.max_z})")
            net = None
        if net is not None:
            cands += [(_method_name("network", project), "network", net, {}),
                      ("network-blend", "network-blend", net, {})]
    else:
        for m in methods:
            cands.append((_method_name(m, project), m, net, {}))
    adaptation = None
    if methods is None and net is not None and adapt_seconds > 0:
        adapted, adaptation = adapt_network(net, vol, all_missing, lengths, adapt_seconds, cfg, seed=seed,
                                            lr=adapt_lr)
        if adaptation["steps"] > 0:
            cands += [(_method_name("network", project) + " (adapted)", "network", adapted, {}),
                      ("network-blend (adapted)", "network-blend", adapted, {})]
    table, best = {}, None
    raw_cache: dict = {}
    it = cands
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(cands, desc="self-check", unit="method")
    for label, m, mnet, over in it:
        filled, _, _ = run_method(m, vol, all_missing, dict(cfg, **over), mnet, project, batch_size, None,
                                  raw_cache)
        table[label] = _score(filled, vol, hidden)
        sc = table[label]["mean_deg"]
        if not math.isnan(sc) and (best is None or sc < table[best[0]]["mean_deg"]):
            best = (label, m, mnet, over)
    if best is None:
        return None
    # selection noise: a handful of hidden sections cannot tell methods a few percent apart; keep the plain blend
    # unless the winner beats it by more than ``prefer_margin`` (never if the blend loses to slerp or nearest)
    plain = next((c for c in cands if c[0] == "blend"), None)
    if plain is not None and best[0] != "blend":
        pb = table["blend"]["mean_deg"]
        floor = min(table[k]["mean_deg"] for k in ("slerp", "nearest") if k in table)
        if pb <= table[best[0]]["mean_deg"] * (1 + prefer_margin) and pb <= floor:
            best = plain
    if adaptation is not None:
        plain = table.get(_method_name("network", project), {}).get("mean_deg")
        adapted_m = table.get(_method_name("network", project) + " (adapted)", {}).get("mean_deg")
        adaptation = dict(adaptation, helped=None if plain is None or adapted_m is None else bool(adapted_m < plain))
    b = table[best[0]]
    return {"method": best[0], "mean_deg": b["mean_deg"], "median_deg": b["median_deg"], "within5": b["within5"],
            "n_sections": len(hidden), "sections": hidden, "table": table, "adaptation": adaptation,
            "given_ratio": given, "settings": best[3], "note": note,
            "_best": {"method": best[1], "net": best[2], "settings": best[3]}}
