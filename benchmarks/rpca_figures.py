"""Figures for ScaledGD tensor RPCA, written to benchmarks/figures/:

* ``rpca_convergence_kappa.png``: relative error ||X_k - X*|| / ||X*|| vs iteration for kappa in {1, 5, 10, 20}
  (default thresholds; the rate should not depend on kappa);
* ``rpca_phase_transition.png``: success rate (final relative error <= 1e-4) over corruption fraction alpha x
  Tucker rank r (ranks (r, r, r)), a few seeded trials per cell.

    python benchmarks/rpca_figures.py                 # ~ a few minutes on 1 CPU thread
    python benchmarks/rpca_figures.py --quick         # smaller grid
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from tensorkernels import tucker_to_tensor  # noqa: E402
from tensorrpca import rpca  # noqa: E402
from tensorrpca.scaledgd import scaledgd_step, spectral_init  # noqa: E402
from tensorrpca.synthetic import synthetic_rpca  # noqa: E402

FIG = Path(__file__).resolve().parent / "figures"


def error_curve(p, ranks, n_iter):
    """Run the same iteration as rpca (its default parameters) and record the error to X* each step."""
    params = rpca(p.Y, ranks, max_iter=0).params
    factors, core = spectral_init(p.Y, ranks, params.zeta0)
    nX = p.low_rank.norm()
    errs = [float((tucker_to_tensor(core, factors) - p.low_rank).norm() / nX)]
    for k in range(n_iter):
        factors, core = scaledgd_step(p.Y, factors, core, params.zeta1 * params.rho**k, params.eta)
        errs.append(float((tucker_to_tensor(core, factors) - p.low_rank).norm() / nX))
    return errs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(FIG))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")

    shape, ranks = (60, 70, 80), (3, 4, 5)
    curves = {}
    for kappa in (1, 5, 10, 20):
        p = synthetic_rpca(shape, ranks, kappa=kappa, alpha=0.2, seed=0)
        curves[kappa] = error_curve(p, ranks, 60 if args.quick else 100)
        print(f"kappa={kappa}: error after 50 iterations {curves[kappa][50]:.2e}", flush=True)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for kappa, e in curves.items():
        ax.semilogy(e, label=f"kappa = {kappa}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("||X_k - X*||_F / ||X*||_F")
    ax.set_title(f"ScaledGD tensor RPCA, {shape}, ranks {ranks}, alpha 0.2", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "rpca_convergence_kappa.png", dpi=120)
    plt.close(fig)

    n = 40
    rank_list = [2, 8, 16] if args.quick else [2, 5, 10, 15, 20]
    alphas = [0.2, 0.6, 0.8] if args.quick else [0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9]
    trials = 1 if args.quick else 2
    rate = np.zeros((len(rank_list), len(alphas)))
    for i, r in enumerate(rank_list):
        for j, a in enumerate(alphas):
            ok = 0
            for t in range(trials):
                p = synthetic_rpca((n, n, n), (r, r, r), kappa=5, alpha=a, seed=100 + t)
                res = rpca(p.Y, (r, r, r), max_iter=150)
                ok += float((res.low_rank - p.low_rank).norm() / p.low_rank.norm()) <= 1e-4
            rate[i, j] = ok / trials
        print(f"rank {r}: success {rate[i].tolist()}", flush=True)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    im = ax.imshow(rate, origin="lower", cmap="gray", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_yticks(range(len(rank_list)), [str(r) for r in rank_list])
    ax.set_xlabel("corruption fraction alpha")
    ax.set_ylabel("Tucker rank r (ranks (r, r, r))")
    ax.set_title(f"success rate (rel. error <= 1e-4), {n}^3, kappa 5, {trials} trials", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "rpca_phase_transition.png", dpi=120)
    plt.close(fig)
    (out / "rpca_figures.json").write_text(json.dumps(
        {"curves": {str(k): v for k, v in curves.items()}, "ranks": rank_list, "alphas": alphas,
         "success_rate": rate.tolist(), "trials": trials}, indent=1))
    print(f"wrote {out}/rpca_convergence_kappa.png, rpca_phase_transition.png, rpca_figures.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
