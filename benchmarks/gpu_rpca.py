"""GPU numbers for tensor RPCA and the kernels it builds on (one process, < 3 minutes on an H100).

    python benchmarks/gpu_rpca.py --out $OUT/gpu_rpca.json        # CUDA: 512^3 float32, ranks (10,10,10)
    python benchmarks/gpu_rpca.py --smoke --out /tmp/gpu_rpca.json  # tiny, on CPU (Triton interpreter if set)

Reports
* per-iteration time of ScaledGD (:func:`tensorrpca.scaledgd.scaledgd_step`): torch path (mode products with
  matmul, unfused thresholding, X and R materialised) vs the fused Triton path; agreement of the two
  paths after one step; the step replayed from a CUDA graph, as :func:`tensorrpca.rpca` runs it on CUDA;
* the memory-bandwidth floor: bytes that must move per iteration (one read of Y; the rest is r/I smaller)
  divided by the device copy bandwidth measured here (``dst.copy_(src)``, 2 bytes moved per byte copied);
* a full ``rpca`` run on the same problem: iterations, seconds, relative error vs X*;
* tensorkernels foundation: threshold_residual and tucker_to_tensor / mode_product, Triton vs torch reference on a
  512^3 float32 tensor (max relative error, time).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Table, results_dir  # noqa: E402

from tensorkernels import mode_product, threshold_residual, tucker_to_tensor  # noqa: E402
from tensorrpca import rpca  # noqa: E402
from tensorrpca.scaledgd import _GraphStep, scaledgd_step, spectral_init  # noqa: E402
from tensorrpca.synthetic import synthetic_rpca  # noqa: E402


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench(fn, warmup=3, repeat=20) -> float:
    """Median seconds per call (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def maxrel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--ranks", default="10,10,10")
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--smoke", action="store_true", help="tiny problem on CPU (checks the script runs)")
    ap.add_argument("--no-full", action="store_true", help="skip the full rpca run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    dev = "cuda" if cuda else "cpu"
    size = 24 if args.smoke else args.size
    ranks = tuple(int(r) for r in args.ranks.split(","))
    if args.smoke:
        ranks = tuple(min(r, 3) for r in ranks)
    shape = (size,) * len(ranks)
    rep = 3 if args.smoke else 20
    can_triton = cuda or __import__("os").environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
    t_start = time.perf_counter()
    env = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "shape": shape, "ranks": ranks}
    print(f"== {env['device']}: {shape} float32, ranks {ranks}", flush=True)

    p = synthetic_rpca(shape, ranks, kappa=5, alpha=args.alpha, seed=0, dtype=torch.float32, device=dev)
    Y = p.Y
    nbytes = Y.numel() * Y.element_size()

    # --- memory bandwidth (device copy) and the per-iteration floor
    dst = torch.empty_like(Y)
    t_copy = bench(lambda: dst.copy_(Y), repeat=rep)
    bw = 2 * nbytes / t_copy
    del dst
    floor = nbytes / bw  # one read of Y per iteration
    print(f"copy bandwidth {bw / 1e12:.3f} TB/s; floor per iteration (one read of Y) {floor * 1e3:.3f} ms", flush=True)

    # --- one ScaledGD step, torch vs fused
    factors, core = spectral_init(Y, ranks, zeta0=1.25 * float(p.low_rank.abs().max()))
    zeta, eta = 0.5, 0.5
    table = Table(f"ScaledGD tensor RPCA per iteration, {shape} float32, ranks {ranks} ({env['device']})",
                  ["path", "ms / iteration", "x floor", "max rel. diff vs torch (1 step)"])
    ref_f, ref_c = scaledgd_step(Y, factors, core, zeta, eta, backend="torch")
    t_torch = bench(lambda: scaledgd_step(Y, factors, core, zeta, eta, backend="torch"), repeat=rep)
    table.add(["torch (matmul mode products, unfused threshold)", t_torch * 1e3, t_torch / floor, 0.0])
    results = {"copy_bandwidth_Bps": bw, "floor_s": floor, "torch_step_s": t_torch}
    if can_triton:
        f_f, f_c = scaledgd_step(Y, factors, core, zeta, eta, backend="triton")
        diff = max([maxrel(a, b) for a, b in zip(f_f, ref_f)] + [maxrel(f_c, ref_c)])
        t_fused = bench(lambda: scaledgd_step(Y, factors, core, zeta, eta, backend="triton"), repeat=rep)
        table.add(["fused Triton residual pass", t_fused * 1e3, t_fused / floor, diff])
        results.update(fused_step_s=t_fused, fused_vs_torch_maxrel=diff)
        try:
            gs = _GraphStep(Y, factors, core, zeta, eta, "hard", "triton")
            t_graph = bench(lambda: gs(zeta), repeat=rep)  # includes reading the relative change (a sync)
            table.add(["fused Triton + CUDA graph (as rpca runs it)", t_graph * 1e3, t_graph / floor, diff])
            results.update(graph_step_s=t_graph, cuda_graph="ok")
            del gs
        except Exception as exc:  # pragma: no cover
            results["cuda_graph"] = f"{type(exc).__name__}: {exc}"[:200]
        # the residual pass alone
        from tensorkernels.rpca_fused import residual_contract

        from tensorrpca.scaledgd import _as3
        from tensorkernels import multi_mode_product

        H = _as3(multi_mode_product(core, list(factors[:-1]), modes=list(range(len(shape) - 1))))
        args3 = (_as3(Y), H, factors[-1], factors[-2], zeta)
        t_pass = bench(lambda: residual_contract(*args3, backend="triton"), repeat=rep)
        t_pass_torch = bench(lambda: residual_contract(*args3, backend="torch"), repeat=rep)
        results.update(fused_pass_s=t_pass, torch_pass_s=t_pass_torch)
        table.add(["  residual pass only, fused", t_pass * 1e3, t_pass / floor, ""])
        table.add(["  residual pass only, torch", t_pass_torch * 1e3, t_pass_torch / floor, ""])
    table.print()

    # --- full rpca
    full = {}
    if not args.no_full:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _sync()
            t0 = time.perf_counter()
            res = rpca(Y, ranks)
            _sync()
            secs = time.perf_counter() - t0
        err = float((res.low_rank.double() - p.low_rank.double()).norm() / p.low_rank.double().norm())
        full = {"seconds": secs, "n_iter": res.n_iter, "rel_error": err, "converged": res.converged,
                "params": vars(res.params)}
        print(f"full rpca (defaults): {res.n_iter} iterations, {secs:.2f} s, rel. error {err:.2e}", flush=True)
        del res

    # --- tensorkernels foundation
    kt = Table(f"kernels on {shape} float32 ({env['device']}): Triton vs torch reference",
               ["kernel", "torch ms", "triton ms", "auto ms", "max rel. error"])
    X = p.low_rank
    kt_rows = []

    def add(name, f_torch, f_triton, f_auto):
        """torch reference, forced Triton, and the automatic choice (what library code gets by default)."""
        a = f_torch()
        t_t = bench(f_torch, repeat=rep)
        if can_triton:
            b = f_triton()
            t_k = bench(f_triton, repeat=rep)
            e = maxrel(b, a)
        else:
            t_k, e = float("nan"), float("nan")
        t_a = bench(f_auto, repeat=rep)
        kt.add([name, t_t * 1e3, t_k * 1e3, t_a * 1e3, e])
        kt_rows.append({"kernel": name, "torch_s": t_t, "triton_s": t_k, "auto_s": t_a, "max_rel_error": e})

    add("threshold_residual (hard, residual)",
        lambda: threshold_residual(Y, X, 0.5, out="residual", backend="torch"),
        lambda: threshold_residual(Y, X, 0.5, out="residual", backend="triton"),
        lambda: threshold_residual(Y, X, 0.5, out="residual"))
    G, Us = p.core.float(), [U.float() for U in p.factors]
    add("tucker_to_tensor (core -> full)",
        lambda: tucker_to_tensor(G, Us, backend="torch"), lambda: tucker_to_tensor(G, Us, backend="triton"),
        lambda: tucker_to_tensor(G, Us))
    add("mode_product R x_1 U^T (full -> r)",
        lambda: mode_product(Y, Us[0], 0, transpose=True, backend="torch"),
        lambda: mode_product(Y, Us[0], 0, transpose=True, backend="triton"),
        lambda: mode_product(Y, Us[0], 0, transpose=True))
    add("mode_product R x_2 U^T (full -> r)",
        lambda: mode_product(Y, Us[1], 1, transpose=True, backend="torch"),
        lambda: mode_product(Y, Us[1], 1, transpose=True, backend="triton"),
        lambda: mode_product(Y, Us[1], 1, transpose=True))
    kt.print()

    out = Path(args.out) if args.out else results_dir() / "gpu_rpca.json"
    table.write_json(out, extra={"step": results, "full_rpca": full, "kernels": kt_rows, "setup": env,
                                 "wall_s": time.perf_counter() - t_start})
    print(f"\nwrote {out} ({time.perf_counter() - t_start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
