"""napari sample data: a small synthetic volume with two missing slices, to try recovery at once."""
from __future__ import annotations

SAMPLE_MISSING = (9, 10)


def sample_volume():
    """The sample :class:`EBSDVolume`: 20 x 64 x 64 voxels, fcc (m-3m) with twins, slices 9 and 10 missing."""
    from ..synthetic import synthetic_volume

    return synthetic_volume(
        shape=(20, 64, 64), mean_grain_size=14.0, symmetry="m-3m", seed=2024, twins=True, noise_deg=0.5,
        missing_slices=SAMPLE_MISSING,
    )


def sample_two_missing():
    from ._layers import volume_layers

    return volume_layers(sample_volume(), name="sample")
