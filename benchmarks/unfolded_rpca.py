"""Deep-unfolded self-supervised RPCA (learned hyperparameters) vs supervised unfolding vs rpca's defaults vs a
random search with the same label-free objective and compute budget, on held-out synthetic tensors.

For each corruption level ``alpha`` (fraction of corrupted entries, magnitude 10x the mean |X*|):
train on ``--n-train`` synthetic observations (no labels; the supervised model also gets X*), and on one
observation only (the data-starved case); then run each set of hyperparameters on ``--n-test`` held-out tensors
for ``--iters`` exact ScaledGD iterations and report the relative error ||X - X*||_F / ||X*||_F after the
``K`` unrolled layers and after ``--iters`` iterations (median over the test tensors), and the iterations
needed to reach 1e-4 (median; ``inf`` when not reached).

The search baseline gets the same compute budget as the self-supervised fit on the same observations:
``--search-budget time`` (default): trials continue until the fit's wall time is used up (each trial is one
exact K-iteration forward pass per observation); ``count``: 3 E trials (one training step, forward + backward
through K layers, counted as 3 forward passes, so a fit of E epochs buys 3 E trials). Wall times and trial
counts are in the JSON.

    python benchmarks/unfolded_rpca.py                 # 30^3, ranks (8,8,8), alpha 0.3,0.5,0.6 (~5 min on 2 cores)
    python benchmarks/unfolded_rpca.py --smoke         # tiny, same code path (~30 s)

Prints the table (and markdown) and writes JSON (default benchmarks/results/unfolded_rpca.json).
"""
from __future__ import annotations

import argparse
import os
import sys

_THREADS = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--threads=")), None) or (
    sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1")
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = _THREADS
import math  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Table, results_dir  # noqa: E402

from tensorkernels import tucker_to_tensor  # noqa: E402
from tensorrpca import RPCAConvergenceWarning, UnfoldedRPCA  # noqa: E402
from tensorrpca.synthetic import synthetic_rpca  # noqa: E402
from tensorrpca.unfolded import random_search  # noqa: E402


