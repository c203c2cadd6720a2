"""GPU numbers for tensor RPCA: end to end next to the memory floor and tensorly, a profile, per-iteration parts.

    python benchmarks/gpu_rpca.py --out $JOB_OUT/gpu_rpca.json    # CUDA: 256^3 and 512^3 float32, ranks (10,10,10)
    TRITON_INTERPRET=1 python benchmarks/gpu_rpca.py --smoke --out /tmp/gpu_rpca.json   # tiny, on CPU, same code

One process, one problem per size (rank (10,10,10), kappa 5, 10 % corruption of magnitude 10, float32):

* memory bandwidth measured here with a device-to-device copy (``dst.copy_(src)``: 2 bytes move per byte
  copied); the per-iteration floor is one read of ``Y`` at that bandwidth (everything else an iteration touches
  is r/I smaller), the end-to-end floor that times the iteration count;
* end to end (median of 3 warm runs, CUDA-synchronised): ``rpca`` with its defaults, with ``params="learned"``,
  with each contraction precision of the fused pass (``tf32x3`` / ``tf32`` / ``bf16``; the difference of the
  result to the ``tf32x3`` one is reported), with the exact (Gram) spectral initialisation instead of the
  randomized one, with 30 % of the entries missing (``mask=``), and plain torch (``backend="torch"``, no graph);
  tensorly's ``robust_pca`` on the GPU (pytorch backend, reg_E swept, the best kept) at the smallest size;
* a profile of one default run (``rpca(..., profile=True)``: phases synchronised) and the per-iteration parts:
  the fused pass alone per contraction precision, one graph-replayed step with a host sync (the old stopping
  rule), steps as ``rpca`` runs them (pipelined), and replays without any sync (GPU time of a step).

Each section is guarded: a failure is recorded in the JSON and the rest still runs; sections past ``--budget``
seconds are skipped (and say so).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Table, results_dir  # noqa: E402

import tensorrpca._init as rinit  # noqa: E402
from tensorkernels import mode_product, multi_mode_product, residual_contract, threshold_residual, tucker_to_tensor  # noqa: E402
from tensorkernels.rpca_fused import residual_gradients  # noqa: E402
from tensorrpca import rpca  # noqa: E402
from tensorrpca.scaledgd import _as3, _GraphStep, default_params, scaledgd_step, spectral_init  # noqa: E402
from tensorrpca.synthetic import synthetic_rpca  # noqa: E402

PRECISIONS = ("tf32x3", "tf32", "bf16")


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


def wall(fn, warmup=1, repeat=3):
    """(median wall seconds, last result) of a whole call, CUDA-synchronised."""
    res = None
    for _ in range(warmup):
        res = fn()
    ts = []
    for _ in range(repeat):
        _sync()
        t0 = time.perf_counter()
        res = fn()
        _sync()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2], res


def maxrel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def relerr(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


class contract_precision:
    """Set the contraction precision of the fused pass for a block: the kernel's default and the one ScaledGD's
    steps ask for (``tensorrpca.scaledgd.STEP_CONTRACT_PRECISION``)."""

    def __init__(self, prec):
        self.prec = prec

    def __enter__(self):
        from tensorkernels import _triton_rpca
        import tensorrpca.scaledgd as sg

        self.old = (_triton_rpca.CONTRACT_PRECISION, sg.STEP_CONTRACT_PRECISION)
        if self.prec is not None:
            _triton_rpca.CONTRACT_PRECISION = sg.STEP_CONTRACT_PRECISION = self.prec

    def __exit__(self, *exc):
        from tensorkernels import _triton_rpca
        import tensorrpca.scaledgd as sg

        _triton_rpca.CONTRACT_PRECISION, sg.STEP_CONTRACT_PRECISION = self.old


class exact_init:
    """Spectral initialisation by full Gram eigendecompositions (the randomized range finder off)."""

    def __enter__(self):
        self.old = rinit.RANDOMIZED_MIN_ENTRIES
        rinit.RANDOMIZED_MIN_ENTRIES = 1 << 62

    def __exit__(self, *exc):
        rinit.RANDOMIZED_MIN_ENTRIES = self.old


def tensorly_gpu(Y, X, grid, n_iter_max=100):
    """tensorly's robust_pca with the pytorch backend on Y's device; the reg_E with the lowest error wins."""
    import tensorly as tl
    from tensorly.decomposition import robust_pca

    tl.set_backend("pytorch")
    sweep, best = [], None
    try:
        for reg in grid:
            _sync()
            t0 = time.perf_counter()
            D, E, errs = robust_pca(Y, reg_E=reg, n_iter_max=n_iter_max, tol=1e-6, verbose=0, return_errors=True)
            _sync()
            secs = time.perf_counter() - t0
            err = relerr(D, X)
            sweep.append({"reg_E": reg, "rel_error": err, "seconds": secs, "n_iter": len(errs)})
            print(f"  tensorly reg_E={reg:.4g}: err {err:.2e}, {secs:.2f} s", flush=True)
            if best is None or err < best["rel_error"]:
                best = sweep[-1]
            del D, E
    finally:
        tl.set_backend("numpy")
    return best, sweep


def graphed(fn):
    """``fn`` captured in a CUDA graph (after a warm-up call): a replay runs its kernels without the Python launch
    overhead, which would otherwise dominate the timing of a chain of small kernels."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--ranks", default="10,10,10")
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--kappa", type=float, default=5.0)
    ap.add_argument("--tensorly-size", type=int, default=256, help="size at which tensorly runs (0: skip)")
    ap.add_argument("--tl-grid", default="2,4,8", help="reg_E grid, multiples of 1/sqrt(max unfolding dim)")
    ap.add_argument("--budget", type=float, default=140.0, help="skip the remaining sections after this many s")
    ap.add_argument("--smoke", action="store_true", help="tiny problem on CPU (checks the script runs)")
    ap.add_argument("--skip", default="", help="comma list: skip sections whose name contains one of these")
    ap.add_argument("--switch", action="append", default=[],
                    help="MODULE.NAME=INT for a step switch, e.g. tensorkernels._triton_rpca.GRID_J_FASTEST=0 (recorded)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import importlib

    for sw in args.switch:
        target, value = sw.split("=")
        mod, name = target.rsplit(".", 1)
        setattr(importlib.import_module(mod), name, int(value))
    t_start = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.smoke
    dev = "cuda" if cuda else "cpu"
    ranks = tuple(int(r) for r in args.ranks.split(","))
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.smoke:
        sizes, ranks = [16], tuple(min(r, 3) for r in ranks)
        args.tensorly_size, args.budget = 16, float("inf")
    n_wall = 1 if args.smoke else 3
    rep = 3 if args.smoke else 20
    can_triton = cuda or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
    env = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "ranks": ranks, "sizes": sizes,
           "default_params": vars(default_params()), "torch": torch.__version__}
    try:
        import tensorrpca.scaledgd as sg

        env["default_contract_precision"] = sg.STEP_CONTRACT_PRECISION
        import tensorkernels._triton_rpca as tr

        env["step_switches"] = {"GRID_J_FASTEST": tr.GRID_J_FASTEST,
                                "DEFAULT_CONFIG": tr.DEFAULT_CONFIG, "OVERLAP_CHANGE": sg.OVERLAP_CHANGE,
                                "OVERLAP_PRECOND": sg.OVERLAP_PRECOND, "set": args.switch}
    except Exception:  # pragma: no cover
        pass
    print(f"== {env['device']}: sizes {sizes}, ranks {ranks}, kappa {args.kappa}, alpha {args.alpha}, float32",
          flush=True)
    out = {"setup": env, "sizes": {}, "errors": [], "skipped": []}
    out_path = Path(args.out) if args.out else results_dir() / "gpu_rpca.json"
    tables: list[Table] = []

    skip = [w for w in args.skip.split(",") if w]

    def section(name, fn):
        if any(w in name for w in skip):
            out["skipped"].append(name)
            return None
        if time.perf_counter() - t_start > args.budget:
            out["skipped"].append(name)
            print(f"-- skipped {name} (budget)", flush=True)
            return None
        try:
            return fn()
        except Exception as exc:  # keep going: one failing section must not lose the others
            out["errors"].append({"section": name, "error": f"{type(exc).__name__}: {exc}"[:500],
                                  "trace": traceback.format_exc()[-2000:]})
            print(f"!! {name} failed: {type(exc).__name__}: {exc}", flush=True)
            return None

    e2e = Table(f"rpca end to end, float32, ranks {ranks}, kappa {args.kappa:g}, alpha {args.alpha:g} "
                f"({env['device']}): median of 3 warm runs",
                ["size", "method", "seconds", "iterations", "rel. error", "floor (s)", "x floor", "note"])
    prof = Table(f"profile of one default rpca run ({env['device']}; phases CUDA-synchronised)",
                 ["size", "phase", "ms", "share", "note"])
    it_t = Table(f"one ScaledGD iteration ({env['device']}); floor = one read of Y at the measured bandwidth",
                 ["size", "path", "ms / iteration", "x floor", "note"])
    tables += [e2e, prof, it_t]

    for n in sizes:
        rec: dict = {}
        out["sizes"][str(n)] = rec
        shape = (n,) * len(ranks)
        p = synthetic_rpca(shape, ranks, kappa=args.kappa, alpha=args.alpha, seed=0, dtype=torch.float32, device=dev)
        Y, Xt = p.Y, p.low_rank
        nbytes = Y.numel() * Y.element_size()

        # --- bandwidth and floor
        dst = torch.empty_like(Y)
        t_copy = bench(lambda: dst.copy_(Y), repeat=rep)
        del dst
        bw = 2 * nbytes / t_copy
        floor = nbytes / bw
        rec.update(copy_bandwidth_Bps=bw, floor_per_iteration_s=floor, bytes_Y=nbytes)
        print(f"-- {shape}: copy bandwidth {bw / 1e12:.3f} TB/s, floor per iteration {floor * 1e3:.4f} ms", flush=True)

        def run_e2e(name, note="", ref=None, **kw):
            def call():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return rpca(Y, ranks, **kw)
            secs, res = wall(call, warmup=1, repeat=n_wall)
            err = relerr(res.low_rank, Xt)
            fl = res.n_iter * floor
            row = {"method": name, "seconds": secs, "n_iter": res.n_iter, "rel_error": err, "floor_s": fl,
                   "x_floor": secs / fl if fl else None, "converged": res.converged,
                   "params": {k: v for k, v in vars(res.params).items()}}
            if ref is not None:
                row["rel_diff_vs_tf32x3"] = relerr(res.low_rank, ref)
                note = (note + f" diff vs tf32x3 {row['rel_diff_vs_tf32x3']:.1e}").strip()
            e2e.add([n, name, secs, res.n_iter, err, fl, row["x_floor"], note])
            rec.setdefault("end_to_end", []).append(row)
            print(f"   {name}: {secs * 1e3:.1f} ms, {res.n_iter} it, err {err:.2e} {note}", flush=True)
            return res

        # --- end to end: the defaults first (the goal), then the variants
        section(f"{n}: defaults", lambda: run_e2e("ours, defaults"))

        def cold():  # every call captures its CUDA graph anew (what a first call on a tensor pays)
            import tensorrpca.scaledgd as sg

            size = sg.GRAPH_CACHE_SIZE
            sg.GRAPH_CACHE_SIZE = 0
            sg.clear_graph_cache()
            try:
                run_e2e("ours, defaults, graph captured in the call (no reuse)")
            finally:
                sg.GRAPH_CACHE_SIZE = size
        if cuda:
            section(f"{n}: defaults, no graph reuse", cold)
        section(f"{n}: learned", lambda: run_e2e('ours, params="learned"', params="learned"))
        ref = None
        if can_triton:
            def prec_rows():
                nonlocal ref
                with contract_precision("tf32x3"):
                    ref = run_e2e("ours, contractions tf32x3").low_rank
                for prec in PRECISIONS[1:]:
                    with contract_precision(prec):
                        run_e2e(f"ours, contractions {prec}", ref=ref)
            section(f"{n}: precisions", prec_rows)

        def exact():
            with exact_init():
                run_e2e("ours, exact (Gram) spectral init")
        section(f"{n}: exact init", exact)

        def masked():
            g = torch.Generator(device=dev).manual_seed(1)
            obs = torch.rand(shape, generator=g, device=dev) >= 0.3
            run_e2e("ours, 30 % missing (mask=)", note="error over all entries", mask=obs)
        section(f"{n}: mask", masked)
        section(f"{n}: plain torch", lambda: run_e2e("plain torch ScaledGD (backend='torch', no graph)",
                                                     backend="torch", cuda_graph=False))

        def graph_vs_eager():  # the pipelined graph loop must give the one-step-at-a-time answer
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a = rpca(Y, ranks)
                b = rpca(Y, ranks, cuda_graph=False)
            rec["graph_vs_eager"] = {"n_iter": [a.n_iter, b.n_iter], "rel_diff": relerr(a.low_rank, b.low_rank),
                                     "same_history": [h["zeta"] for h in a.history] == [h["zeta"] for h in b.history]}
            print(f"   graph (pipelined) vs eager: {rec['graph_vs_eager']}", flush=True)
        if cuda:
            section(f"{n}: graph vs eager", graph_vs_eager)

        # --- profile of a default run
        def profile():
            import tensorrpca.scaledgd as sg

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rpca(Y, ranks)
                res = rpca(Y, ranks, profile=True)  # a repeated call: the cached graph is replayed
                sg.clear_graph_cache()
                cold = rpca(Y, ranks, profile=True)  # a first call: the graph is captured
            for tag, r_ in (("", res), ("first call: ", cold)):
                tot = sum(r_.timings.values())
                rec["profile" if not tag else "profile_first_call"] = {
                    "timings_s": r_.timings, "n_iter": r_.n_iter, "total_s": tot}
                for ph, t in r_.timings.items():
                    note = ""
                    if ph == "iterations" and r_.n_iter:
                        note = f"{t / r_.n_iter * 1e3:.3f} ms / iteration = {t / r_.n_iter / floor:.1f} x floor"
                    prof.add([n, tag + ph, t * 1e3, t / tot, note])
                prof.add([n, tag + "total", tot * 1e3, 1.0, f"{r_.n_iter} iterations"])
        section(f"{n}: profile", profile)

        # --- per-iteration parts
        def per_iteration():
            factors, core = spectral_init(Y, ranks, zeta0=1.25 * float(Xt.abs().max()))
            zeta, eta = 0.5, 0.5
            parts = {}
            t = bench(lambda: scaledgd_step(Y, factors, core, zeta, eta, backend="torch"), repeat=rep)
            it_t.add([n, "torch step, eager (matmul mode products, unfused threshold)", t * 1e3, t / floor, ""])
            parts["torch_step_s"] = t
            if not can_triton:
                rec["iteration"] = parts
                return
            H = _as3(multi_mode_product(core, list(factors[:-1]), modes=list(range(len(shape) - 1))))
            a3 = (_as3(Y), H, factors[-1], factors[-2], zeta)
            ref64 = residual_contract(*(x.double() for x in a3[:4]), zeta, backend="torch")
            for prec in PRECISIONS:
                with contract_precision(prec):
                    got = residual_contract(*a3, backend="triton")
                    e = max(maxrel(got[0], ref64[0]), maxrel(got[1], ref64[1]))
                    t = bench(lambda: residual_contract(*a3, backend="triton"), repeat=rep)
                it_t.add([n, f"fused residual pass alone, contractions {prec}", t * 1e3, t / floor,
                          f"max rel. err vs fp64 {e:.1e}"])
                parts[f"pass_{prec}_s"] = t
                parts[f"pass_{prec}_maxrel"] = e
            # what the step runs: the fused pass with its partials laid out for one GEMM over the leading modes,
            # that GEMM and the partial sums: every T_i = R x_{j != i} U_j^T
            refT = residual_gradients(Y.double(), core.double(), [U.double() for U in factors], zeta,
                                      backend="torch")
            for prec in PRECISIONS:
                with contract_precision(prec):
                    got = residual_gradients(Y, core, factors, zeta, backend="triton")
                    e = max(maxrel(g, w) for g, w in zip(got, refT))
                    fn = lambda: residual_gradients(Y, core, factors, zeta, backend="triton")  # noqa: E731
                    t = bench(graphed(fn) if cuda else fn, repeat=rep)
                it_t.add([n, f"gradient tensors T_i (H, fused pass, one GEMM over the leading modes, partial sums; "
                             f"in a CUDA graph), contractions {prec}", t * 1e3, t / floor,
                          f"max rel. err vs fp64 {e:.1e}"])
                parts[f"grads_{prec}_s"] = t
                parts[f"grads_{prec}_maxrel"] = e
            del refT
            t = bench(lambda: residual_contract(*a3, backend="torch"), repeat=rep)
            it_t.add([n, "residual pass alone, torch", t * 1e3, t / floor, ""])
            parts["pass_torch_s"] = t
            if not cuda:
                rec["iteration"] = parts
                return
            gs = _GraphStep(Y, factors, core, zeta, eta, "hard", None)
            def synced():  # one replay, then wait for the change it reports (replay 0 reports none)
                j = gs.launch(zeta)
                if j:
                    gs.read(j)
            t = bench(synced, repeat=rep)
            it_t.add([n, "graph step + host sync each iteration (the old stopping rule)", t * 1e3, t / floor, ""])
            parts["graph_sync_s"] = t
            k = 40

            def pipelined():  # as rpca runs it: two replays ahead of the stopping rule, k steps + 1 speculative
                gs.drive(lambda i: zeta, k, lambda change, z: False)
            t = bench(pipelined, warmup=1, repeat=5) / k
            it_t.add([n, "graph step, pipelined stopping rule (what rpca runs; per recorded step, its speculative "
                         "step and rollback included)", t * 1e3, t / floor, ""])
            parts["graph_pipelined_s"] = t

            def nosync():
                for _ in range(k):
                    gs.graph.replay()
            t_ns = bench(nosync, warmup=1, repeat=5) / k
            it_t.add([n, "graph step, no host sync (GPU time of a step)", t_ns * 1e3, t_ns / floor, ""])
            parts["graph_nosync_s"] = t_ns
            pass_t = parts[f"grads_{env.get('default_contract_precision', 'tf32x3')}_s"]
            it_t.add([n, "  of which r-space updates + relative change (step - gradient tensors)", (t_ns - pass_t) * 1e3,
                      (t_ns - pass_t) / floor, ""])
            parts["rspace_s"] = t_ns - pass_t
            rec["iteration"] = parts
            del gs
        section(f"{n}: per-iteration", per_iteration)

        # --- tensorly on the same device
        if n == args.tensorly_size:
            def tly():
                from tensorrpca.baselines import default_reg_E

                grid = [default_reg_E(shape) * float(g) for g in args.tl_grid.split(",")]
                best, sweep = tensorly_gpu(Y, Xt, grid)
                rec["tensorly"] = {"best": best, "sweep": sweep}
                ours = next((r for r in rec.get("end_to_end", []) if r["method"] == "ours, defaults"), None)
                note = f"best reg_E={best['reg_E']:.4g} of {len(grid)}"
                if ours:
                    note += f"; ours {best['seconds'] / ours['seconds']:.0f}x faster"
                e2e.add([n, "tensorly robust_pca (pytorch backend, same device)", best["seconds"], best["n_iter"],
                         best["rel_error"], None, None, note])
            section(f"{n}: tensorly", tly)
        del p, Y, Xt
        if cuda:
            torch.cuda.empty_cache()
        table_json(out_path, tables, out, t_start)

    # --- tensorkernels foundation at the largest size (cheap)
    def kernels():
        n = sizes[-1]
        shape = (n,) * len(ranks)
        p = synthetic_rpca(shape, ranks, kappa=args.kappa, alpha=args.alpha, seed=0, dtype=torch.float32, device=dev)
        Y, X = p.Y, p.low_rank
        kt = Table(f"kernels on {shape} float32 ({env['device']}): Triton vs torch reference",
                   ["kernel", "torch ms", "triton ms", "auto ms", "max rel. error"])
        rows = []

        def add(name, f_torch, f_triton, f_auto):
            a = f_torch()
            t_t = bench(f_torch, repeat=rep)
            if can_triton:
                t_k, e = bench(f_triton, repeat=rep), maxrel(f_triton(), a)
            else:
                t_k, e = float("nan"), float("nan")
            t_a = bench(f_auto, repeat=rep)
            kt.add([name, t_t * 1e3, t_k * 1e3, t_a * 1e3, e])
            rows.append({"kernel": name, "torch_s": t_t, "triton_s": t_k, "auto_s": t_a, "max_rel_error": e})

        add("threshold_residual (hard, residual)",
            lambda: threshold_residual(Y, X, 0.5, out="residual", backend="torch"),
            lambda: threshold_residual(Y, X, 0.5, out="residual", backend="triton"),
            lambda: threshold_residual(Y, X, 0.5, out="residual"))
        G, Us = p.core.float(), [U.float() for U in p.factors]
        add("tucker_to_tensor (core -> full)", lambda: tucker_to_tensor(G, Us, backend="torch"),
            lambda: tucker_to_tensor(G, Us, backend="triton"), lambda: tucker_to_tensor(G, Us))
        add("mode_product R x_1 U^T (full -> r)", lambda: mode_product(Y, Us[0], 0, transpose=True, backend="torch"),
            lambda: mode_product(Y, Us[0], 0, transpose=True, backend="triton"),
            lambda: mode_product(Y, Us[0], 0, transpose=True))
        out["kernels"] = rows
        tables.append(kt)
    section("kernels", kernels)

    for t in tables:
        t.print()
        print()
        print(t.markdown())
        print()
    table_json(out_path, tables, out, t_start)
    print(f"wrote {out_path} ({time.perf_counter() - t_start:.1f} s); errors: {len(out['errors'])}, "
          f"skipped: {out['skipped']}")
    return 0


def table_json(path, tables, out, t_start):
    """Write everything so far (called after each size, so a timeout still leaves results)."""
    first = tables[0]
    out["tables"] = {t.title: t.as_records() for t in tables}
    out["wall_s"] = time.perf_counter() - t_start
    first.write_json(path, extra=out)


if __name__ == "__main__":
    sys.exit(main())
