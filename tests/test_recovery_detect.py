"""Automatic detection of bad slices."""
from __future__ import annotations

from ebsd.recovery import find_bad_slices
from ebsd.synthetic import synthetic_volume


def test_clean_volume_has_no_bad_slices():
    vol = synthetic_volume((16, 32, 32), 8.0, "m-3m", 21, noise_deg=0.5, unindexed_fraction=0.02)
    assert find_bad_slices(vol) == []


def test_finds_missing_damaged_and_misaligned_slices():
    vol = synthetic_volume((18, 40, 40), 8.0, "m-3m", 22, noise_deg=0.5, unindexed_fraction=0.02,
                           missing_slices=[3], damaged_slices=[8], misaligned_slice=(13, (7, -6)))
    bad, stats = find_bad_slices(vol, return_stats=True)
    assert bad == [3, 8, 13], stats


def test_jump_test_alone_finds_a_shifted_slice():
    vol = synthetic_volume((12, 40, 40), 8.0, "m-3m", 23, noise_deg=0.5, misaligned_slice=(6, (8, 8)))
    assert find_bad_slices(vol, use_ci=False, use_iq=False) == [6]
    assert find_bad_slices(vol, use_jump=False) == []


def test_bad_first_slice():
    vol = synthetic_volume((10, 32, 32), 8.0, "m-3m", 24, noise_deg=0.5, missing_slices=[0])
    assert find_bad_slices(vol) == [0]
