"""README figure: x4 EBSD super-resolution with PL by the bundled multimodal diffusion prior.

Panels (IPF-Z colours, :func:`ebsd.orientation.ipf_colors`, 6/mmm): the low-resolution EBSD (every 4th pixel,
shown nearest-upsampled), the noisy PL stack (three polariser angles as RGB), bicubic interpolation of the
continuous channels, ours, and the truth, on a held-out synthetic section. Titles give the mean
misorientation to the truth.

Usage::

    python benchmarks/diffusion_figure.py --out docs/diffusion_example.png            # CPU, about 1-2 min
    python benchmarks/diffusion_figure.py --smoke --out /tmp/fig.png                  # tiny untrained model
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs/diffusion_example.png")
    ap.add_argument("--checkpoint", default=None, help="checkpoint directory (default: bundled data/diffusion)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--n-samples", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--pl-noise", type=float, default=0.05)
    ap.add_argument("--section-seed", type=int, default=2024, help="synthetic volume seed of the section shown")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny untrained model, 16x16, 2 steps")
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusion_tasks import bicubic_upsample, mean_mis_deg, nearest_upsample

    from diffusion.data import heldout_sections
    from diffusion.model import ModelConfig, MultimodalDiffusion
    from diffusion.pl import pl_images
    from ebsd.orientation import ipf_colors

    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        torch.manual_seed(0)
        model = MultimodalDiffusion(ModelConfig.tiny()).to(dev)
        args.steps, args.n_samples = 2, 2
    else:
        model = MultimodalDiffusion.load(args.checkpoint, device=dev)
    pc, scale = model.config.pl, 4
    q = heldout_sections(1, size=model.config.size, seed=args.section_seed)[0]
    lr = q[scale // 2::scale, scale // 2::scale]
    pl = pl_images(q, angles=pc.angles, analyser=pc.analyser, blur_sigma=pc.blur_sigma, read_noise=args.pl_noise,
                   seed=args.seed)
    res = model.super_resolve(lr, pl, scale=scale, n_samples=args.n_samples, steps=args.steps, seed=args.seed)
    panels = [("low-res EBSD (x4)", nearest_upsample(lr, scale)), ("PL (0, 60, 120 deg)", None),
              ("bicubic (channels)", bicubic_upsample(lr, scale)), (f"ours ({args.n_samples} samples)", res.quaternions),
              ("truth", q)]
    fig, axs = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.3))
    for ax, (title, qq) in zip(axs, panels):
        if qq is None:
            ax.imshow(np.clip(pl[[0, 2, 4]].permute(1, 2, 0).numpy(), 0, 1), interpolation="nearest")
        else:
            ax.imshow(ipf_colors(qq, "6/mmm").numpy(), interpolation="nearest")
            if title != "truth":
                title += f"\n{mean_mis_deg(qq, q):.1f} deg mean misorientation"
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.suptitle("x4 EBSD super-resolution with polarized light (IPF-Z, held-out synthetic alpha-Ti section)",
                 fontsize=10)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out} ({res.seconds:.1f} s sampling)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
