"""Read time of a 1-million-point .ang and .ctf: ours (``ebsd.io.load_volume``) vs orix (``orix.io.load``), same
process, same files.

    python benchmarks/io_read.py [--ny 1000 --nx 1000] [--repeat 3] [--workdir DIR] [--smoke]

The files are written once by our writers (two phases, m-3m and 6/mmm, 10 % not indexed, random orientations)
into ``--workdir`` (default: a temporary folder). Rows: orix; ours (pandas' C parser when pandas is installed,
as by default); ours with pandas hidden (the numpy.loadtxt fallback). Each row's orientations are checked against
orix's (max |q - q_orix| up to sign) and its shape. Writes ``benchmarks/results/io_read.json`` (or ``$OUT``).
CPU only (reading text files); ``--threads`` sets torch's thread count.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _harness import Table, environment, results_dir, time_call  # noqa: E402


@contextlib.contextmanager
def _no_pandas():
    saved = sys.modules.get("pandas", None)
    sys.modules["pandas"] = None  # makes "import pandas" raise ImportError
    try:
        yield
    finally:
        if saved is None:
            del sys.modules["pandas"]
        else:
            sys.modules["pandas"] = saved


def _volume(ny: int, nx: int):
    from ebsd import EBSDVolume, Phase

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, ny, nx, 4, generator=g, dtype=torch.float64)
    q = (q / q.norm(dim=-1, keepdim=True)).float()
    ph = torch.randint(1, 3, (1, ny, nx), generator=g, dtype=torch.int32)
    valid = torch.rand(1, ny, nx, generator=g) >= 0.1
    ci = torch.where(valid, torch.rand(1, ny, nx, generator=g), torch.full((1, ny, nx), -1.0))
    iq = torch.rand(1, ny, nx, generator=g) * 200
    info = {1: Phase("Nickel", "m-3m", (3.524, 3.524, 3.524, 90.0, 90.0, 90.0)),
            2: Phase("Titanium", "6/mmm", (2.95, 2.95, 4.68, 90.0, 90.0, 120.0))}
    return EBSDVolume(q, ph, ci, iq, spacing=(0.5, 0.5, 0.5), phase_info=info, valid=valid)


def _qdiff(vol, xm) -> float:
    q = vol.quaternions.reshape(-1, 4).double().numpy()
    qo = xm.rotations.data.reshape(-1, 4)
    return float(np.minimum(np.abs(q - qo).max(1), np.abs(q + qo).max(1)).max())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ny", type=int, default=1000)
    p.add_argument("--nx", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workdir", default=None, help="where to write the test files (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--smoke", action="store_true", help="100 x 100 points, 1 repeat")
    args = p.parse_args(argv)
    if args.smoke:
        args.ny, args.nx, args.repeat = 100, 100, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    from orix import io as oio

    from ebsd.io import load_volume
    from ebsd.io.ang import write_ang
    from ebsd.io.ctf import write_ctf

    n = args.ny * args.nx
    tmp = tempfile.TemporaryDirectory() if args.workdir is None else None
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    vol = _volume(args.ny, args.nx)
    files = {"ang": work / f"bench_{n}.ang", "ctf": work / f"bench_{n}.ctf"}
    for kind, f in files.items():
        if not f.exists():
            (write_ang if kind == "ang" else write_ctf)(vol, f)
    table = Table(f"read time, {n:,}-point map ({args.ny} x {args.nx}), CPU",
                  ["file", "reader", "time (s)", "points/s", "speed-up vs orix", "max |q - q_orix|", "shape"])
    records = {}
    for kind, f in files.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xm = oio.load(str(f))
        t_orix = time_call(lambda: oio.load(str(f)), warmup=0, repeat=args.repeat, sync=False)
        table.add([f".{kind} ({f.stat().st_size / 2**20:.0f} MiB)", "orix io.load", t_orix.median, n / t_orix.median,
                   1.0, 0.0, str(xm.shape)])
        records[f"{kind}/orix"] = {"median_s": t_orix.median, "min_s": t_orix.min, "spread": t_orix.spread}
        for label, ctx in (("ours load_volume", contextlib.nullcontext), ("ours, numpy.loadtxt fallback", _no_pandas)):
            with ctx():
                v = load_volume(f)
                t = time_call(lambda: load_volume(f), warmup=0, repeat=args.repeat, sync=False)
            d = _qdiff(v, xm)
            table.add([f".{kind}", label, t.median, n / t.median, t_orix.median / t.median, d, str(v.shape[1:])])
            records[f"{kind}/{label}"] = {"median_s": t.median, "min_s": t.min, "spread": t.spread, "max_qdiff": d,
                                          "shape": list(v.shape)}
    table.print()
    extra = {"n_points": n, "records": records, "torch_threads": torch.get_num_threads()}
    path = table.write_json(results_dir() / f"io_read{'_smoke' if args.smoke else ''}.json", extra)
    print(f"\nwrote {path}")
    print(table.markdown())
    if tmp is not None:
        tmp.cleanup()
    return {"table": table.as_records(), "environment": environment()}


if __name__ == "__main__":
    main()
