"""Train the slice-recovery transformer (self-supervised, synthetic volumes only).

    python -m ebsd.train_recovery --out data/slice_recovery --minutes 7 --seed 0      # GPU (bf16 autocast)
    python -m ebsd.train_recovery --out /tmp/tiny --smoke                             # ~1 minute on a CPU

Data are generated on the fly by DataLoader workers (:mod:`ebsd.recovery.data`; volume seeds
>= ``TRAIN_SEED_BASE``, never the benchmark's held-out seeds). The whole run, data start-up and the final
evaluation included, stays within ``--minutes``. Written to ``--out``:

* ``model.safetensors`` + ``config.json`` (model hyper-parameters, inference settings, and under
  ``"training"`` every argument, the exact command, seed, steps, final losses, device and versions);
* ``loss_curve.json`` + ``loss_curve.png`` (training loss per logged step, validation loss and mean
  misorientation on hidden voxels);
* ``reference.safetensors``: a fixed validation input, its mask and the model's output at the end of
  training (float32, eval mode), so a test can check that the saved checkpoint reproduces it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ebsd.train_recovery", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory for the checkpoint and curves")
    p.add_argument("--minutes", type=float, default=7.0, help="wall-clock budget for the whole run")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, batch order and data streams (< 1000)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--d-model", type=int, default=80)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp-ratio", type=float, default=2.0)
    p.add_argument("--tile", type=int, default=48, help="training tile (y, x) size")
    p.add_argument("--context", type=int, default=2, help="known slices each side of the hidden run")
    p.add_argument("--visible-weight", type=float, default=0.1, help="loss weight on voxels not hidden")
    p.add_argument("--grain-size", type=float, nargs=2, default=(3.0, 18.0), help="mean grain size range (voxels)")
    p.add_argument("--noise-deg", type=float, nargs=2, default=(0.0, 1.5), help="per-voxel noise range (deg)")
    p.add_argument("--gradient-deg", type=float, nargs=2, default=(0.05, 0.8),
                   help="intragranular gradient range (deg per voxel; real maps: 0.2-0.4, see "
                        "data/slice_recovery/calibration.json)")
    p.add_argument("--misindexed", type=float, nargs=2, default=(0.0, 0.08),
                   help="range of the fraction of misindexed voxels (random or pseudo-symmetric)")
    p.add_argument("--z-ratio", type=float, nargs=2, default=(0.7, 3.0),
                   help="range of the section spacing in in-plane steps (grains shorter along z)")
    p.add_argument("--unindexed", type=float, nargs=2, default=(0.0, 0.05), help="unindexed fraction range")
    p.add_argument("--volume-shape", type=int, nargs=3, default=(20, 80, 80))
    p.add_argument("--symmetries", default="m-3m", help="comma-separated Laue classes to train on")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: CPU cores - 2)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--val-batches", type=int, default=4)
    p.add_argument("--tune-volumes", type=int, default=6,
                   help="validation volumes for choosing the projection weights after training (0: keep defaults)")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    p.add_argument("--init", default=None,
                   help="checkpoint folder to start from (fine-tuning: its model config is kept, --d-model etc. ignored)")
    p.add_argument("--smoke", action="store_true", help="tiny model and data, about one minute on a CPU")
    return p


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except Exception:
        return None


def _lr_at(step: int, frac: float, args) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to 5 % over the time budget."""
    warm = min(1.0, (step + 1) / max(1, args.warmup_steps))
    return args.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def _plot(curve: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    tr = curve["train"]
    ax[0].plot([r["step"] for r in tr], [r["loss"] for r in tr], label="train (hidden voxels)")
    if curve["val"]:
        ax[0].plot([r["step"] for r in curve["val"]], [r["loss"] for r in curve["val"]], "o-", label="validation")
        ax[1].plot([r["step"] for r in curve["val"]], [r["mis_deg"] for r in curve["val"]], "o-")
    ax[0].set_yscale("log"); ax[0].set_xlabel("step"); ax[0].set_ylabel("1 - cos(theta/2)"); ax[0].legend()
    ax[1].set_xlabel("step"); ax[1].set_ylabel("mean misorientation on hidden voxels (deg)")
    ax[1].set_title("validation (before projection)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    args = _parser().parse_args(argv)
    if args.smoke:
        args.minutes = min(args.minutes, 1.0)
        args.d_model, args.depth, args.heads, args.batch_size, args.tile = 32, 2, 2, 4, 16
        args.volume_shape, args.warmup_steps, args.log_every, args.val_every = (12, 40, 40), 20, 10, 50
        args.val_batches, args.tune_volumes = 1, min(1, args.tune_volumes)
        if args.workers is None:
            args.workers = 1
    if not 0 <= args.seed < 1000:
        raise SystemExit("--seed must be in 0..999 (data streams are seed * 1000 + worker)")
    from ebsd.recovery._common import cos_half_misorientation, symmetry_operators
    from ebsd.recovery.api import DEFAULT_INFERENCE
    from ebsd.recovery.data import HELD_OUT_SEED_LIMIT, TRAIN_SEED_BASE, SampleConfig, SampleDataset, SampleStream
    from ebsd.recovery.model import ModelConfig, SliceRecoveryTransformer, prepare_input, symmetric_quaternion_loss

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 2) - 2)
    out = Path(args.out)
    if not args.overwrite and any((out / n).exists() for n in ("model.safetensors", "config.json")):
        raise SystemExit(f"--out {out} already holds a checkpoint: choose a new folder or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    budget = args.minutes * 60.0
    # final validation, reference output, projection tuning, saving, plotting
    reserve = (8.0 + 20.0 * args.tune_volumes) if args.smoke else 25.0 + 8.0 * args.tune_volumes

    scfg = SampleConfig(tile=args.tile, context=args.context, volume_shape=tuple(args.volume_shape),
                        grain_size=tuple(args.grain_size), symmetries=tuple(args.symmetries.split(",")),
                        noise_deg=tuple(args.noise_deg), unindexed=tuple(args.unindexed),
                        gradient_deg=tuple(args.gradient_deg), misindexed=tuple(args.misindexed),
                        z_ratio=tuple(args.z_ratio))
    mcfg = ModelConfig(d_model=args.d_model, depth=args.depth, heads=args.heads, mlp_ratio=args.mlp_ratio,
                       max_z=max(32, 3 + 2 * args.context), max_xy=max(64, args.tile))
    init_info = None
    if args.init:
        from ebsd.recovery.model import load_model

        model = load_model(args.init).to(device)
        mcfg = model.config
        init_cfg = json.loads((Path(args.init) / "config.json").read_text())
        init_info = {"from": str(args.init), "training": init_cfg.get("training", {})}
        if mcfg.max_z < 3 + 2 * args.context or mcfg.max_xy < args.tile:
            raise SystemExit(f"--init {args.init}: its model takes windows up to z {mcfg.max_z}, xy {mcfg.max_xy}; "
                             f"--tile {args.tile} / --context {args.context} do not fit")
        print(f"[train] init: weights from {args.init}", flush=True)
    else:
        model = SliceRecoveryTransformer(mcfg).to(device)
    print(f"[train] device={device} params={model.n_parameters:,} workers={workers} budget={args.minutes} min",
          flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))

    # validation batches: a fixed stream id no worker uses (workers use seed * 1000 + i, i < 1000)
    val_stream = SampleStream(scfg, max(2, args.batch_size // 2), seed=999_999)
    val = [next(val_stream) for _ in range(args.val_batches)]

    loader = torch.utils.data.DataLoader(
        SampleDataset(scfg, args.batch_size, args.seed), batch_size=None, num_workers=workers,
        pin_memory=cuda, prefetch_factor=4 if workers > 0 else None, persistent_workers=workers > 0,
    )
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else \
        (lambda: torch.autocast("cpu", enabled=False))

    def forward(batch):
        q = batch["q"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        hidden = batch["hidden"].to(device, non_blocking=True)
        target = batch["target"].to(device, non_blocking=True)
        sym = batch["symmetry"]
        x = prepare_input(q, sym)
        with autocast():
            pred = model(x, mask)
        weight = torch.where(hidden, 1.0, args.visible_weight)
        loss = symmetric_quaternion_loss(pred, target, sym, weight)
        return loss, pred, hidden, target, sym, x, mask

    @torch.no_grad()
    def evaluate() -> dict:
        model.eval()
        losses, mis = [], []
        for b in val:
            _, pred, hidden, target, sym, _, _ = forward(b)
            losses.append(float(symmetric_quaternion_loss(pred[hidden], target[hidden], sym)))
            c = cos_half_misorientation(pred[hidden], target[hidden], symmetry_operators(sym, pred))
            mis.append(float(torch.rad2deg(2 * torch.acos(c.clamp(max=1.0))).mean()))
        model.train()
        return {"loss": sum(losses) / len(losses), "mis_deg": sum(mis) / len(mis)}

    curve = {"train": [], "val": []}
    step, t_loop, seen = 0, None, 0
    model.train()
    data_wait = 0.0
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        batch = next(it)
        data_wait += time.perf_counter() - t0
        if t_loop is None:
            t_loop = time.perf_counter()
            print(f"[train] first batch after {t_loop - t_start:.1f} s", flush=True)
        elapsed = time.perf_counter() - t_start
        if elapsed > budget - reserve:
            break
        frac = (time.perf_counter() - t_loop) / max(1.0, budget - reserve - (t_loop - t_start))
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, frac, args)
        loss, *_ = forward(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen += batch["q"].shape[0]
        if step % args.log_every == 0:
            rec = {"step": step, "time_s": round(time.perf_counter() - t_start, 2), "loss": float(loss.detach()),
                   "lr": opt.param_groups[0]["lr"], "data_wait_s": round(data_wait, 2)}
            curve["train"].append(rec)
            print(f"[train] step {step} t={rec['time_s']:.0f}s loss={rec['loss']:.5f} lr={rec['lr']:.2e} "
                  f"data_wait={data_wait:.1f}s", flush=True)
        if step % args.val_every == 0:
            v = {"step": step, "time_s": round(time.perf_counter() - t_start, 2), **evaluate()}
            curve["val"].append(v)
            print(f"[val] step {step} loss={v['loss']:.5f} mis={v['mis_deg']:.2f} deg", flush=True)
    del it, loader

    final = evaluate()
    curve["val"].append({"step": step, "time_s": round(time.perf_counter() - t_start, 2), **final})
    print(f"[val] final step {step}: loss={final['loss']:.5f} mis={final['mis_deg']:.2f} deg", flush=True)

    # reference output for the reproducibility test (float32, eval mode, CPU and this device)
    model.eval()
    ref_b = {k: (v[:2] if torch.is_tensor(v) else v) for k, v in val[0].items()}
    with torch.no_grad():
        x = prepare_input(ref_b["q"].to(device), ref_b["symmetry"])
        ref_out = model.float()(x, ref_b["mask"].to(device))
    from safetensors.torch import save_file

    save_file({"input": x.cpu().contiguous(), "mask": ref_b["mask"].contiguous(),
               "output": ref_out.cpu().contiguous()}, str(out / "reference.safetensors"))

    inference = dict(DEFAULT_INFERENCE, tile=args.tile, context=args.context)
    tuning = None
    if args.tune_volumes > 0:
        from ebsd.recovery.tune import DEFAULT_GRID, tune_projection

        t0 = time.perf_counter()
        model.inference_settings = inference
        best, results = tune_projection(model, n_volumes=args.tune_volumes)
        inference.update(best)
        tuning = {"best": best, "grid": DEFAULT_GRID, "results": results, "seconds": round(time.perf_counter() - t0, 1),
                  "volumes": f"{args.tune_volumes} x (16, 64, 64), seeds VALIDATION_SEED_BASE + k, grain sizes "
                             "6/10/16, gaps 1/3, twins 0.3, 1 deg noise"}
        print(f"[tune] projection weights {best} in {tuning['seconds']} s", flush=True)
    wall = time.perf_counter() - t_start
    training = {
        "command": " ".join(["python -m ebsd.train_recovery", *(argv if argv is not None else sys.argv[1:])]),
        "args": vars(args), "seed": args.seed, "steps": step, "samples_seen": seen,
        "wall_s": round(wall, 1), "data_wait_s": round(data_wait, 1), "final_val": final,
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "max_gpu_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None,
        "torch": torch.__version__, "git_commit": _git_commit(), "precision": "bf16 autocast" if cuda else "fp32",
        "sample_config": asdict(scfg),
        "data_seeds": f"volume seeds TRAIN_SEED_BASE ({TRAIN_SEED_BASE}) + stream * 1000003 + k, stream = seed*1000 + "
                      f"worker; validation stream 999999; held-out (benchmark) seeds < {HELD_OUT_SEED_LIMIT}",
        "reference": "reference.safetensors: input/mask/output of the final model (eval, fp32) on 2 validation windows",
        "projection_tuning": tuning,
        "init": init_info,
    }
    model.cpu().save(out, overwrite=args.overwrite, extra={"inference": inference, "training": training, "n_parameters": model.n_parameters})
    (out / "loss_curve.json").write_text(json.dumps(curve, indent=1))
    _plot(curve, out / "loss_curve.png")
    mem = f", max GPU memory {training['max_gpu_memory_gib']} GiB" if cuda else ""
    print(f"[train] done: {step} steps in {wall:.0f} s{mem} -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