def trajectory(model: UnfoldedRPCA, prob, n_iter: int, K: int) -> dict:
    """Relative error to X* after every exact iteration of ``model``'s hyperparameters."""
    X = prob.low_rank
    nX = float(X.norm())
    errs: list[float] = []

    def cb(k, factors, core):
        errs.append(float((tucker_to_tensor(core, factors) - X).norm()) / nX)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RPCAConvergenceWarning)
        model(prob.Y, n_iter=n_iter, callback=cb)
    errs += [errs[-1] if errs else math.nan] * (n_iter - len(errs))
    errs = [e if math.isfinite(e) else math.inf for e in errs]
    hit = next((k + 1 for k, e in enumerate(errs) if e <= 1e-4), math.inf)
    return {"err_K": errs[K - 1], "err_final": errs[-1], "iters_to_1e-4": hit}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=30)
    ap.add_argument("--ranks", default="8,8,8")
    ap.add_argument("--kappa", type=float, default=5.0)
    ap.add_argument("--magnitude", type=float, default=10.0)
    ap.add_argument("--alphas", default="0.3,0.5,0.6")
    ap.add_argument("--layers", type=int, default=30, help="unrolled layers K")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--n-train", type=int, default=3)
    ap.add_argument("--n-test", type=int, default=3)
    ap.add_argument("--iters", type=int, default=150, help="exact iterations run on the test tensors")
    ap.add_argument("--search-budget", choices=("time", "count"), default="time")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, same code path")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.smoke:
        args.size, args.ranks, args.alphas, args.layers = 14, "3,3,3", "0.3,0.5", 6
        args.epochs, args.n_test, args.iters = 3, 2, 20
    torch.set_num_threads(args.threads)
    ranks = tuple(int(r) for r in args.ranks.split(","))
    shape = (args.size,) * len(ranks)
    alphas = [float(a) for a in args.alphas.split(",")]
    K = args.layers
    gen = dict(kappa=args.kappa, magnitude=args.magnitude)

    table = Table(
        f"Unfolded RPCA: {shape}, ranks {ranks}, kappa {args.kappa:g}, magnitude {args.magnitude:g}, "
        f"K={K} layers, {args.n_train} training observations, {args.n_test} held-out tensors, "
        f"{args.iters} iterations",
        ["alpha", "method", f"err after K={K}", f"err after {args.iters}", "iters to 1e-4", "train s",
         "zeta0", "zeta1", "rho", "eta"],
    )
    records = []
    t_all = time.perf_counter()
    for ia, alpha in enumerate(alphas):
        train = [synthetic_rpca(shape, ranks, alpha=alpha, seed=1000 * ia + s, **gen) for s in range(args.n_train)]
        test = [synthetic_rpca(shape, ranks, alpha=alpha, seed=1000 * ia + 500 + s, **gen) for s in range(args.n_test)]
        Ys = [p.Y for p in train]
        models: dict[str, tuple[UnfoldedRPCA, float]] = {}
        models["defaults (rpca)"] = (UnfoldedRPCA(ranks, n_layers=K), 0.0)
        fit_kw = dict(epochs=args.epochs, lr=args.lr, layers="all", seed=0)
        t0 = time.perf_counter()
        m = UnfoldedRPCA(ranks, n_layers=K).fit(Ys, **fit_kw)
        models["self-supervised"] = (m, time.perf_counter() - t0)
        t0 = time.perf_counter()
        m = UnfoldedRPCA(ranks, n_layers=K).fit(Ys, targets=[p.low_rank for p in train], **fit_kw)
        models["supervised"] = (m, time.perf_counter() - t0)
        t0 = time.perf_counter()
        m = UnfoldedRPCA(ranks, n_layers=K).fit(Ys[:1], **fit_kw)
        models["self-supervised, 1 obs."] = (m, time.perf_counter() - t0)
        if args.search_budget == "time":  # as many trials as fit in the self-supervised fit's wall time
            sr = random_search(Ys, ranks, n_layers=K, n_trials=100 * args.epochs, seed=0,
                               max_seconds=models["self-supervised"][1])
        else:
            sr = random_search(Ys, ranks, n_layers=K, n_trials=3 * args.epochs, seed=0)
        print(f"alpha={alpha:g} random search: {len(sr.trials)} trials in {sr.time:.1f} s", flush=True)
        models["random search"] = (UnfoldedRPCA(ranks, n_layers=K, params=sr.params), sr.time)
        for name, (model, secs) in models.items():
            runs = [trajectory(model, p, args.iters, K) for p in test]
            med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
            hp = model.hyperparameters()
            table.add([alpha, name, med["err_K"], med["err_final"], med["iters_to_1e-4"], secs,
                       hp["zeta0"] if hp["zeta0"] is not None else "data", hp["zeta1"] if hp["zeta1"] is not None
                       else "data", hp["rho"], hp["eta"]])
            records.append({"alpha": alpha, "method": name, "train_seconds": secs, "hyperparameters": hp,
                            "search_trials": len(sr.trials) if name == "random search" else None,
                            "median": med, "per_test": runs,
                            "fit_history": [{k: r[k] for k in ("epoch", "loss", "time")} for r in model.fit_history]})
            print(f"alpha={alpha:g} {name:26s} err@K {med['err_K']:.2e}  err@{args.iters} {med['err_final']:.2e}  "
                  f"iters->1e-4 {med['iters_to_1e-4']}  ({secs:.1f} s)", flush=True)
    table.print()
    print()
    print(table.markdown())

    # the claims: self-supervised within 2x of supervised, better than the defaults where those fail
    checks = []
    for alpha in alphas:
        r = {rec["method"]: rec["median"] for rec in records if rec["alpha"] == alpha}
        d, s, sup = r["defaults (rpca)"], r["self-supervised"], r["supervised"]
        for when in ("err_K", "err_final"):
            floor = 1e-8  # below this both have converged to the data's precision
            within2 = s[when] <= 2 * max(sup[when], floor)
            defaults_fail = d[when] > 1e-3
            checks.append({"alpha": alpha, "at": when, "self_within_2x_of_supervised": within2,
                           "defaults_fail": defaults_fail,
                           "self_better_than_defaults": s[when] < d[when]})
    for c in checks:
        print(c)
    out = Path(args.out) if args.out else results_dir() / ("unfolded_rpca_smoke.json" if args.smoke else "unfolded_rpca.json")
    table.write_json(out, extra={"cases": records, "checks": checks, "shape": shape, "ranks": ranks,
                                 "kappa": args.kappa, "magnitude": args.magnitude, "layers": K,
                                 "epochs": args.epochs, "lr": args.lr, "n_train": args.n_train,
                                 "n_test": args.n_test, "iters": args.iters,
                                 "total_seconds": time.perf_counter() - t_all})
    print(f"\nwrote {out}  ({time.perf_counter() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
