"""Slice recovery on held-out synthetic volumes: ours (transformer + projection) vs three baselines.

    python benchmarks/slice_recovery.py --checkpoint data/slice_recovery            # full table
    python benchmarks/slice_recovery.py --checkpoint DIR --quick                     # small, for a smoke run

Held-out volumes use seeds below ``ebsd.recovery.data.HELD_OUT_SEED_LIMIT`` (training never uses them), at
several mean grain sizes, with twins, 1 deg acquisition noise and 1 % unindexed voxels; in each, 1 or 3
consecutive slices in the middle are blanked (``missing_slices``) and recovered. Metrics on the recovered
slices against the noise-free truth:

* mean misorientation (deg) over the recovered voxels, and the fraction within 5 deg;
* grain-boundary F1 on each recovered slice (:mod:`ebsd.recovery.metrics`): predicted boundaries are
  in-plane neighbour pairs misoriented by more than 5 deg, true ones are pairs of different truth grains; a
  boundary pixel counts as matched when the other map has one at the same pixel (``--boundary-tolerance``
  pixels; 0 by default), F1 over all recovered slices together.

Timing: ``recover_missing_slices`` on one missing slice of a 128 x 128 volume, per slice, on the CPU (all
torch threads) and on CUDA when present: wall-clock median, and the process CPU time (which, unlike the wall
time, does not grow when other jobs share the cores; CPU time / threads is the wall time on idle cores).
Writes ``slice_recovery.json`` (``$OUT`` or benchmarks/results/).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Table, results_dir, time_call  # noqa: E402

from ebsd.recovery import BASELINES, load_model, recover_missing_slices  # noqa: E402
from ebsd.recovery.metrics import boundary_counts, f1, misorientation_stats  # noqa: E402
from ebsd.recovery.data import HELD_OUT_SEED_LIMIT  # noqa: E402
from ebsd.synthetic import synthetic_volume  # noqa: E402


def evaluate(method, vol, truth, missing, tol) -> dict:
    t0 = time.perf_counter()
    out = method(vol, missing)
    dt = time.perf_counter() - t0
    pred = out.quaternions[missing].cpu()
    stats = misorientation_stats(pred, truth.clean_quaternions[missing], vol.symmetry)
    counts = [boundary_counts(pred[i], truth.grain_ids[z], vol.symmetry, tol) for i, z in enumerate(missing)]
    return {**stats, "bc": [sum(c[k] for c in counts) for k in range(4)], "time_s": dt}


def run_groups(args) -> int:
    import json

    from _recovery_groups import SHARED, print_group, real_map_stacks, realistic_volume, run_volume

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = args.checkpoint or "default"
    out = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "groups": {}}
    if args.group in ("realistic", "all"):
        res = {}
        shape = (24, 48, 48) if args.quick else (36, 64, 64)
        for gs in ([8.0] if args.quick else [5.0, 8.0, 14.0]):
            for seed in range(1 if args.quick else args.volumes):
                vol = realistic_volume(900 + seed + int(10 * gs), shape, grain_size=gs).to(device)
                res[f"grain {gs:g}, seed {seed}, dz=2dx"] = run_volume(vol, model=model, device=device,
                                                                      adapt_seconds=args.adapt_seconds)
        print_group("realistic synthetic (every 6th section removed; truth = measured section)", res)
        out["groups"]["realistic"] = res
    if args.group in ("real-maps", "all"):
        stacks = real_map_stacks()
        if not stacks:
            print(f"real-map group skipped: no maps under {SHARED}")
        res = {name: run_volume(v.to(device), model=model, device=device, adapt_seconds=args.adapt_seconds)
               for name, v in stacks.items()}
        print_group("real 2-D maps as section stacks (every 6th row/column removed; truth = measured)", res)
        out["groups"]["real-maps"] = res
    path = results_dir() / args.json.replace(".json", f"_{args.group}.json")
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"\nwrote {path}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="checkpoint dir (default: the bundled data/slice_recovery)")
    ap.add_argument("--grain-sizes", type=float, nargs="+", default=[6.0, 10.0, 16.0])
    ap.add_argument("--volumes", type=int, default=3, help="held-out volumes per grain size")
    ap.add_argument("--shape", type=int, nargs=3, default=[24, 128, 128])
    ap.add_argument("--missing-counts", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--noise-deg", type=float, default=1.0)
    ap.add_argument("--device", default=None, help="device for ours (default: cuda when available)")
    ap.add_argument("--boundary-tolerance", type=int, default=0,
                    help="pixels within which a boundary pixel counts as matched (0: exact)")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--timing-only", action="store_true", help="only the per-slice inference timing")
    ap.add_argument("--timing-repeat", type=int, default=None, help="timed repeats (default: 3 on CPU, 10 on CUDA)")
    ap.add_argument("--quick", action="store_true", help="1 volume per grain size, 16 x 48 x 48")
    ap.add_argument("--json", default="slice_recovery.json")
    ap.add_argument("--group", default="synthetic", choices=["synthetic", "realistic", "real-maps", "all"],
                    help="synthetic: the first-wave table (noise-free truth); realistic: gradients, misindexing, "
                         "sections 2 steps apart, every 6th section removed, measured truth; real-maps: rows and "
                         "columns of the real 2-D maps in ../shared/data as sections (see _recovery_groups.py)")
    ap.add_argument("--adapt-seconds", type=float, default=None, help="test-time adaptation budget for 'auto'")
    args = ap.parse_args(argv)
    if args.group != "synthetic":
        return run_groups(args)
    if args.quick:
        args.volumes, args.shape = 1, [16, 48, 48]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ckpt = args.checkpoint
    net = load_model(ckpt, device=device) if ckpt else "default"

    methods = {
        "nearest slice": BASELINES["nearest"],
        "slerp (symmetry-aware)": BASELINES["slerp"],
        "projection of nearest": BASELINES["project_nearest"],
        "ours, no projection": lambda v, m: recover_missing_slices(v.to(device), m, model=net, project=False,
                                                                   method="network", progress=False).to("cpu"),
        "ours (transformer+projection)": lambda v, m: recover_missing_slices(v.to(device), m, model=net,
                                                                            method="network", progress=False).to("cpu"),
        "ours, blend": lambda v, m: recover_missing_slices(v.to(device), m, method="blend", progress=False).to("cpu"),
        "ours, auto (self-check)": lambda v, m: recover_missing_slices(v.to(device), m, model=net,
                                                                      progress=False).to("cpu"),
    }
    acc = {}  # (method, n_missing, grain size) -> summed stats
    Z = args.shape[0]
    for gs_i, gs in enumerate([] if args.timing_only else args.grain_sizes):
        for k in range(args.volumes):
            seed = 1000 + 100 * gs_i + k
            assert seed < HELD_OUT_SEED_LIMIT
            for nm in args.missing_counts:
                missing = list(range(Z // 2 - nm // 2, Z // 2 - nm // 2 + nm))
                vol, truth = synthetic_volume(tuple(args.shape), gs, "m-3m", seed, twins=0.3,
                                              noise_deg=args.noise_deg, unindexed_fraction=0.01,
                                              missing_slices=missing, return_truth=True)
                for name, fn in methods.items():
                    r = evaluate(fn, vol, truth, missing, args.boundary_tolerance)
                    a = acc.setdefault((name, nm, gs), {"err_sum": 0.0, "n": 0, "within5": 0, "bc": [0, 0, 0, 0],
                                                         "time_s": 0.0})
                    for key in ("err_sum", "n", "within5", "time_s"):
                        a[key] += r[key]
                    a["bc"] = [x + y for x, y in zip(a["bc"], r["bc"])]
                print(f"  grain size {gs}, seed {seed}, {nm} missing: done", flush=True)

    table = Table(f"slice recovery on held-out synthetic volumes {tuple(args.shape)}, m-3m, twins, "
                  f"{args.noise_deg} deg noise", ["method", "missing", "grain size", "mean mis. (deg)",
                                                  "within 5 deg", "boundary F1", "time/vol (s)"])
    for (name, nm, gs), a in acc.items():
        table.add([name, nm, gs, a["err_sum"] / a["n"], a["within5"] / a["n"], f1(a["bc"]), a["time_s"] / args.volumes])
    table.print()
    print(table.markdown())

    timing = {}
    if not args.no_timing:
        tv = synthetic_volume((8, 128, 128), 10.0, "m-3m", 999, noise_deg=args.noise_deg, missing_slices=[4])
        devs = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for dev in devs:
            m = load_model(ckpt, device=dev) if ckpt else "default"
            v = tv.to(dev)
            cpu_s = []

            def once():
                c0 = time.process_time()
                recover_missing_slices(v, [4], model=m, device=dev, progress=False)
                cpu_s.append(time.process_time() - c0)

            load0 = os.getloadavg()[0]
            t = time_call(once, warmup=1, repeat=args.timing_repeat or (3 if dev == "cpu" else 10))
            cpu_med = sorted(cpu_s[1:])[len(cpu_s[1:]) // 2]
            timing[dev] = {"median_s": t.median, "min_s": t.min, "threads": torch.get_num_threads(),
                           "process_cpu_s_median": cpu_med, "loadavg_1min": [load0, os.getloadavg()[0]],
                           "cpu_count": os.cpu_count()}
            print(f"inference, one 128x128 slice, {dev}: {t.median:.3f} s wall (median, min {t.min:.3f}), "
                  f"{cpu_med:.3f} s process CPU time on {torch.get_num_threads()} threads; "
                  f"1-min load average {load0:.1f} on {os.cpu_count()} cores", flush=True)
    path = table.write_json(results_dir() / args.json, extra={"timing_per_128x128_slice": timing,
                                                              "args": vars(args)})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
