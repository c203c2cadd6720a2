"""Misorientation angles of 10^6 orientation pairs with m-3m symmetry: ours on CPU vs orix, same process.

    python benchmarks/misorientation_vs_orix.py [--n 1000000] [--symmetry m-3m] [--repeat 5] [--smoke]

Rows: orix ``Orientation.angle_with`` (float64); ours ``ebsd.orientation.misorientation_angle`` with the
default backend on CPU (the fused numba loop) in float32 and float64; ours with ``backend="torch"`` (the
eager torch reference). Every row is checked against orix (max |difference| in degrees). Writes a JSON
file to ``benchmarks/results/`` (or ``$OUT``) and prints a table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Table, environment, results_dir, time_call  # noqa: E402

ORIX_NAMES = {"m-3m": "Oh", "6/mmm": "D6h"}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--symmetry", default="m-3m", choices=sorted(ORIX_NAMES))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch/numba threads (default: all cores)")
    p.add_argument("--smoke", action="store_true", help="10^4 pairs, 1 repeat")
    args = p.parse_args(argv)
    if args.smoke:
        args.n, args.repeat = 10_000, 1
    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            import numba

            numba.set_num_threads(args.threads)
        except Exception:
            pass

    from orix.quaternion import Orientation
    from orix.quaternion import symmetry as osym

    from ebsd.orientation import misorientation_angle

    osy = getattr(osym, ORIX_NAMES[args.symmetry])
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, args.n, 4))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    o1, o2 = Orientation(q[0], osy), Orientation(q[1], osy)
    q1_64, q2_64 = torch.from_numpy(q[0]), torch.from_numpy(q[1])
    q1_32, q2_32 = q1_64.float(), q2_64.float()

    ref = o1.angle_with(o2)  # also warms orix's numba caches
    runs = {
        "orix angle_with (float64)": (lambda: o1.angle_with(o2), None),
        "ours auto CPU (fused loop), float32": (lambda: misorientation_angle(q1_32, q2_32, args.symmetry), None),
        "ours auto CPU (fused loop), float64": (lambda: misorientation_angle(q1_64, q2_64, args.symmetry), None),
        "ours backend='torch' (eager), float32": (
            lambda: misorientation_angle(q1_32, q2_32, args.symmetry, backend="torch"), None),
    }
    table = Table(f"misorientation angle, {args.n:,} pairs, {args.symmetry}, CPU",
                  ["method", "time (s)", "pairs/s", "speed-up vs orix", "max |diff| vs orix (deg)"])
    t_orix = None
    records = {}
    for name, (fn, _) in runs.items():
        out = fn()
        diff = float(np.rad2deg(np.abs(np.asarray(out, dtype=np.float64) - ref)).max())
        t = time_call(fn, warmup=1, repeat=args.repeat, sync=False)
        if t_orix is None:
            t_orix = t.median
        table.add([name, t.median, args.n / t.median, t_orix / t.median, diff])
        records[name] = {"median_s": t.median, "min_s": t.min, "spread": t.spread, "max_diff_deg": diff}
    table.print()
    extra = {"n_pairs": args.n, "symmetry": args.symmetry, "records": records,
             "torch_threads": torch.get_num_threads()}
    try:
        import numba

        extra["numba_threads"] = numba.get_num_threads()
    except Exception:
        pass
    path = table.write_json(results_dir() / f"misorientation_vs_orix{'_smoke' if args.smoke else ''}.json", extra)
    print(f"\nwrote {path}")
    print(table.markdown())
    return {"table": table.as_records(), "environment": environment()}


if __name__ == "__main__":
    main()
