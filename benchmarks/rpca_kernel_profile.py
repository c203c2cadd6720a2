"""Where one rpca call spends its GPU time, kernel by kernel (torch.profiler), and its initialisation's parts.

    python benchmarks/rpca_kernel_profile.py --size 512 --out $JOB_OUT/rpca_kernel_profile.json

Prints (and writes as JSON): the phase timings of one warm default run; the CUDA kernels of one eager ScaledGD
step (count, total GPU time, the largest by total); the same for the initialisation (zeta0 walk, spectral
init, zeta1); timings of the initialisation's parts (clip walk rounds, one HOSVD per mode, small eigh/QR).
A diagnosis tool: benchmarks/gpu_rpca.py holds the numbers recorded in RESULTS.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_rpca import _sync, wall  # noqa: E402

import tensorrpca._init as rinit  # noqa: E402
from tensorkernels import threshold_residual, tucker_to_tensor  # noqa: E402
from tensorrpca import rpca  # noqa: E402
from tensorrpca.scaledgd import _GraphStep, scaledgd_step, spectral_init  # noqa: E402
from tensorrpca.synthetic import synthetic_rpca  # noqa: E402


def timed(fn, repeat=5):
    """(median ms, last result) of fn(), CUDA-synchronised: gpu_rpca's ``wall`` in milliseconds."""
    secs, res = wall(fn, warmup=1, repeat=repeat)
    return secs * 1e3, res


