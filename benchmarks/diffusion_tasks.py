"""PL/EBSD multimodal diffusion on held-out synthetic hexagonal sections vs classical baselines.

Tasks (each on the same held-out sections, seeds disjoint from training):

1. x4 EBSD super-resolution from point-sampled low-resolution EBSD + noisy PL: mean misorientation to the
   truth (degrees, 6/mmm) and grain-boundary F1 (1-pixel tolerance, 5 degree threshold); ours vs nearest
   neighbour and vs bicubic interpolation of the continuous symmetry-safe channels (:mod:`diffusion.data`).
2. PL denoising (Gaussian read noise): PSNR / SSIM vs the clean PL; ours (PL only; with ``--sparse-ebsd`` also
   with 5 % sparse EBSD points) vs non-local means (``skimage.restoration.denoise_nl_means``, sigma estimated per channel
   with :func:`diffusion.operators.estimate_noise_sigma`, ``h = 0.8 sigma``).
3. Grain boundaries from PL alone (from the samples of the PL-only denoising call, which is exactly what
   ``grain_boundaries(pl)`` does): ours with ``criterion="pl-edges"`` (Sobel + Otsu on the posterior-mean PL)
   and ``criterion="caxis"`` (boundaries of the median-filtered sampled EBSD) vs Sobel edges of the
   NLM-denoised PL with an Otsu threshold.
4. Inference-time scaling: task 1 metrics vs ``n_samples``.
5. Sampling time of one super-resolution call vs ``n_samples`` (``--time-ns``).
6. Misregistration tolerance (``--misreg DY,DX,ANGLE``, on by default; ``--misreg none`` disables): the PL stack
   of each task-1 section is misregistered by a known rigid warp (:func:`diffusion.operators.warp`: shift in
   full-resolution pixels, positive = content moves down/right, rotation in degrees about the image centre),
   the same read noise (same noise realisation as task 1) is added after the warp, and x4 super-resolution
   is run with registration on (``super_resolve``'s default ``max_shift`` / ``max_rotation``) and off
   (``max_shift=0, max_rotation=0``); nearest / bicubic (no PL) for reference. Also reports the estimated vs
   true ``(dy, dx, angle)``, and what registration estimates on the unwarped task-1 PL (false positives).

Usage::

    python benchmarks/diffusion_tasks.py --device cuda                       # bundled checkpoint
    python benchmarks/diffusion_tasks.py --checkpoint DIR --device cuda --n-sections 16
    python benchmarks/diffusion_tasks.py --smoke                              # CPU, seconds-minutes
    python benchmarks/diffusion_tasks.py --device cpu --n-sections 3 --steps 20 --scaling 1,2,4,8 \
        --time-ns 1,2 --time-repeat 1 --time-warmup 0                         # CPU, ~11 min on 2 cores
                                                                              # with --misreg none; task 6 adds
                                                                              # 2 n_samples calls per section
    python benchmarks/diffusion_tasks.py --misreg=-1,2,0 ...                  # another misregistration

Prints tables and writes ``diffusion_tasks.json`` to ``$BENCH_OUT`` / ``$OUT`` / ``benchmarks/results``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Table, results_dir, time_call  # noqa: E402


def boundary_f1(pred: np.ndarray, truth: np.ndarray, tol: int = 1) -> float:
    """F1 of boolean boundary maps, a predicted pixel counting as correct within ``tol`` pixels of a true one
    (and vice versa for recall)."""
    from scipy.ndimage import binary_dilation

    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    st = np.ones((2 * tol + 1, 2 * tol + 1), bool)
    if pred.sum() == 0 or truth.sum() == 0:
        return float(pred.sum() == truth.sum())
    p = (pred & binary_dilation(truth, st)).sum() / pred.sum()
    r = (truth & binary_dilation(pred, st)).sum() / truth.sum()
    return float(2 * p * r / (p + r)) if p + r > 0 else 0.0


def nearest_upsample(lr: torch.Tensor, scale: int) -> torch.Tensor:
    return lr.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


def bicubic_upsample(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic interpolation of the continuous EBSD channels, aligned with point samples at
    ``scale * i + scale // 2``, decoded back to quaternions."""
    from diffusion.data import channels_to_quat, quat_to_channels
    from diffusion.operators import warp

    ch = quat_to_channels(lr)[None]
    H, W = lr.shape[0] * scale, lr.shape[1] * scale
    up = F.interpolate(ch, size=(H, W), mode="bicubic", align_corners=False).clamp(-1, 1)
    off = scale // 2 - (scale - 1) / 2
    up = warp(up, (off, off), 0.0) if off else up
    return channels_to_quat(up[0])


