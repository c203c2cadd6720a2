"""Train the multimodal PL/EBSD diffusion prior on synthetic hexagonal sections.

GPU (the command the shipped checkpoint was trained with is in ``data/diffusion/config.json``
``train_info.command``)::

    python -m diffusion.train --out data/diffusion --minutes 7 --device cuda

CPU smoke test (about a minute)::

    python -m diffusion.train --smoke --out /tmp/diffusion-smoke

Data: ``--n-volumes`` synthetic volumes (:func:`ebsd.synthetic.synthetic_volume`, 6/mmm) are generated up
front on all CPU cores, sectioned every ``stride`` slices; each training batch applies a random element of the
dihedral group of the square to the orientation maps (with the matching sample-frame rotation of the
orientations) and computes EBSD channels and the PL stack on the device. Standard DDPM noise-prediction loss,
AdamW, EMA weights (saved), bf16 autocast on CUDA. Writes ``model.safetensors`` (fp16 EMA weights),
``config.json`` and ``loss.json`` / ``loss.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

# proper rotations r (quaternions) that realise the image flips / transpose on the orientations, with an
# inversion absorbed by the centrosymmetric Laue class: flip x <-> pi about x, flip y <-> pi about y,
# transpose (x <-> y) <-> pi about (1, -1, 0)/sqrt(2)
_R_FLIPX = (0.0, 1.0, 0.0, 0.0)
_R_FLIPY = (0.0, 0.0, 1.0, 0.0)
_R_TRANS = (0.0, 1 / math.sqrt(2), -1 / math.sqrt(2), 0.0)


def augment(q: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random dihedral transform of a batch of orientation maps ``(B, H, W, 4)`` (per sample), with
    orientations updated as ``q' = q * conj(r)`` (passive: the sample frame is rotated by ``r``)."""
    from ebsd.orientation import quat_conjugate, quat_multiply

    B = q.shape[0]
    flags = torch.rand((3, B), generator=generator) < 0.5
    out = q.clone()
    for k, (r, fn) in enumerate(((_R_TRANS, lambda t: t.transpose(-3, -2)), (_R_FLIPX, lambda t: t.flip(-2)),
                                 (_R_FLIPY, lambda t: t.flip(-3)))):
        sel = flags[k].nonzero().flatten().to(q.device)
        if len(sel):
            rq = quat_conjugate(q.new_tensor(r))
            out[sel] = quat_multiply(fn(out[sel]), rq)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m diffusion.train", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory (checkpoint, config, loss curve)")
    ap.add_argument("--minutes", type=float, default=7.0, help="wall-clock budget of the training loop")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--n-volumes", type=int, default=384, help="synthetic volumes generated up front")
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--stride", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    ap.add_argument("--workers", type=int, default=None, help="data-generation processes (default: all cores)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, tiny data, ~1 minute on CPU")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--init", default=None,
                    help="checkpoint folder to start from (fine-tuning; its model config is kept, --size ignored)")
    args = ap.parse_args(argv)

    from .data import DataConfig, make_pair, quaternion_sections
    from .model import ModelConfig, MultimodalDiffusion, training_scheduler

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.smoke:
        cfg = ModelConfig.tiny()
        args.size, args.n_volumes, args.depth, args.stride = cfg.size, 8, 8, 2
        args.batch, args.minutes = 16, min(args.minutes, 0.75)
    else:
        cfg = ModelConfig(size=args.size)
    out = Path(args.out)
    if (out / "model.safetensors").exists() and not args.overwrite:
        print(f"error: {out}/model.safetensors exists; pass --overwrite", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    dcfg = DataConfig(size=args.size, depth=args.depth, stride=args.stride, pl=cfg.pl)
    # orientations only: images are computed per batch on the device, after augmentation
    q_all = quaternion_sections(args.n_volumes, dcfg, args.seed, args.workers)
    t_data = time.time() - t0
    print(f"data: {tuple(q_all.shape)} orientation sections in {t_data:.1f} s", flush=True)
    q_all = q_all.to(dev)

    init_info = None
    if args.init:
        model = MultimodalDiffusion.load(args.init)
        init_info = {"from": str(args.init), "train_info": dict(model.config.train_info)}
        cfg = model.config
        if cfg.size != dcfg.size:
            print(f"error: --init {args.init} was trained at size {cfg.size}; pass --size {cfg.size}", file=sys.stderr)
            return 2
        print(f"init: weights from {args.init} ({init_info['train_info'].get('steps')} steps)", flush=True)
    else:
        model = MultimodalDiffusion(cfg)
    unet = model.unet.float().to(dev).train().requires_grad_(True)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"unet: {n_params / 1e6:.2f} M parameters on {dev}", flush=True)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    sched = training_scheduler(cfg)
    ac = sched.alphas_cumprod.to(dev)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    use_amp = dev.type == "cuda"
    losses: list[tuple[int, float, float]] = []
    step, t_start = 0, time.time()
    budget = args.minutes * 60
    warm = 200
    run_loss = None
    while True:
        el = time.time() - t_start
        if el > budget or (args.max_steps and step >= args.max_steps):
            break
        idx = torch.randint(0, q_all.shape[0], (args.batch,), generator=gen).to(dev)
        with torch.no_grad():
            x0 = make_pair(augment(q_all[idx], gen), cfg.pl)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        t = torch.randint(0, cfg.num_train_timesteps, (args.batch,), generator=gen).to(dev)
        a = ac[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        # lr: linear warm-up, then cosine over the time budget
        frac = min(1.0, el / budget)
        lr = args.lr * min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g_ in opt.param_groups:
            g_["lr"] = lr
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            pred = unet(xt, t).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(args.ema, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - d)
        step += 1
        if step % 25 == 0 or step == 1:
            lv = float(loss.detach())
            run_loss = lv if run_loss is None else 0.9 * run_loss + 0.1 * lv
            losses.append((step, time.time() - t_start, lv))
            if step % 250 == 0 or step == 1:
                print(f"step {step:6d}  {time.time() - t_start:6.0f} s  loss {lv:.4f}  (avg {run_loss:.4f})  lr {lr:.2e}",
                      flush=True)
    t_train = time.time() - t_start
    mem = torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None
    cfg.train_info = {
        "command": "python -m diffusion.train " + " ".join(argv if argv is not None else sys.argv[1:]),
        "steps": step, "batch": args.batch, "train_seconds": round(t_train, 1), "data_seconds": round(t_data, 1),
        "n_sections": int(q_all.shape[0]), "n_params": n_params, "final_loss_avg": run_loss,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "max_memory_gib": round(mem, 2) if mem else None, "seed": args.seed,
        "torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
        "init": init_info,
    }
    ema.to("cpu")
    MultimodalDiffusion(cfg, unet=ema).save(out, overwrite=True)
    (out / "loss.json").write_text(json.dumps({"step_seconds_loss": losses, "train_info": cfg.train_info}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        s = np.array(losses)
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.semilogy(s[:, 0], s[:, 2], lw=0.5, alpha=0.5)
        k = min(20, len(s))
        if k > 1:
            ax.semilogy(s[k - 1:, 0], np.convolve(s[:, 2], np.ones(k) / k, mode="valid"))
        ax.set_xlabel("step")
        ax.set_ylabel("noise-prediction MSE")
        fig.tight_layout()
        fig.savefig(out / "loss.png", dpi=100)
    except Exception as exc:  # pragma: no cover
        print(f"(no loss plot: {exc})")
    print(f"done: {step} steps in {t_train:.0f} s, avg loss {run_loss:.4f}, "
          f"peak memory {mem if mem is None else round(mem, 2)} GiB -> {out}", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
