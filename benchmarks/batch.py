"""Throughput of ``ebsdtk batch`` (:func:`ebsd.batch.run`): volumes per minute with 1 and 2 dask workers.

    python benchmarks/batch.py                       # 4 x recover + 8 x rpca, 16 x 64 x 64 volumes
    python benchmarks/batch.py --n-recover 2 --n-rpca 4 --shape 12,48,48 --configs 1x1,2x1   # quicker

Workload: seeded synthetic volumes (``ebsd.synthetic.synthetic_volume``, fcc, 0.5 deg noise, two blanked
slices) written as ``.dream3d`` to a temporary folder. ``recover`` uses the bundled checkpoint when
``data/slice_recovery/`` exists, else a randomly initialised model of the default architecture (same compute
per voxel; the outputs are meaningless but the timing is what the real model costs). ``rpca``: tensor RPCA
of the image-quality volume, ranks 5,5,5. Each worker count gets its own ``LocalCluster`` of process workers
(``threads_per_worker=1``); the default configurations are 1 worker x 2 torch threads (what ``ebsdtk batch
--workers 1`` uses on 2 cores), 1 worker x 1 thread, and 2 workers x 1 thread (``--workers 2``); the cluster
start is timed separately, one untimed warm-up volume per worker goes first, and each batch runs into a fresh output folder (no skipping). Every output is
checked (status ok, recovered slices as blanked). Prints a table and writes ``results/batch.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Table, results_dir  # noqa: E402

MISSING = [7, 8]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-recover", type=int, default=4)
    ap.add_argument("--n-rpca", type=int, default=8)
    ap.add_argument("--shape", default="16,64,64", help="Z,Y,X of each volume")
    ap.add_argument("--configs", default="1x2,1x1,2x1",
                    help="WORKERSxTORCH_THREADS runs, comma separated (default: 1x2,1x1,2x1)")
    args = ap.parse_args(argv)

    import logging

    import torch
    from distributed import Client, LocalCluster

    from ebsd import batch
    from ebsd.io import load_volume, save_volume
    from ebsd.recovery import DEFAULT_CHECKPOINT, SliceRecoveryTransformer
    from ebsd.synthetic import synthetic_volume

    shape = tuple(int(s) for s in args.shape.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="ebsd_batch_bench_"))
    n_vol = max(args.n_recover, args.n_rpca)
    for i in range(n_vol):
        v = synthetic_volume(shape, mean_grain_size=10, seed=i, noise_deg=0.5, missing_slices=MISSING)
        save_volume(v, tmp / "in" / f"vol{i:02d}.dream3d")
    if (DEFAULT_CHECKPOINT / "model.safetensors").is_file():
        model, model_note = str(DEFAULT_CHECKPOINT), "bundled checkpoint"
    else:
        torch.manual_seed(0)
        SliceRecoveryTransformer().save(tmp / "model")
        model, model_note = str(tmp / "model"), "random weights, default architecture"
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = None

    table = Table(f"ebsdtk batch throughput ({shape[0]}x{shape[1]}x{shape[2]} volumes, {cores} CPU cores)",
                  ["task", "workers", "torch threads", "volumes", "wall (s)", "volumes/min", "speed-up",
                   "cluster start (s)"])
    base: dict[str, float] = {}
    for nw, nt in [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]:
        t0 = time.perf_counter()
        cluster = LocalCluster(n_workers=nw, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
        client = Client(cluster)
        client.wait_for_workers(nw)
        t_start = time.perf_counter() - t0
        try:
            for task, n, params in [("recover", args.n_recover, {"model": model, "missing": MISSING}),
                                    ("rpca", args.n_rpca, {"ranks": (5, 5, 5)})]:
                if n <= 0:
                    continue
                inputs = [tmp / "in" / f"vol{i:02d}.dream3d" for i in range(n)]
                # warm-up (untimed): one volume per worker, so imports and first-call costs are paid
                batch.run(task, inputs[:nw], tmp / f"warm_{task}_{nw}x{nt}", client=client, progress=False,
                          torch_threads=nt, **params)
                out = tmp / f"out_{task}_{nw}x{nt}"
                t0 = time.perf_counter()
                recs = batch.run(task, inputs, out, client=client, progress=False,
                                 torch_threads=nt, **params)
                wall = time.perf_counter() - t0
                bad = [r for r in recs if r["status"] != "ok"]
                if bad:
                    raise SystemExit(f"{task}: {len(bad)} failed: {bad[0]['error']}")
                if task == "recover":
                    got = load_volume(Path(recs[0]["output"]))
                    assert got.metadata["recovered_slices"] == MISSING and bool(got.valid.all())
                vpm = 60.0 * n / wall
                base.setdefault(task, vpm)
                table.add([task, nw, nt, n, wall, vpm, vpm / base[task], t_start])
        finally:
            client.close()
            cluster.close()
    table.print()
    path = table.write_json(results_dir() / "batch.json", extra={
        "model": model_note, "shape": list(shape), "missing": MISSING, "loadavg_before": load,
        "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "note": "process workers, threads_per_worker=1; speed-up relative to the first configuration"})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