def mean_mis_deg(q: torch.Tensor, truth: torch.Tensor) -> float:
    from ebsd.orientation import misorientation_angle

    return float(misorientation_angle(torch.as_tensor(q).float(), truth, "6/mmm").rad2deg().mean())


def psnr(x: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((np.clip(x, 0, 1) - ref) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def ssim(x: np.ndarray, ref: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(np.mean([structural_similarity(np.clip(a, 0, 1), b, data_range=1.0) for a, b in zip(x, ref)]))


def nlm(noisy: np.ndarray) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    from diffusion.operators import estimate_noise_sigma

    out = []
    for im in noisy:
        s = estimate_noise_sigma(torch.from_numpy(im))
        out.append(denoise_nl_means(im, h=0.8 * s, sigma=s, patch_size=5, patch_distance=6, fast_mode=True))
    return np.stack(out).astype(np.float32)


def sobel_otsu_boundaries(pl: np.ndarray) -> np.ndarray:
    from skimage.filters import sobel, threshold_otsu

    g = np.sqrt(sum(sobel(im) ** 2 for im in pl))
    return g > threshold_otsu(g)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None, help="checkpoint directory (default: bundled data/diffusion)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--n-sections", type=int, default=16)
    ap.add_argument("--n-samples", type=int, default=8, help="posterior samples for tasks 1-3")
    ap.add_argument("--scaling", default="1,2,4,8,16", help="n_samples values for task 4")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--pl-noise", type=float, default=0.05, help="PL read noise for task 1 (full-scale units)")
    ap.add_argument("--denoise-noise", type=float, default=0.1, help="PL read noise for task 2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-ns", default="1,8,16", help="n_samples values for the timing table")
    ap.add_argument("--time-repeat", type=int, default=3, help="timed repeats per n_samples")
    ap.add_argument("--time-warmup", type=int, default=1, help="untimed warm-up calls per n_samples")
    ap.add_argument("--sparse-ebsd", action="store_true", help="also denoise with 5%% sparse EBSD points")
    ap.add_argument("--smoke", action="store_true", help="tiny untrained model, 1 section, few steps (CPU)")
    ap.add_argument("--misreg", default="1.5,-1.0,1.0",
                    help="task 6: 'DY,DX,ANGLE' = PL misregistration (full-resolution pixels, degrees) applied with "
                         "diffusion.operators.warp, or 'none' to skip the task (negative first value: --misreg=-1,...)")
    ap.add_argument("--misreg-n-samples", type=int, default=None,
                    help="posterior samples per task-6 call (default: --n-samples); task 6 makes 2 calls per section")
    ap.add_argument("--json", default="diffusion_tasks.json")
    args = ap.parse_args(argv)
    misreg = _parse_misreg(args.misreg, ap)
    if args.misreg_n_samples is not None and args.misreg_n_samples < 1:
        ap.error(f"--misreg-n-samples must be >= 1, got {args.misreg_n_samples}")

    from diffusion.data import heldout_sections
    from diffusion.model import ModelConfig, MultimodalDiffusion, boundary_map, pl_only_boundaries
    from diffusion.pl import pl_images

    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        torch.manual_seed(args.seed)
        model = MultimodalDiffusion(ModelConfig.tiny()).to(dev)
        args.n_sections, args.steps, args.n_samples, args.scaling, args.time_ns = 1, 3, 2, "1,2", "1,2"
    else:
        model = MultimodalDiffusion.load(args.checkpoint, device=dev)
    size = model.config.size
    pc = model.config.pl
    truth = heldout_sections(args.n_sections, size=size)
    scale = 4
    g = torch.Generator().manual_seed(args.seed)

    def draw_seed():
        return int(torch.randint(0, 2 ** 31 - 1, (1,), generator=g))

    def pl_of(q, noise, seed=None):
        return pl_images(q, angles=pc.angles, analyser=pc.analyser, blur_sigma=pc.blur_sigma,
                         read_noise=noise, seed=draw_seed() if seed is None else seed)

    common = dict(steps=args.steps, seed=args.seed)
    # ---- task 1 + 4: super-resolution
    sr = {k: {"mis": [], "f1": []} for k in ("nearest", "bicubic (channels)", "PL-physics snap only (ablation)", "ours")}
    scal_ns = [int(s) for s in args.scaling.split(",")]
    scal = {n: {"mis": [], "f1": []} for n in scal_ns}
    sr_seeds, sr_regs = [], []   # per section: PL noise seed (reused by task 6), registration estimate
    task_seconds = {}
    t_task = time.perf_counter()
    for q in truth:
        lr = q[scale // 2::scale, scale // 2::scale]
        sr_seeds.append(draw_seed())
        pl = pl_of(q, args.pl_noise, sr_seeds[-1])
        tb = boundary_map(q).numpy()
        outs = {"nearest": nearest_upsample(lr, scale), "bicubic (channels)": bicubic_upsample(lr, scale)}
        res = model.super_resolve(lr, pl, scale=scale, n_samples=max(scal_ns + [args.n_samples]), **common)
        sr_regs.append(dict(res.registration))
        for n in scal_ns:  # the first n samples of the same batch (same seed): nested subsets
            sub = _recombine(res, n, lr, scale, pc)
            scal[n]["mis"].append(mean_mis_deg(sub, q))
            scal[n]["f1"].append(boundary_f1(boundary_map(sub).numpy(), tb))
        outs["ours"] = _recombine(res, args.n_samples, lr, scale, pc)
        # ablation: the projection's PL term alone (nearby measured orientation whose rendered PL fits best)
        outs["PL-physics snap only (ablation)"] = \
            _snap_pl_only(lr, scale, res.projection_pl, pc)
        for k, v in outs.items():
            sr[k]["mis"].append(mean_mis_deg(v, q))
            sr[k]["f1"].append(boundary_f1(boundary_map(v).numpy(), tb))
    task_seconds["super-resolution + scaling (tasks 1, 4)"] = time.perf_counter() - t_task
    t1 = Table(f"x{scale} EBSD super-resolution with PL (read noise {args.pl_noise}), {len(truth)} sections "
               f"{size}x{size}, n_samples={args.n_samples}", ["method", "mean misorientation (deg)", "boundary F1"])
    for k, v in sr.items():
        t1.add([k, float(np.mean(v["mis"])), float(np.mean(v["f1"]))])
    t1.print()
    t4 = Table("inference-time scaling (super-resolution)", ["n_samples", "mean misorientation (deg)", "boundary F1"])
    for n, v in scal.items():
        t4.add([n, float(np.mean(v["mis"])), float(np.mean(v["f1"]))])
    t4.print()

    # ---- task 6: misregistration tolerance (same sections, same PL noise realisation as task 1)
    mis_tables, mis_json = [], None
    if misreg is not None:
        t_task = time.perf_counter()
        mis_tables, mis_json = _misreg_task(model, truth, misreg, sr_seeds, sr_regs, sr, args, scale, pc, common)
        task_seconds["misregistration (task 6)"] = time.perf_counter() - t_task

    # ---- task 2 + 3: PL denoising, boundaries from PL alone
    den_keys = ["noisy", "non-local means", "ours (PL only)"] + (["ours (+5% EBSD)"] if args.sparse_ebsd else [])
    den = {k: {"psnr": [], "ssim": []} for k in den_keys}
    gb = {k: [] for k in ("Sobel+Otsu on NLM PL", "ours: pl-edges (Sobel+Otsu on posterior-mean PL)",
                          "ours: caxis (sampled EBSD, median 3, 15 deg)")}
    for q in truth:
        clean = pl_of(q, 0.0).numpy()
        noisy = pl_of(q, args.denoise_noise).numpy()
        sparse = q.clone()
        sparse[torch.rand(q.shape[:2], generator=g) > 0.05] = float("nan")
        nl = nlm(noisy)
        outs = {"noisy": noisy, "non-local means": nl,
                "ours (PL only)": model.denoise_pl(noisy, n_samples=args.n_samples, **common)}
        xs = model.last_result.samples   # = the samples grain_boundaries(noisy) draws (same call, same seed)
        if args.sparse_ebsd:
            outs["ours (+5% EBSD)"] = model.denoise_pl(noisy, ebsd_sparse=sparse.numpy(), n_samples=args.n_samples,
                                                       **common)
        for k, v in outs.items():
            den[k]["psnr"].append(psnr(v, clean))
            den[k]["ssim"].append(ssim(v, clean))
        tb = boundary_map(q).numpy()
        gb["Sobel+Otsu on NLM PL"].append(boundary_f1(sobel_otsu_boundaries(nl), tb))
        gb["ours: pl-edges (Sobel+Otsu on posterior-mean PL)"].append(
            boundary_f1(pl_only_boundaries(xs, "pl-edges").numpy(), tb))
        gb["ours: caxis (sampled EBSD, median 3, 15 deg)"].append(
            boundary_f1(pl_only_boundaries(xs, "caxis", 15.0, 3).numpy(), tb))
    t2 = Table(f"PL denoising (read noise {args.denoise_noise})", ["method", "PSNR (dB)", "SSIM"])
    for k, v in den.items():
        t2.add([k, float(np.mean(v["psnr"])), float(np.mean(v["ssim"]))])
    t2.print()
    t3 = Table("grain boundaries from noisy PL alone", ["method", "boundary F1"])
    for k, v in gb.items():
        t3.add([k, float(np.mean(v))])
    t3.print()

    # ---- task 5: sampling time
    t5 = Table(f"super-resolution sampling time on {dev} ({args.steps} steps, {size}x{size})",
               ["n_samples", "seconds / call", "spread"])
    q = truth[0]
    lr, pl = q[scale // 2::scale, scale // 2::scale], pl_of(q, args.pl_noise)
    for n in [int(s) for s in args.time_ns.split(",")]:
        tm = time_call(lambda: model.super_resolve(lr, pl, scale=scale, n_samples=n, **common),
                       warmup=args.time_warmup,
                       repeat=1 if args.smoke else args.time_repeat)
        t5.add([n, tm.median, tm.spread])
    t5.print()
    path = results_dir() / args.json
    extra = {"tables": {t.title: t.as_records() for t in (t1, t2, t3, t4, t5, *mis_tables)},
             "checkpoint": str(args.checkpoint or "bundled"), "config": model.config.to_dict(),
             "args": vars(args), "task_seconds": task_seconds}
    if mis_json is not None:
        extra["misregistration"] = mis_json
    t1.write_json(path, extra=extra)
    print(f"\nwrote {path}")
    return 0


def _parse_misreg(text: str, ap) -> tuple[float, float, float] | None:
    """``"DY,DX,ANGLE"`` -> ``(dy, dx, angle_deg)``; ``"none"`` -> ``None``."""
    if text.strip().lower() in ("none", "off", ""):
        return None
    try:
        v = tuple(float(t) for t in text.split(","))
    except ValueError:
        v = ()
    if len(v) != 3 or not all(math.isfinite(t) for t in v):
        ap.error(f"--misreg must be 'DY,DX,ANGLE' (pixels, pixels, degrees) or 'none', got {text!r}")
    return v


def _misreg_task(model, truth, misreg, seeds, task1_regs, sr, args, scale, pc, common):
    """Task 6. For every section ``q`` (with task 1's PL noise seed), the observed PL is

        pl_obs = warp(PL_clean(q), (dy, dx), radians(angle)) + read noise

    (:func:`diffusion.operators.warp`: output pixel ``p`` takes the clean PL at ``R(angle) (p - c) + c - (dy, dx)``,
    so a positive shift moves the PL content down/right). :meth:`MultimodalDiffusion.register` returns
    ``(dy, dx, angle_deg)`` "such that ``warp(PL_true, (dy, dx), angle)`` is the observed PL", i.e. the same
    parameterisation, NOT its inverse: a perfect estimate equals the applied ``misreg`` component by component,
    and the error is ``estimate - true``. Returns ``([results table, registration table], json dict)``."""
    import inspect

    from diffusion.model import boundary_map
    from diffusion.operators import warp
    from diffusion.pl import add_camera_noise, pl_images

    dy, dx, ang = misreg
    sig = inspect.signature(model.super_resolve).parameters
    ms, mr = sig["max_shift"].default, sig["max_rotation"].default
    n = args.misreg_n_samples or args.n_samples
    on_key = f"ours, registration on (max_shift {ms:g} px, max_rotation {mr:g} deg)"
    off_key = "ours, registration off (max_shift 0, max_rotation 0)"
    keys = ["nearest", "bicubic (channels)", off_key, on_key]
    acc = {k: {"mis": [], "f1": []} for k in keys}
    ests = []
    for q, seed in zip(truth, seeds):
        lr = q[scale // 2::scale, scale // 2::scale]
        clean = pl_images(q, angles=pc.angles, analyser=pc.analyser, blur_sigma=pc.blur_sigma)
        warped = warp(clean[None], (dy, dx), math.radians(ang))[0]
        # the same noise draw as pl_images(q, read_noise=..., seed=seed) in task 1, added after the warp
        pl = add_camera_noise(warped, None, args.pl_noise, torch.Generator().manual_seed(seed)).float()
        tb = boundary_map(q).numpy()
        outs = {"nearest": nearest_upsample(lr, scale), "bicubic (channels)": bicubic_upsample(lr, scale)}
        res_off = model.super_resolve(lr, pl, scale=scale, n_samples=n, max_shift=0.0, max_rotation=0.0, **common)
        res_on = model.super_resolve(lr, pl, scale=scale, n_samples=n, max_shift=ms, max_rotation=mr, **common)
        outs[off_key], outs[on_key] = res_off.quaternions, res_on.quaternions
        ests.append(dict(res_on.registration))
        for k, v in outs.items():
            acc[k]["mis"].append(mean_mis_deg(v, q))
            acc[k]["f1"].append(boundary_f1(boundary_map(torch.as_tensor(v)).numpy(), tb))
    title = (f"misregistration: x{scale} super-resolution with PL warped by dy={dy:g}, dx={dx:g} px, angle={ang:g} deg "
             f"(read noise {args.pl_noise}), {len(truth)} sections, n_samples={n}")
    t6 = Table(title, ["method", "mean misorientation (deg)", "boundary F1"])
    for k in keys:
        t6.add([k, float(np.mean(acc[k]["mis"])), float(np.mean(acc[k]["f1"]))])
    t6.add([f"reference: ours on registered PL (task 1, n_samples={args.n_samples})",
            float(np.mean(sr["ours"]["mis"])), float(np.mean(sr["ours"]["f1"]))])
    t6.print()
    true = {"dy": dy, "dx": dx, "angle_deg": ang}
    zero = {"dy": 0.0, "dx": 0.0, "angle_deg": 0.0}
    t7 = Table("misregistration estimate by register() (same convention as the applied warp; error = est - true)",
               ["PL", "quantity", "true", "estimated (mean)", "mean |error|", "max |error|", "sections exact"])
    summary = {}
    for label, tr, es in (("warped (task 6)", true, ests), ("unwarped (task 1)", zero, task1_regs)):
        summary[label] = {}
        for k in ("dy", "dx", "angle_deg"):
            e = np.array([r[k] for r in es], float)
            err = np.abs(e - tr[k])
            t7.add([label, k, tr[k], float(e.mean()), float(err.mean()), float(err.max()), int((err < 1e-6).sum())])
            summary[label][k] = {"true": tr[k], "estimates": e.tolist(), "mean_abs_error": float(err.mean()),
                                 "max_abs_error": float(err.max())}
    t7.print()
    js = {"true": true, "search": {"max_shift": ms, "max_rotation": mr, "shift_step": 0.5, "angle_step": 1.0},
          "n_samples": n, "estimates_warped": ests, "estimates_unwarped_task1": task1_regs,
          "per_section": acc, "summary": summary}
    return [t6, t7], js


def _recombine(res, n: int, lr: torch.Tensor, scale: int, pc) -> torch.Tensor:
    """The model's default output (projection of the mean of the samples) from the first ``n`` samples."""
    from diffusion.model import snap_to_lowres

    return snap_to_lowres(res.samples[:n].mean(0), lr, scale, pl=res.projection_pl, pl_config=pc)


def _snap_pl_only(lr: torch.Tensor, scale: int, pl_model: torch.Tensor, pc) -> torch.Tensor:
    """No diffusion: each pixel takes the nearby measured orientation whose rendered PL best fits the observed
    PL (the projection's physics term alone: the channel term is weighted down to nothing)."""
    from diffusion.data import quat_to_channels
    from diffusion.model import snap_to_lowres

    H, W = lr.shape[0] * scale, lr.shape[1] * scale
    return snap_to_lowres(quat_to_channels(lr).new_zeros(9, H, W), lr, scale, pl=pl_model, pl_config=pc,
                          pl_weight=1e6)


if __name__ == "__main__":
    sys.exit(main())