def kernels_of(fn, top=25):
    """(count, total GPU ms, [(name, calls, total ms)]) of the CUDA kernels launched by fn()."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    _sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        _sync()
    rows = {}
    n = 0
    for e in prof.events():
        dev_type = getattr(e, "device_type", None)
        if dev_type is None or "CUDA" not in str(dev_type):
            continue
        if getattr(e, "is_user_annotation", False):
            continue
        n += 1
        name = e.name[:90]
        c, t = rows.get(name, (0, 0.0))
        rows[name] = (c + 1, t + e.device_time / 1e3 if hasattr(e, "device_time") else t + e.cuda_time / 1e3)
    total = sum(t for _, t in rows.values())
    ranked = sorted(((k, c, t) for k, (c, t) in rows.items()), key=lambda x: -x[2])[:top]
    return n, total, ranked


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--ranks", default="10,10,10")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    ranks = tuple(int(r) for r in a.ranks.split(","))
    shape = (a.size,) * len(ranks)
    p = synthetic_rpca(shape, ranks, kappa=5.0, alpha=0.1, seed=0, dtype=torch.float32, device=dev)
    Y = p.Y
    out = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "shape": shape, "ranks": ranks}
    warnings.simplefilter("ignore")

    # whole call, phases
    rpca(Y, ranks)
    res = rpca(Y, ranks, profile=True)
    out["phases_ms"] = {k: v * 1e3 for k, v in res.timings.items()}
    out["n_iter"] = res.n_iter
    print("phases (ms):", {k: round(v, 2) for k, v in out["phases_ms"].items()}, "iterations", res.n_iter)

    # initialisation parts
    parts = {}
    z0 = rinit.default_zeta0(Y, ranks)
    parts["default_zeta0"], _ = timed(lambda: rinit.default_zeta0(Y, ranks))
    rounds = [0]
    orig = rinit.hosvd

    def counting(*args, **kw):
        rounds[0] += 1
        return orig(*args, **kw)

    rinit.hosvd = counting
    rinit.default_zeta0(Y, ranks)
    rinit.hosvd = orig
    parts["zeta0_rounds"] = rounds[0]
    D = threshold_residual(Y, None, z0, out="residual").neg_()
    parts["threshold_residual"], _ = timed(lambda: threshold_residual(Y, None, z0, out="residual"))
    parts["hosvd"], (f, c) = timed(lambda: rinit.hosvd(D, ranks))
    parts["hosvd_exact"], _ = timed(lambda: rinit.hosvd(D, ranks, randomized=False))
    parts["tucker_to_tensor"], X0 = timed(lambda: tucker_to_tensor(c, f))
    parts["inf_norm"], _ = timed(lambda: torch.linalg.vector_norm(X0, ord=float("inf")))
    parts["default_zeta1"], _ = timed(lambda: rinit.default_zeta1(Y, X0))
    for m in range(len(shape)):
        M = rinit.unfold(D, m)
        parts[f"unfold_mode{m}"], _ = timed(lambda: rinit.unfold(D, m).contiguous())
        parts[f"randomized_factor_mode{m}"], _ = timed(lambda: rinit._randomized_factor(M, ranks[m], seed=m))
    n = shape[0]
    G = torch.randn(n, n, device=dev, dtype=torch.float64)
    G = G @ G.t()
    parts["eigh_f64_n"], _ = timed(lambda: torch.linalg.eigh(G))
    g20 = G[:20, :20].contiguous()
    parts["eigh_f64_20"], _ = timed(lambda: torch.linalg.eigh(g20))
    A = torch.randn(n, 20, device=dev)
    parts["qr_n_x20"], _ = timed(lambda: torch.linalg.qr(A))
    s10 = torch.randn(6, 10, 10, device=dev)
    s10 = s10 @ s10.transpose(1, 2) + torch.eye(10, device=dev)
    b10 = torch.randn(6, 10, 512, device=dev)
    parts["solve_ex_batch6_10"], _ = timed(lambda: torch.linalg.solve_ex(s10, b10))
    parts["solve_ex_single_10"], _ = timed(lambda: torch.linalg.solve_ex(s10[0], b10[0]))
    parts["cholesky_ex_batch6_10"], _ = timed(lambda: torch.linalg.cholesky_ex(s10))
    out["parts_ms"] = parts
    print("parts (ms):", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in parts.items()})

    # kernels of the initialisation
    for name, fn in [
        ("init_zeta0", lambda: rinit.default_zeta0(Y, ranks)),
        ("init_spectral", lambda: spectral_init(Y, ranks, z0)),
        ("init_zeta1", lambda: rinit.default_zeta1(Y, tucker_to_tensor(c, f))),
        ("hosvd", lambda: rinit.hosvd(D, ranks)),
    ]:
        k, tot, top = kernels_of(fn, top=15)
        out[f"kernels_{name}"] = {"count": k, "gpu_ms": tot, "top": top}
        print(f"\n== {name}: {k} kernels, {tot:.2f} ms GPU")
        for row in top:
            print(f"  {row[2]:8.3f} ms {row[1]:4d}x  {row[0]}")

    # the expansion H on each backend (GPU kernel time)
    from tensorkernels import multi_mode_product

    for be in ("triton", "torch"):
        k, tot, _ = kernels_of(lambda: multi_mode_product(c, list(f[:-1]), modes=list(range(len(f) - 1)),
                                                          backend=be))
        out[f"H_{be}_gpu_ms"] = tot
        print(f"H = G x U (all but the last mode), {be}: {k} kernels, {tot * 1e3:.1f} us GPU")

    # one eager step
    z1 = res.params.zeta1
    k, tot, top = kernels_of(lambda: scaledgd_step(Y, f, c, z1, 0.5), top=40)
    out["kernels_step"] = {"count": k, "gpu_ms": tot, "top": top}
    print(f"\n== eager step: {k} kernels, {tot:.3f} ms GPU")
    for row in top:
        print(f"  {row[2]:8.4f} ms {row[1]:4d}x  {row[0]}")
    from tensorrpca.scaledgd import relative_change

    def body():
        nf, nc = scaledgd_step(Y, f, c, z1, 0.5)
        return relative_change((f, c), (nf, nc))

    k, tot, top = kernels_of(body, top=200)
    out["kernels_step_and_change"] = {"count": k, "gpu_ms": tot, "top": top}
    print(f"\n== eager step + relative change: {k} kernels, {tot:.3f} ms GPU")
    for row in top:
        print(f"  {row[2] * 1e3:8.1f} us {row[1]:4d}x  {row[0]}")
    if dev == "cuda":
        gs = _GraphStep(Y, f, c, z1, 0.5, "hard", None)
        out["graph_capture_ms"], _ = timed(lambda: _GraphStep(Y, f, c, z1, 0.5, "hard", None), repeat=3)
        out["graph_step_ms"], _ = timed(lambda: [gs.graph.replay() for _ in range(20)], repeat=3)
        out["graph_step_ms"] /= 20
        print("graph capture ms", out["graph_capture_ms"], "graph step ms", out["graph_step_ms"])
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
