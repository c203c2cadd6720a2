"""Orientation math on the GPU: misorientation angles (torch eager and Triton) for 10^6 and 10^7 pairs, plus
IPF colours, cubochoric coordinates and fundamental-zone reduction; every result checked against a CPU float64
reference computed from the same numbers. Needs no orix.

    python benchmarks/gpu_orientation.py            # CUDA; under 2 minutes on an H100
    python benchmarks/gpu_orientation.py --smoke    # CPU, small sizes (Triton in the interpreter if asked)

Writes ``gpu_orientation.json`` to ``$OUT`` or ``benchmarks/results/`` and prints a table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _harness import Table, results_dir, time_call  # noqa: E402

from tensorkernels.misorientation import misorientation_angle as kernel_angle  # noqa: E402
from tensorkernels.misorientation import torch_misorientation_angle  # noqa: E402


def rand_q(n: int, device, seed: int) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(n, 4, generator=g, device=device, dtype=torch.float32)
    return q / q.norm(dim=-1, keepdim=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000000,10000000")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--smoke", action="store_true", help="CPU, 10^4 pairs, 2 repeats")
    args = p.parse_args(argv)
    if args.smoke:
        import os

        os.environ.setdefault("TRITON_INTERPRET", "1")  # exercise the Triton kernel in its CPU interpreter
        device = torch.device("cpu")
        sizes, repeat = [10_000], 2
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --smoke for the CPU check", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        sizes, repeat = [int(s) for s in args.sizes.split(",")], args.repeat
    try:
        import triton  # noqa: F401

        import os

        has_triton = device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    except Exception:
        has_triton = False

    from ebsd.orientation import ipf_colors, quat_to_cubochoric, reduce_to_fundamental_zone

    table = Table(f"orientation math on {torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}",
                  ["op", "group", "n", "backend", "dtype", "time (ms)", "Gpairs/s", "GB/s", "max |err| (rad)"])
    failures = []
    records = []

    def add(op, group, n, backend, dtype, t, err, bytes_per):
        ms = t.median * 1e3
        table.add([op, group, n, backend, str(dtype).replace("torch.", ""), ms, n / t.median / 1e9,
                   n * bytes_per / t.median / 1e9, err])
        records.append({"op": op, "group": group, "n": n, "backend": backend, "dtype": str(dtype),
                        "median_ms": ms, "min_ms": t.min * 1e3, "spread": t.spread, "max_err": err})

    for n in sizes:
        q1, q2 = rand_q(n, device, 1), rand_q(n, device, 2)
        c1, c2 = q1.cpu().double(), q2.cpu().double()
        for group in ("432", "622"):
            ref = kernel_angle(c1, c2, group)  # CPU float64 (fused loop, or eager torch without numba)
            if args.smoke:
                assert (ref - torch_misorientation_angle(c1, c2, group)).abs().max() < 1e-12
            cases = [("torch", torch.float32), ("torch", torch.float64)]
            if has_triton:
                cases += [("triton", torch.float32), ("triton", torch.float64)]
            if device.type == "cpu":
                cases += [("auto", torch.float32)]
            for backend, dt in cases:
                a, b = q1.to(dt), q2.to(dt)
                be = None if backend == "auto" else backend
                out = kernel_angle(a, b, group, backend=be)
                err = float((out.double().cpu() - ref).abs().max())
                tol = 1e-11 if dt == torch.float64 else 2e-6
                if not err < tol:
                    failures.append(f"{group} {backend} {dt} n={n}: max err {err:.3g} > {tol}")
                t = time_call(lambda: kernel_angle(a, b, group, backend=be), warmup=2, repeat=repeat)
                add("misorientation_angle", group, n, backend, dt, t, err, 8 * a.element_size() + a.element_size())
            del ref
        # the rest of the package on the same data (float32), checked against CPU float64
        if n == sizes[0]:
            for name, fn, bytes_per in (
                ("ipf_colors", lambda x: ipf_colors(x, "m-3m"), 16 + 12),
                ("quat_to_cubochoric", lambda x: quat_to_cubochoric(x), 16 + 12),
                ("reduce_to_fundamental_zone", lambda x: reduce_to_fundamental_zone(x, "m-3m"), 32),
            ):
                out = fn(q1)
                refo = fn(c1)
                if name == "reduce_to_fundamental_zone":  # same rotation (q ~ -q on ties)
                    err = float((1 - (out.double().cpu() * refo).sum(-1).abs()).abs().max())
                else:
                    err = float((out.double().cpu() - refo).abs().max())
                if not err < 1e-2:  # float32 vs float64 (colours are shown as 8-bit: 1/255 = 0.004)
                    failures.append(f"{name} n={n}: max err {err:.3g}")
                t = time_call(lambda: fn(q1), warmup=2, repeat=max(3, repeat // 4))
                add(name, "m-3m", n, "torch", torch.float32, t, err, bytes_per)
        del q1, q2, c1, c2
        if device.type == "cuda":
            torch.cuda.empty_cache()

    table.print()
    print()
    print(table.markdown())
    path = table.write_json(results_dir() / f"gpu_orientation{'_smoke' if args.smoke else ''}.json",
                            {"records": records, "failures": failures})
    print(f"\nwrote {path}")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
