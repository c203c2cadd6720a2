"""``ebsdtk rpca INPUT.h5 --dataset NAME --ranks 5,5,5 --out OUT.h5``: tensor robust PCA of one HDF5 dataset.

Writes ``low_rank``, ``sparse``, ``core`` and ``factors/U0..U{N-1}`` to ``OUT.h5`` (via a temporary file and a
rename; an existing ``OUT.h5`` is replaced only with ``--overwrite``), with the parameters, iteration count and
the per-iteration relative changes as attributes.

Missing entries (not measured, not indexed) are not corruption: NaN entries of the dataset, and entries where
``--mask NAME`` (a dataset of the same shape in INPUT.h5, nonzero/True = observed) is 0, are left out of the fit
(``rpca(..., mask=)``); ``low_rank`` fills them in, ``sparse`` is 0 there, and the mask used is written as
``observed``.
"""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "rpca",
        help="tensor robust PCA (ScaledGD) of an HDF5 dataset: low-rank + sparse split",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="INPUT.h5", help="HDF5 file holding the tensor")
    p.add_argument("--dataset", required=True, help="path of the dataset inside INPUT.h5, e.g. /volume/data")
    p.add_argument("--ranks", required=True, help="Tucker ranks, comma separated, one per axis (e.g. 5,5,5)")
    p.add_argument("--out", required=True, metavar="OUT.h5", help="output HDF5 file")
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--tol", type=float, default=1e-7)
    p.add_argument("--step", type=float, default=None, help="step size eta (default 0.5)")
    p.add_argument("--decay", type=float, default=None, help="threshold decay rho (default 0.9)")
    p.add_argument("--zeta0", type=float, default=None, help="initial threshold (default: from the data)")
    p.add_argument("--zeta1", type=float, default=None, help="first-iteration threshold (default: from the data)")
    p.add_argument("--sparsity", type=float, default=None, help="expected fraction of corrupted entries")
    p.add_argument("--threshold", choices=("hard", "soft"), default="hard")
    p.add_argument("--mask", default=None, metavar="NAME",
                   help="dataset in INPUT.h5 of the same shape, nonzero where observed (0: missing, e.g. not "
                        "indexed or not measured); NaN entries are missing too")
    p.add_argument("--params", default=None, choices=("learned", "classic"),
                   help="hyperparameter set: the hand-set classic ones (default) or the learned ones")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT.h5 if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _parse_ranks(text: str) -> list[int]:
    from ..errors import EBSDValueError

    try:
        ranks = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise EBSDValueError(f"--ranks must be integers separated by commas, like 5,5,5; got {text!r}") from None
    if not ranks:
        raise EBSDValueError("--ranks is empty; give one rank per axis, like 5,5,5")
    return ranks


def run(args) -> int:
    from pathlib import Path

    import h5py
    import numpy as np
    import torch

    from tensorrpca import RPCAError, rpca

    from ..errors import EBSDFileExistsError, EBSDFormatError, EBSDValueError

    src, out = Path(args.input), Path(args.out)
    ranks = _parse_ranks(args.ranks)
    if out.exists() and not args.overwrite:
        raise EBSDFileExistsError(f"{out} exists; pass --overwrite to replace it")
    if not src.is_file():
        raise EBSDFormatError(f"{src}: no such file")
    try:
        with h5py.File(src, "r") as f:
            if args.dataset not in f or not isinstance(f[args.dataset], h5py.Dataset):
                names: list[str] = []
                f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
                raise EBSDFormatError(
                    f"{src}: no dataset {args.dataset!r}; datasets in the file: {', '.join(names[:20]) or 'none'}"
                )
            Y = f[args.dataset][()]
            M = None
            if args.mask is not None:
                if args.mask not in f or not isinstance(f[args.mask], h5py.Dataset):
                    raise EBSDFormatError(f"{src}: no mask dataset {args.mask!r}")
                M = f[args.mask][()]
    except OSError as exc:
        raise EBSDFormatError(f"{src}: not a readable HDF5 file ({exc})") from None
    if not isinstance(Y, np.ndarray) or Y.dtype.kind not in "fiu":
        raise EBSDValueError(f"{src}:{args.dataset} must hold a numeric array, got dtype {getattr(Y, 'dtype', type(Y))}")
    if Y.dtype.kind in "iu":
        Y = Y.astype(np.float32)
    observed = None
    if M is not None:
        if np.shape(M) != Y.shape or np.asarray(M).dtype.kind not in "biuf":
            raise EBSDValueError(f"{src}:{args.mask} must be a numeric or boolean array of shape {Y.shape} "
                                 f"(nonzero = observed), got shape {np.shape(M)}")
        M = np.asarray(M)
        observed = (M != 0) & ~np.isnan(M) if M.dtype.kind == "f" else M != 0  # a NaN in a float mask is not "observed"
    nan = np.isnan(Y)
    if nan.any():
        observed = ~nan if observed is None else observed & ~nan
    if observed is not None:
        n_missing = int(observed.size - np.count_nonzero(observed))
        print(f"rpca: {n_missing} of {observed.size} entries ({n_missing / observed.size:.2%}) missing "
              f"({int(nan.sum())} NaN{', mask ' + args.mask if args.mask else ''}); left out of the fit")
    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    params = {"zeta0": args.zeta0, "zeta1": args.zeta1}
    if args.params is not None:
        from tensorrpca.scaledgd import default_params

        params = {**vars(default_params(args.params)), **params}
    print(f"rpca: {src}:{args.dataset} shape {Y.shape} {Y.dtype}, ranks {ranks}, device {device or 'cpu'}")
    try:
        res = rpca(Y, ranks, sparsity=args.sparsity, max_iter=args.max_iter, tol=args.tol, step=args.step,
                   decay=args.decay, device=device, progress=not args.no_progress, params=params,
                   threshold=args.threshold, mask=observed)
    except RPCAError as exc:
        raise EBSDValueError(f"{src}:{args.dataset}: {exc}") from None

    from ..io._atomic import atomic_file

    with atomic_file(out, overwrite=args.overwrite) as tmp:  # also checked before the work started
        with h5py.File(tmp, "w") as g:
            g.create_dataset("low_rank", data=res.low_rank, compression="gzip")
            g.create_dataset("sparse", data=res.sparse, compression="gzip")
            g.create_dataset("core", data=res.core)
            for i, U in enumerate(res.factors):
                g.create_dataset(f"factors/U{i}", data=U)
            g.create_dataset("history/rel_change", data=np.array(res.rel_changes, dtype=np.float64))
            if observed is not None:
                g.create_dataset("observed", data=observed, compression="gzip")
            g.attrs.update({
                "source": str(src), "dataset": args.dataset, "ranks": ranks, "n_iter": res.n_iter,
                "converged": res.converged, "threshold": args.threshold,
                **{k: v for k, v in vars(res.params).items() if v is not None},
            })
    nnz = int(np.count_nonzero(res.sparse))
    n_obs = res.sparse.size if observed is None else int(np.count_nonzero(observed))
    print(f"rpca: {res.n_iter} iterations ({'converged' if res.converged else 'not converged'}), "
          f"{nnz} entries ({nnz / max(n_obs, 1):.2%} of the observed) flagged sparse; wrote {out}")
    return 0
