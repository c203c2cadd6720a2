"""``ebsdtk batch recover|rpca|info|enhance INPUT_DIR --out OUT_DIR``: one task per volume on dask.distributed.

Finds every volume under INPUT_DIR (folders of .ang slices, .dream3d, .h5/.h5ebsd), runs the task on each as a
dask task (a LocalCluster of --workers workers on this machine, or the existing cluster at --scheduler
tcp://host:8786), and writes one output per input plus OUT_DIR/manifest.json (status, error, timings,
metrics). Re-running skips inputs whose output is complete and up to date (content hash + parameters), so an
interrupted run is resumed by running the same command again. Exit code 0 when every input is ok or skipped,
1 when any failed, 2 for a usage error, 130 on Ctrl-C.

  recover  bad slices (auto-detected, or --missing) -> NAME.recovered.dream3d
  rpca     tensor RPCA of the image-quality (or --field confidence) volume -> NAME.rpca.h5 (low_rank, sparse)
  info     shape, spacing, phases, fraction indexed -> NAME.info.json
  reconstruct  align, clean, segment, grain statistics (the `ebsdtk reconstruct` options below)
           -> NAME.reconstructed.dream3d
  enhance  not available for volumes (the diffusion model works on 2-D maps: use `ebsdtk enhance`)

--tile N processes each volume in x-y blocks of N voxels (plus a --halo of overlap) to bound a worker's
memory; see ebsd.batch for what tiled RPCA and tiled recovery compute.
"""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("batch", help="run recover/rpca/info/reconstruct on every volume of a folder (dask.distributed)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=["recover", "rpca", "info", "enhance", "reconstruct"],
                   help="what to do with each volume")
    p.add_argument("input_dir", metavar="INPUT_DIR", help="folder holding the volumes (searched recursively)")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="output folder (outputs + manifest.json)")
    p.add_argument("--pattern", default=None, help="glob on the path relative to INPUT_DIR, e.g. '*.dream3d'")
    p.add_argument("--workers", type=int, default=None,
                   help="LocalCluster workers, one volume each at a time (default: CPU cores, at most 4; "
                        "ignored with --scheduler)")
    p.add_argument("--threads", action="store_true",
                   help="LocalCluster workers as threads of this process instead of processes (lighter)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="an existing dask scheduler, e.g. tcp://host:8786 (the paths must be visible to its workers)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch threads per task (default 1 on a LocalCluster: parallelism comes from --workers)")
    p.add_argument("--device", default=None, help="cpu or cuda (per task; default cpu)")
    p.add_argument("--tile", type=int, default=None, help="x-y block size in voxels for large volumes (default: untiled)")
    p.add_argument("--halo", type=int, default=8, help="overlap beyond each block, voxels (default 8)")
    p.add_argument("--retry-failed", action="store_true", help="try inputs again that failed with a file error before")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("recover")
    g.add_argument("--missing", default=None, help="slices to recover in every volume, e.g. 12,13 (default: detect)")
    g.add_argument("--model", default="default", help="checkpoint directory (default: the bundled one)")
    g.add_argument("--no-project", action="store_true", help="skip the projection step")
    g.add_argument("--batch-size", type=int, default=16, help="network tiles per forward pass")
    g = p.add_argument_group("rpca")
    g.add_argument("--field", choices=["image_quality", "confidence"], default="image_quality")
    g.add_argument("--ranks", default="5,5,5", help="Tucker ranks (z, y, x), default 5,5,5")
    g.add_argument("--max-iter", type=int, default=200)
    g.add_argument("--tol", type=float, default=1e-7)
    g.add_argument("--observed", choices=["valid", "measured", "all"], default="valid",
                   help="which voxels count as observed: valid (default: not-indexed and not-measured voxels are "
                        "missing, left out of the fit and filled in), measured, or all")
    from .reconstruct import add_options

    add_options(p)
    p.set_defaults(func=_run)


def _run(args) -> int:
    import sys

    from .. import batch
    from ..errors import EBSDValueError

    common = {"tile": args.tile, "halo": args.halo}
    if args.task == "recover":
        from .recover import parse_slices

        params = dict(common, missing=parse_slices(args.missing) if args.missing else None, model=args.model,
                      project=not args.no_project, batch_size=args.batch_size)
    elif args.task == "rpca":
        from .rpca import _parse_ranks

        params = dict(common, field=args.field, ranks=_parse_ranks(args.ranks), max_iter=args.max_iter, tol=args.tol,
                      observed=args.observed)
    elif args.task == "info":
        params = {}
    elif args.task == "reconstruct":
        from .reconstruct import steps_from_args

        params = {"steps": steps_from_args(args)}
    else:
        raise EBSDValueError(batch._ENHANCE_MSG)
    import os

    workers = args.workers or max(1, min(4, os.cpu_count() or 1))
    records = batch.run(args.task, args.input_dir, args.out, client=args.scheduler, workers=workers,
                        pattern=args.pattern, device=args.device, progress=not args.quiet,
                        processes=not args.threads, retry_failed=args.retry_failed,
                        torch_threads=args.torch_threads, **params)
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "skipped", "failed", "interrupted")}
    print(f"batch {args.task}: {len(records)} volumes: {counts['ok']} ok, {counts['skipped']} skipped (up to date), "
          f"{counts['failed']} failed; manifest {args.out}/manifest.json")
    for r in records:
        if r["status"] == "failed":
            print(f"  failed: {r['input']}: {r['error']}", file=sys.stderr)
    if not records:
        print(f"batch {args.task}: no volumes found in {args.input_dir}", file=sys.stderr)
    return 1 if counts["failed"] or counts["interrupted"] else 0
