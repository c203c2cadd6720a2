"""Write the bundled sample volume ``data/sample_volume.dream3d`` (deterministic; run from the repository root):

    python scripts/make_sample_data.py            # refuses to replace an existing file
    python scripts/make_sample_data.py --overwrite

28 x 48 x 48 voxels (z, y, x), spacing 0.5 x 0.25 x 0.25 um, fcc nickel (m-3m), mean grain size 12 voxels,
annealing twins, 0.5 deg orientation noise, 0.5 % unindexed points, slices 11 and 20 missing (invalid: CI 0,
IQ 0, phase 0, identity orientation). gzip-compressed so that it stays well under 2 MB.

The ground truth is not stored: regenerate it with the same call (``SAMPLE_KWARGS``) and ``return_truth=True``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLE_PATH = REPO / "data" / "sample_volume.dream3d"
SAMPLE_MISSING = (11, 20)
SAMPLE_KWARGS = dict(
    shape=(28, 48, 48), mean_grain_size=12.0, symmetry="m-3m", seed=20261124, twins=True, noise_deg=0.5,
    unindexed_fraction=0.005, missing_slices=SAMPLE_MISSING, spacing=(0.5, 0.25, 0.25),
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(SAMPLE_PATH), help="output .dream3d")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)

    from ebsd.errors import EBSDFileExistsError
    from ebsd.io import load_volume
    from ebsd.io.dream3d import write_dream3d
    from ebsd.synthetic import synthetic_volume

    vol = synthetic_volume(**SAMPLE_KWARGS)
    vol.metadata["description"] = "ebsd-tensor-toolkit bundled sample (scripts/make_sample_data.py)"
    try:
        out = write_dream3d(vol, args.out, overwrite=args.overwrite, compression="gzip")
    except EBSDFileExistsError as exc:
        raise SystemExit(f"{exc}") from None
    back = load_volume(out)
    if not back.equals(vol):
        raise SystemExit(f"{out}: read-back differs from the generated volume")
    size = Path(out).stat().st_size
    print(f"wrote {out}: {vol!r}, {size / 1e6:.2f} MB")
    if size >= 2e6:
        raise SystemExit(f"{out} is {size / 1e6:.2f} MB, over the 2 MB budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
